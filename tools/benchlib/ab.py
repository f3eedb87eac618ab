"""A/B timing of two builds of shmlot: the same operation timed in fresh processes that import
one build or the other, in interleaved rounds (A B, B A, ...), and the after/before ratio with its
95 % interval (paired by round), repeated until the interval excludes 1 or the rounds run out.

    python tools/bench_ab.py --before /tmp/old-tree [--after .] --op with [--op pingpong ...]

A build is a directory holding a `shmlot` package with its compiled modules (a copy of a tree
after `pip install -e .`, or a worktree). The processes import it through PYTHONPATH."""
import argparse
import json
import os
import secrets
import subprocess
import sys

from . import stats
from .runner import rotate

_TIMER = r'''
import os, sys, time, statistics
import shmlot
lot = shmlot.ParkingLot.create(os.environ["SHMLOT_LOT"])
pc = time.perf_counter_ns
def timed(batch, budget_ns=int(float(sys.argv[2]) * 1e9)):
    per = []
    end = pc() + budget_ns
    while len(per) < 10 or pc() < end:
        per.append(batch())
    return statistics.median(per)
try:
    op = sys.argv[1]
    if op in ("with", "rlock-with"):
        l = shmlot.Lock() if op == "with" else shmlot.RLock()
        def batch(k=200):
            t0 = pc()
            for _ in range(k):
                with l:
                    pass
            return (pc() - t0) / k
    elif op in ("set-clear", "is_set"):
        e = shmlot.Event()
        def batch(k=200):
            s, c, i = e.set, e.clear, e.is_set
            t0 = pc()
            if op == "is_set":
                for _ in range(k):
                    i()
            else:
                for _ in range(k):
                    s()
                    c()
            return (pc() - t0) / k
    elif op == "pingpong":
        a, b = shmlot.Event(), shmlot.Event()
        pid = os.fork()
        if pid == 0:
            try:
                while True:
                    a.wait()
                    a.clear()
                    if b.is_set():   # the parent's stop signal: b still set
                        break
                    b.set()
            finally:
                os._exit(0)
        def batch(k=500):
            aset, bwait, bclear = a.set, b.wait, b.clear
            t0 = pc()
            for _ in range(k):
                aset()
                bwait()
                bclear()
            return (pc() - t0) / k
    elif op == "notify":
        # tools/benchlib/scenarios/notify.py's measure: notify_all of 32 waiting processes,
        # time until the last one has re-acquired the lock
        import multiprocessing
        ctx = multiprocessing.get_context("fork")
        cond, n = shmlot.Condition(), 32
        ready, stamps = ctx.RawValue("q", 0), ctx.RawArray("q", n)
        def child(i):
            with cond:
                while True:
                    ready.value += 1
                    cond.wait()
                    stamps[i] = pc()
        kids = [ctx.Process(target=child, args=(i,), daemon=True) for i in range(n)]
        for k in kids:
            k.start()
        def until(pred):
            end = time.monotonic() + 60
            while not pred():
                if time.monotonic() > end:
                    raise SystemExit("notify: children stuck")
                time.sleep(0.001)
        def batch(rounds=[0]):
            rounds[0] += 1
            until(lambda: ready.value >= n * rounds[0])
            time.sleep(0.005)
            for i in range(n):
                stamps[i] = 0
            t0 = pc()
            with cond:
                cond.notify_all()
            until(lambda: all(stamps[i] for i in range(n)))
            return max(stamps[i] for i in range(n)) - t0
        batch()  # warm-up: the children fault in their pages
    else:
        raise SystemExit(f"unknown op {op}")
    r = timed(batch)
    if op == "notify":
        for k in kids:
            k.kill()
    if op == "pingpong":
        b.set()
        a.set()
        os.waitpid(pid, 0)
    print(r)
finally:
    lot.unlink()
'''


def measure(build, op, budget):
    env = dict(os.environ, SHMLOT_LOT=f"shmlot-ab-{os.getpid()}-{secrets.token_hex(4)}")
    if build:
        env["PYTHONPATH"] = os.path.abspath(build)
    r = subprocess.run([sys.executable, "-c", _TIMER, op, str(budget)], capture_output=True,
                       text=True, env=env, cwd="/", timeout=300)
    if r.returncode != 0:
        raise RuntimeError(f"{op} with {build or 'installed build'}: {r.stderr.strip()[-300:]}")
    return float(r.stdout.strip().splitlines()[-1])


def ab(before, after, op, min_rounds=5, max_rounds=20, budget=0.3, log=print):
    values = {"before": {}, "after": {}}
    builds = {"before": before, "after": after}
    est = None
    for rnd in range(max_rounds):
        for which in rotate(["before", "after"], rnd):
            values[which][rnd] = measure(builds[which], op, budget)
        if rnd + 1 >= min_rounds:
            est = stats.ratio_interval(stats.paired_ratios(values["after"], values["before"]))
            if est.hi < 1 or est.lo > 1:
                break
    est = stats.ratio_interval(stats.paired_ratios(values["after"], values["before"]))
    med = {k: sorted(v.values())[len(v) // 2] for k, v in values.items()}
    res = {"op": op, "rounds": len(values["after"]), "before_ns": med["before"],
           "after_ns": med["after"], "ratio": est.to_json(),
           "verdict": "faster" if est.hi < 1 else ("slower" if est.lo > 1 else "undecided")}
    log(f"{op:<10} before {med['before']:9.1f} ns  after {med['after']:9.1f} ns  after/before "
        f"{est.value:.3f} [{est.lo:.3f}-{est.hi:.3f}] over {res['rounds']} rounds: "
        f"{res['verdict']}")
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(prog="bench_ab.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", required=True, metavar="DIR", help="the build to compare with")
    ap.add_argument("--after", metavar="DIR", help="default: the shmlot this Python imports")
    ap.add_argument("--op", action="append",
                    choices=["with", "rlock-with", "set-clear", "is_set", "pingpong", "notify"],
                    help="operation(s) to time (default: all)")
    ap.add_argument("--rounds", type=int, default=5, help="minimum rounds (default 5)")
    ap.add_argument("--max-rounds", type=int, default=20, help="at most (default 20)")
    ap.add_argument("--budget", type=float, default=0.3, help="seconds per measurement")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args(argv)
    ops = args.op or ["with", "rlock-with", "set-clear", "is_set", "pingpong"]
    out = [ab(args.before, args.after, op, args.rounds, args.max_rounds, args.budget)
           for op in ops]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0
