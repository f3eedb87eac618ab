"""N processes loop on one lock with a tiny critical section: throughput, the slowest process's
share of the mean, and the 99th-percentile acquire latency."""
import array
import multiprocessing.connection
import os
import time

from .. import targets as T
from ..common import FLOOR, BenchTimeout, kill_procs, pc
from ..registry import register
from ..results import Scenario
from ..runner import run_rounds
from ..subjects import NO_LOCK, contended_subjects


def weighted_quantile(pairs, q):
    """pairs: [(value, weight)]; the q-quantile."""
    pairs = sorted(pairs)
    total = sum(w for _, w in pairs)
    need = q * total
    acc = 0
    for v, w in pairs:
        acc += w
        if acc >= need:
            return v
    return pairs[-1][0] if pairs else float("nan")


def _child(name, handle, times, ready, go, started, conn):
    try:
        lock = contended_subjects()[name].open(handle)
        acq, rel = lock.acquire, lock.release
        lat = array.array("q")
        append = lat.append
        count = 0
        ready.release()
        go.wait()
        # the window opens once every process has run past the wake-up (see one() below)
        started.release()
        while not times[1]:
            os.sched_yield()
        t_start, t_end = times[0], times[1]
        while True:
            t0 = pc()
            if t0 >= t_end:
                break
            acq()
            t1 = pc()
            rel()
            if t0 >= t_start:
                count += 1
                append(t1 - t0)
        lat = sorted(lat)
        step = max(1, len(lat) // 4000)
        conn.send((count, lat[step // 2::step], step))
    except BaseException as e:
        try:
            ready.release()
            conn.send(("error", f"{type(e).__name__}: {e}"))
        except Exception:
            pass


# process counts at which the targets apply: base (>= 1.0 x, slowest >= 1/4) and raised
BASE_AT, RAISED_AT = (2, 8), (2, 8, 32)


def contended(cfg, env, nprocs, subjects_wanted=None):
    sc = Scenario(env, f"contended_{nprocs}",
                  f"contended throughput, {nprocs} processes, tiny critical section",
                  "ops/s", better="higher", reference="mp.Lock", floor=FLOOR)
    subjects = contended_subjects(env)
    locks = [n for n in subjects if n not in ("shmlot.RLock", "mp.RLock", NO_LOCK)]
    # the loop with no lock last: its slowest share is what the scheduler gives (no target)
    names = locks + [FLOOR, NO_LOCK]
    if subjects_wanted:
        names = [n for n in names if n in subjects_wanted]
    for n in names:
        sc.row(n, "floor" if n == FLOOR else subjects[n].family)
    if nprocs in BASE_AT:
        sc.targets += [
            T.Target("shmlot.Lock", ">= 1.0 x mp.Lock throughput", ">=", 1.0,
                     T.ratio("shmlot.Lock", "mp.Lock")),
            T.Target("shmlot.Lock", "slowest process >= 1/4 of mean share", ">=", 0.25,
                     T.extra("shmlot.Lock", "min_share"))]
    if nprocs in RAISED_AT:
        sc.targets += [
            T.Target("shmlot.Lock", ">= 1.5 x mp.Lock throughput", ">=", 1.5,
                     T.ratio("shmlot.Lock", "mp.Lock"), level="raised"),
            T.Target("shmlot.Lock", "slowest process >= 1/2 of mean share", ">=", 0.5,
                     T.extra("shmlot.Lock", "min_share"), level="raised")]
    window_s = cfg.window
    ctx = env.ctx

    def one(name, row, rnd):
        if name == FLOOR:
            r = env.run_floor("contended", nprocs, int(window_s * 1000))
            row.add(rnd, r["ops_per_s"], min_share=r["min_share"], p99_ns=r["p99_ns"])
            return
        s = subjects[name]
        h = s.make()
        procs = []
        try:
            times = ctx.RawArray("q", 2)
            ready, go, started = ctx.Semaphore(0), ctx.Event(), ctx.Semaphore(0)
            conns = []
            for _ in range(nprocs):
                pconn, cconn = ctx.Pipe(duplex=False)
                p = ctx.Process(target=_child, args=(name, h, times, ready, go, started, cconn),
                                daemon=True)
                p.start()
                procs.append(p)
                conns.append(pconn)
                cconn.close()
            for _ in range(nprocs):
                if not ready.acquire(timeout=60):
                    raise BenchTimeout("children did not start")
            go.set()
            # On a loaded machine a woken process may get the CPU only long after the wake-up:
            # a window timed from the wake-up could close before some (or all) of them ran.
            for _ in range(nprocs):
                if not started.acquire(timeout=60):
                    raise BenchTimeout("children did not wake")
            warm = 0.02 + 0.002 * nprocs
            t_start = pc() + int(warm * 1e9)
            times[0] = t_start
            times[1] = t_start + int(window_s * 1e9)  # last: the children wait for it
            counts, pairs = [], []
            pending = list(conns)
            deadline = time.monotonic() + warm + window_s + 60
            while pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BenchTimeout("children did not finish")
                for c in multiprocessing.connection.wait(pending, left):
                    msg = c.recv()
                    pending.remove(c)
                    if isinstance(msg, tuple) and msg and msg[0] == "error":
                        raise RuntimeError("in child: " + msg[1])
                    cnt, lat, step = msg
                    counts.append(cnt)
                    pairs.extend((v, step) for v in lat)
            if not pairs:
                raise RuntimeError("no acquire completed in the window")
            mean = sum(counts) / len(counts)
            row.add(rnd, sum(counts) / window_s,
                    min_share=(min(counts) / mean) if mean else 0.0,
                    p99_ns=weighted_quantile(pairs, 0.99))
        finally:
            kill_procs(procs)
            s.cleanup(h)

    return run_rounds(sc, cfg, names, one)


register("contended", "N processes (--procs, default 2,8,32) loop on one lock with a tiny "
                      "critical section: throughput, slowest process's share of the mean, "
                      "p99 acquire latency (ops per second)",
         lambda cfg: [(f"contended ({n} procs)",
                       lambda cfg, env, n=n: contended(cfg, env, n)) for n in cfg.procs])
