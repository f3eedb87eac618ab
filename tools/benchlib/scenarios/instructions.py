"""Instructions per operation under valgrind's callgrind: the single-thread paths in a figure
that does not move with the machine's load (the same to the instruction from run to run).

One Python process runs every subject under callgrind with collection off, except inside calls
of functools.reduce (--toggle-collect), and a dump after each such call (--dump-after). Each
subject's loop runs twice through reduce, with N1 and N2 operations; the difference of the two
dumps divided by N2 - N1 is the cost of one iteration, free of set-up and first-call costs. An
empty loop measured the same way is subtracted, so a row is the operation's own cost. The C
floor (tools/bench_floor.c) is counted as two whole runs of `bench_floor lock N`."""
import glob
import json
import os
import shutil
import subprocess
import sys

from ..common import FLOOR, Unavailable
from ..registry import scenario
from ..results import Scenario

# (row, subject, operation); operations are loop bodies in _SCRIPT
LOCK_ROWS = [("shmlot.Lock", "shmlot.Lock", "with"),
             ("shmlot.RLock", "shmlot.RLock", "with"),
             ("threading.Lock", "threading.Lock", "with"),
             ("mp.Lock", "mp.Lock", "with"),
             ("shmlot.Lock acquire()+release()", "shmlot.Lock", "acq_rel"),
             ("threading.Lock acquire()+release()", "threading.Lock", "acq_rel"),
             ("mp.Lock acquire()+release()", "mp.Lock", "acq_rel")]
EVENT_ROWS = [("shmlot.Event set()+clear()", "shmlot.Event", "set_clear"),
              ("threading.Event set()+clear()", "threading.Event", "set_clear"),
              ("mp.Event set()+clear()", "mp.Event", "set_clear"),
              ("shmlot.Event is_set()", "shmlot.Event", "is_set"),
              ("threading.Event is_set()", "threading.Event", "is_set"),
              ("mp.Event is_set()", "mp.Event", "is_set")]

_SCRIPT = r'''
import functools, json, multiprocessing, sys, threading
plan = json.loads(sys.argv[1])
n1, n2 = int(sys.argv[2]), int(sys.argv[3])

def make(subject):
    where, kind = subject.split(".")
    if where == "shmlot":
        import shmlot
        return getattr(shmlot, kind)()
    if where == "mp":
        return getattr(multiprocessing.get_context("fork"), kind)()
    return getattr(threading, kind)()

def loop_empty(_, n, obj):
    for _ in range(n):
        pass

def loop_with(_, n, obj):
    for _ in range(n):
        with obj:
            pass

def loop_acq_rel(_, n, obj):
    a, r = obj.acquire, obj.release
    for _ in range(n):
        a()
        r()

def loop_set_clear(_, n, obj):
    s, c = obj.set, obj.clear
    for _ in range(n):
        s()
        c()

def loop_is_set(_, n, obj):
    f = obj.is_set
    for _ in range(n):
        f()

done = []
objs = []
for subject, op in plan:
    try:
        objs.append((subject, op, make(subject) if subject else None))
    except Exception as e:
        done.append([subject, op, "n/a", f"{type(e).__name__}: {e}"])
for subject, op, obj in objs:
    loop = globals()["loop_" + op]
    for _ in range(2):
        loop(None, 100, obj)       # warm up: specialise the bytecode outside the counted calls
    for n in (n1, n2):
        functools.reduce(lambda acc, k: loop(acc, k, obj), [n], None)
    done.append([subject, op, "ok", ""])
print(json.dumps(done))
'''


def _totals(path):
    with open(path) as f:
        for line in f:
            if line.startswith(("totals:", "summary:")):
                return int(line.split()[1])
    raise RuntimeError(f"no totals in {path}")


def _valgrind(out, *cmd, extra=(), timeout=900):
    r = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                        *extra, *cmd], capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, "PYTHONHASHSEED": "0"})
    if r.returncode != 0:
        raise RuntimeError(f"valgrind {' '.join(cmd[:2])}: exit {r.returncode}: "
                           f"{r.stderr.strip().splitlines()[-1:]}")
    return r.stdout


