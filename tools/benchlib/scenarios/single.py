"""One thread, one lock: uncontended `with lock:`, and the same beside a busy Python thread."""
import statistics
import threading

from .. import targets as T
from ..common import FLOOR, pc
from ..registry import scenario
from ..results import Scenario
from ..runner import run_rounds
from ..subjects import lock_subjects


def _batch_with(lock, k):
    r = range(k)
    t0 = pc()
    for _ in r:
        with lock:
            pass
    return pc() - t0


def calibrate_batch(lock, max_batch=256, min_ns=20_000):
    """Ops per batch so that one batch takes at least `min_ns` (at most `max_batch`)."""
    k = 1
    while k < max_batch:
        if min(_batch_with(lock, k) for _ in range(3)) >= min_ns:
            break
        k *= 2
    return k


def lock_loop(lock, budget_ns, k=None):
    """Time `with lock:` in batches of k ops for `budget_ns`.

    Returns (median ns/op over batches, 90th-percentile ns/op over batches, mean ns/op over the
    whole run, k). Batches are ~20 us, so a rare event (a 5 ms GIL switch every 5 ms of running)
    leaves the median and p90 alone, while a cost paid on every call, or on more than a few
    calls in a thousand, moves them.
    """
    if k is None:
        k = calibrate_batch(lock)
    per_op, total_t, total_n = [], 0, 0
    end = pc() + budget_ns
    while len(per_op) < 10 or pc() < end:
        t = _batch_with(lock, k)
        per_op.append(t / k)
        total_t += t
        total_n += k
        if len(per_op) > 200_000:
            break
    per_op.sort()
    return (statistics.median(per_op), per_op[int(0.9 * (len(per_op) - 1))],
            total_t / total_n, k)


@scenario("uncontended", "`with lock:` in one thread, no contention (ns per op)")
def uncontended(cfg, env):
    sc = Scenario(env, "uncontended", "uncontended `with lock:`", "ns/op", reference="mp.Lock",
                  floor=FLOOR)
    subjects = lock_subjects(env)
    names = list(subjects) + [FLOOR]
    for n in names:
        sc.row(n, "floor" if n == FLOOR else subjects[n].family)
    sc.targets = [
        T.Target("shmlot.Lock", "<= 0.8 x mp.Lock", "<=", 0.8, T.ratio("shmlot.Lock", "mp.Lock")),
        T.Target("shmlot.Lock", "<= 5 x the C floor", "<=", 5.0, T.ratio_floor("shmlot.Lock"),
                 level="raised"),
    ]

    def one(name, row, rnd):
        if name == FLOOR:
            row.add(rnd, env.run_floor("lock", cfg.floor_lock_iters)["ns_per_op"])
            return
        s = subjects[name]
        h = s.make()
        try:
            med, _, mean, _ = lock_loop(s.open(h), cfg.loop_budget)
            row.add(rnd, med, mean_ns=mean)
        finally:
            s.cleanup(h)

    return run_rounds(sc, cfg, names, one)


def _busy_worker(stop):
    x = 0
    while not stop[0]:
        x += 1


@scenario("busy", "the same while a second Python thread runs pure-Python work: p90 of ~20 us "
                  "batches, so a lock that drops the GIL pays a hand-off per call (ns per op)",
          aliases=("busy_thread",))
def busy(cfg, env):
    sc = Scenario(env, "busy", "`with lock:` while another thread runs pure-Python work "
                  "(p90 of ~20 us batches)", "ns/op", reference="mp.Lock")
    subjects = lock_subjects(env)
    names = list(subjects)
    for n in names:
        sc.row(n, subjects[n].family)
    sc.targets = [T.Target("shmlot.Lock", "<= 2 x own figure alone", "<=", 2.0,
                           T.extra("shmlot.Lock", "x_alone", as_ratio=True))]

    def one(name, row, rnd):
        s = subjects[name]
        h = s.make()
        lock = None
        try:
            lock = s.open(h)
            # Same batch size with and without the busy thread (calibrated alone: with the
            # thread, a GIL hand-off per call would make single-op batches look long enough).
            _, alone, alone_mean, k = lock_loop(lock, cfg.loop_budget // 2)
            stop = [False]
            t = threading.Thread(target=_busy_worker, args=(stop,), daemon=True)
            t.start()
            try:
                _, busy_, mean, _ = lock_loop(lock, cfg.loop_budget, k)
            finally:
                stop[0] = True
                t.join()
            row.add(rnd, busy_, alone_ns=alone, x_alone=busy_ / alone, mean_ns=mean,
                    alone_mean_ns=alone_mean, batch=k)
        finally:
            del lock
            s.cleanup(h)

    return run_rounds(sc, cfg, names, one)
