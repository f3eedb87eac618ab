"""Condition.notify_all with N waiting processes: time until the last one has re-acquired."""
import statistics
import sys
import time
import traceback

from .. import targets as T
from ..common import kill_procs, pc, wait_until
from ..registry import scenario
from ..results import Scenario
from ..runner import run_rounds
from ..subjects import condition_subjects

NOTIFY_PROCS = 32


def _child(name, handle, idx, rounds, ready, stamps):
    try:
        cond = condition_subjects()[name].open(handle)
        with cond:
            for _ in range(rounds + 1):
                ready.value += 1          # under the condition's lock
                cond.wait()
                stamps[idx] = pc()
    except BaseException:
        traceback.print_exc()
        stamps[idx] = -1
        sys.exit(1)


def notify(cfg, env, nprocs):
    sc = Scenario(env, f"notify_all_{nprocs}",
                  f"Condition.notify_all with {nprocs} waiting processes, until all re-acquired",
                  "ns", reference="mp.Condition")
    subjects = condition_subjects(env)
    names = list(subjects)
    for n in names:
        sc.row(n, subjects[n].family)
    if nprocs == NOTIFY_PROCS:
        fig = T.ratio("shmlot.Condition", "mp.Condition")
        sc.targets = [T.Target("shmlot.Condition", "< 1.0 x mp.Condition", "<", 1.0, fig),
                      T.Target("shmlot.Condition", "<= 0.5 x mp.Condition", "<=", 0.5, fig,
                               level="raised")]
    # Round 0 is a warm-up (children fault in their copy-on-write pages), and the children
    # wait once more after the last measured round: a final notify_all lets them go, so that
    # no round is timed while children exit (process teardown on 2 CPUs costs ~10 ms).
    rounds = cfg.notify_rounds + 1
    ctx = env.ctx

    def one(name, row, rnd):
        s = subjects[name]
        h = s.make()
        procs = []
        try:
            cond = s.open(h)
            ready = ctx.RawValue("q", 0)
            stamps = ctx.RawArray("q", nprocs)
            for i in range(nprocs):
                p = ctx.Process(target=_child, args=(name, h, i, rounds, ready, stamps),
                                daemon=True)
                p.start()
                procs.append(p)
            figures = []
            for r in range(rounds):
                wait_until(lambda: ready.value >= nprocs * (r + 1)
                           or any(p.exitcode for p in procs), 60 + nprocs, "waiters")
                if any(p.exitcode for p in procs):
                    raise RuntimeError("a waiting child died")
                time.sleep(0.005)
                for i in range(nprocs):
                    stamps[i] = 0
                t0 = pc()
                with cond:
                    cond.notify_all()
                wait_until(lambda: all(stamps[i] != 0 for i in range(nprocs)), 60, "wake-ups")
                if any(stamps[i] < 0 for i in range(nprocs)):
                    raise RuntimeError("a waiting child failed")
                if r:
                    figures.append(max(stamps[i] for i in range(nprocs)) - t0)
            wait_until(lambda: ready.value >= nprocs * (rounds + 1), 60, "waiters")
            with cond:
                cond.notify_all()        # let them go
            for p in procs:
                p.join(30)
            row.add(rnd, statistics.median(figures), rounds=len(figures))
        finally:
            kill_procs(procs)
            s.cleanup(h)

    return run_rounds(sc, cfg, names, one)


@scenario("notify", f"Condition.notify_all with {NOTIFY_PROCS} waiting processes: time until "
                    "the last one has re-acquired the lock (ns)", aliases=("notify_all",))
def notify_default(cfg, env):
    return notify(cfg, env, NOTIFY_PROCS)