def count_python(tmp, plan, n1, n2):
    """{(subject, op): instructions per iteration, or an exception}, for [(subject, op)]."""
    script = os.path.join(tmp, "callgrind_ops.py")
    with open(script, "w") as f:
        f.write(_SCRIPT)
    out = os.path.join(tmp, "cg-py.out")
    for p in glob.glob(out + "*"):
        os.unlink(p)
    stdout = _valgrind(out, sys.executable, script, json.dumps(plan), str(n1), str(n2),
                       extra=("--collect-atstart=no", "--toggle-collect=functools_reduce",
                              "--dump-after=functools_reduce"))
    done = json.loads(stdout.strip().splitlines()[-1])
    dumps = sorted((p for p in glob.glob(out + ".*") if p.rsplit(".", 1)[1].isdigit()),
                   key=lambda p: int(p.rsplit(".", 1)[1]))
    measured = [d for d in done if d[2] == "ok"]
    dumps = dumps[len(dumps) - 2 * len(measured):]   # ours are the last ones, two per subject
    result = {}
    for i, (subject, op, _, _) in enumerate(measured):
        a, b = _totals(dumps[2 * i]), _totals(dumps[2 * i + 1])
        result[(subject, op)] = (b - a) / (n2 - n1)
    for subject, op, status, why in done:
        if status != "ok":
            result[(subject, op)] = Unavailable(why)
    return result


def count_floor(env, n1, n2):
    if env.floor_bin is None:
        raise Unavailable(env.floor_reason or "floor not built")
    totals = []
    for n in (n1, n2):
        out = os.path.join(env.tmp, f"cg-floor-{n}.out")
        _valgrind(out, env.floor_bin, "lock", str(n))
        totals.append(_totals(out))
    return (totals[1] - totals[0]) / (n2 - n1)


@scenario("instructions", "instructions per uncontended `with lock:` (and acquire()+release() "
                          "through bound methods), per Event.set()+clear() / is_set() under "
                          "valgrind's callgrind: deterministic (instr per op)",
          aliases=("callgrind", "instr"))
def instructions(cfg, env):
    locks = Scenario(env, "instructions_lock", "instructions per uncontended `with lock:` "
                     "(callgrind, loop overhead subtracted)", "instr/op", reference="mp.Lock",
                     floor=FLOOR, exact=True)
    events = Scenario(env, "instructions_event", "instructions per Event operation "
                      "(callgrind, loop overhead subtracted)", "instr/op",
                      reference="mp.Event set()+clear()", exact=True)
    for sc, rows in ((locks, LOCK_ROWS), (events, EVENT_ROWS)):
        for name, subject, _ in rows:
            sc.row(name, subject.split(".")[0])
        sc.rounds = 1
    locks.row(FLOOR, "floor")
    every = [r for sc in (locks, events) for r in sc.rows.values()]
    if not shutil.which("valgrind"):
        why = "valgrind not installed (apt-get install valgrind)"
        for sc in (locks, events):
            sc.note = "skipped: " + why
        for r in every:
            r.fail(Unavailable(why))
        return [locks, events]
    n1 = max(1000, cfg.callgrind_ops // 10)
    n2 = n1 + cfg.callgrind_ops
    plan = [("", "empty")]
    for sc, rows in ((locks, LOCK_ROWS), (events, EVENT_ROWS)):
        for name, subject, op in rows:
            if name in sc.rows:
                if subject.startswith("shmlot") and env.shmlot_reason:
                    sc.rows[name].fail(Unavailable(env.shmlot_reason))
                else:
                    plan.append((subject, op))
    try:
        counts = count_python(env.tmp, plan, n1, n2)
        base = counts[("", "empty")]
    except Exception as e:
        for r in every:
            if r.status == "ok":
                r.fail(e)
        return [locks, events]
    for sc, rows in ((locks, LOCK_ROWS), (events, EVENT_ROWS)):
        sc.note = (f"instructions per iteration of {n2 - n1} operations, minus {base:.0f} for "
                   f"the empty loop")
        for name, subject, op in rows:
            row = sc.rows.get(name)
            if row is None or row.status != "ok":
                continue
            c = counts.get((subject, op))
            if isinstance(c, Exception) or c is None:
                row.fail(c or RuntimeError("not measured"))
            else:
                row.add(0, c - base, with_loop=c)
    if FLOOR in locks.rows:
        try:
            locks.rows[FLOOR].add(0, count_floor(env, n1 * 10, n2 * 10))
        except Exception as e:
            locks.rows[FLOOR].fail(e)
    return [locks, events]
