#!/usr/bin/env python3
"""shmlot.aio benchmark: the asyncio primitives side by side with their peers, in one run.

    python tools/bench_async.py                 # full run, table on stdout
    python tools/bench_async.py --quick         # short run
    python tools/bench_async.py --repeat 5 --json out.json

Scenarios:

  pingpong    two processes hand a token back and forth through two Events: shmlot.aio.Event
              (both sides asyncio) beside shmlot.Event (both sides threads); then the same with
              spinning turned off on both sides ("parking"), so that every hand-off is a
              wake-up: a thread's futex wake beside a task's (helper thread, eventfd, loop)
                                                                                (ns per round trip)
  contended   4 processes x 100 tasks loop on one lock (``async with lock:``, a tiny critical
              section, ``await asyncio.sleep(0)`` between turns): shmlot.aio.Lock beside
              filelock.AsyncFileLock (one per task, default poll interval) and
              loop.run_in_executor over multiprocessing.Lock (the default executor)   (ops/s)
  wakeup      one task parked on an Event, set by another process after it parked: time from
              the set() to the task running, with 1,000 other tasks of its process parked
              beside it, and with none                                                  (ns)

``run(repeats, quick=False)`` returns the figures as a list of dicts (name, value, unit, peer,
ratio, ...): the median over ``repeats``; ``ratio`` is value / the peer's value (for ops/s,
above 1 means ahead; for times, below 1). tools/bench.py can call it. The run uses a lot of its
own (exported as SHMLOT_LOT to the children) and unlinks it at the end.
"""
import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import secrets
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if os.path.dirname(HERE) not in sys.path:
    sys.path.insert(0, os.path.dirname(HERE))

import shmlot  # noqa: E402
from shmlot import aio  # noqa: E402
from shmlot import event as shmlot_event  # noqa: E402

CTX = mp.get_context("spawn")
PROCS, TASKS = 4, 100
now_ns = time.monotonic_ns  # CLOCK_MONOTONIC: comparable between processes


def _lot():
    return shmlot.ParkingLot.attach(os.environ["SHMLOT_LOT"])


def _atomics(raw):
    view = memoryview(raw).cast("B")
    return [shmlot.AtomicU64(view, 8 * i) for i in range(len(raw))]


# ---- ping-pong ------------------------------------------------------------------------------------

class _NoSpin:
    """A SpinWait that never spins: every wait parks (the ping-pong's "parking" rows)."""

    def spin(self):
        return False

    def reset(self):
        pass


@contextlib.contextmanager
def _spinning(spin):
    if spin:
        yield
        return
    saved = shmlot_event.SpinWait, aio.SpinWait, shmlot_event.SPIN_NS, aio.EVENT_SPIN_NS
    shmlot_event.SpinWait = aio.SpinWait = _NoSpin
    shmlot_event.SPIN_NS = aio.EVENT_SPIN_NS = 0  # the first spins, in C, off too
    try:
        yield
    finally:
        shmlot_event.SpinWait, aio.SpinWait, shmlot_event.SPIN_NS, aio.EVENT_SPIN_NS = saved


def _pp_child(style, names, rounds, ready, spin=True):
    with _spinning(spin):
        _pp_child_loop(style, names, rounds, ready)


def _pp_child_loop(style, names, rounds, ready):
    lot = _lot()
    if style == "sync":
        a, b = (shmlot.Event(name=n, lot=lot) for n in names)
        ready.set()
        for _ in range(rounds):
            a.wait()
            a.clear()
            b.set()
        return
    a, b = (aio.Event(name=n, lot=lot) for n in names)

    async def main():
        ready.set()
        for _ in range(rounds):
            await a.wait()
            a.clear()
            b.set()
    asyncio.run(main())


def pingpong(style, rounds, spin=True):
    """ns per round trip between two processes through two Events (``spin=False``: neither
    side spins before parking, so every hand-off goes through a wake-up)."""
    with _spinning(spin):
        return _pingpong(style, rounds, spin)


def _pingpong(style, rounds, spin):
    lot = _lot()
    names = [f"bench-pp-{secrets.token_hex(4)}-{i}" for i in range(2)]
    warm = min(200, rounds // 5)
    ready = CTX.Event()
    child = CTX.Process(target=_pp_child, args=(style, names, warm + rounds, ready, spin))
    child.start()
    try:
        ready.wait(60)
        if style == "sync":
            a, b = (shmlot.Event(name=n, lot=lot) for n in names)
            for i in range(warm + rounds):
                if i == warm:
                    t0 = now_ns()
                a.set()
                b.wait()
                b.clear()
            elapsed = now_ns() - t0
        else:
            a, b = (aio.Event(name=n, lot=lot) for n in names)

            async def main():
                for i in range(warm + rounds):
                    if i == warm:
                        t0 = now_ns()
                    a.set()
                    await b.wait()
                    b.clear()
                return now_ns() - t0
            elapsed = asyncio.run(main())
        child.join(60)
        return elapsed / rounds
    finally:
        if child.is_alive():
            child.kill()
        for n in names:
            shmlot.unlink_object(n, lot)


# ---- contended ------------------------------------------------------------------------------------

def _cont_child(kind, handle, raw, duration, go, out):
    counters = _atomics(raw)  # 0: holders now, 1: exclusion broken
    if kind == "shmlot.aio.Lock":
        lock = aio.Lock(name=handle, lot=_lot())

        def session():
            return lock
    elif kind == "filelock.AsyncFileLock":
        from filelock import AsyncFileLock

        def session():
            return AsyncFileLock(handle)  # one per task: exclusion between tasks too
    else:
        lock = handle  # multiprocessing.Lock

        class session:
            async def __aenter__(self):
                await asyncio.get_running_loop().run_in_executor(None, lock.acquire)

            async def __aexit__(self, *exc):
                lock.release()

    async def task(end):
        held = session()
        n = 0
        loop = asyncio.get_running_loop()
        while loop.time() < end:
            async with held:
                if counters[0].fetch_add(1):
                    counters[1].fetch_add(1)
                n += 1
                counters[0].fetch_sub(1)
            await asyncio.sleep(0)
        return n

    async def main():
        end = asyncio.get_running_loop().time() + duration
        return sum(await asyncio.gather(*(task(end) for _ in range(TASKS))))

    go.wait(60)
    out.put(asyncio.run(main()))


def contended(kind, duration):
    """Acquisitions per second, all processes together (and whether exclusion held)."""
    raw = CTX.RawArray("Q", 2)
    counters = _atomics(raw)
    tmp = None
    if kind == "shmlot.aio.Lock":
        handle = f"bench-cont-{secrets.token_hex(4)}"
    elif kind == "filelock.AsyncFileLock":
        tmp = tempfile.mkdtemp(prefix="shmlot-bench-")
        handle = os.path.join(tmp, "lock")
    else:
        handle = CTX.Lock()
    go, out = CTX.Event(), CTX.Queue()
    procs = [CTX.Process(target=_cont_child, args=(kind, handle, raw, duration, go, out))
             for _ in range(PROCS)]
    try:
        for p in procs:
            p.start()
        time.sleep(0.5)  # let them import and get ready
        t0 = time.monotonic()
        go.set()
        total = sum(out.get(timeout=duration + 120) for _ in procs)
        elapsed = max(time.monotonic() - t0, duration)
        for p in procs:
            p.join(30)
        return total / elapsed, counters[1].load() == 0
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
        if kind == "shmlot.aio.Lock":
            try:
                shmlot.unlink_object(handle, _lot())
            except KeyError:
                pass
        if tmp:
            for f in os.listdir(tmp):
                os.unlink(os.path.join(tmp, f))
            os.rmdir(tmp)


# ---- wake-up latency ------------------------------------------------------------------------------

def _wake_child(names, raw, rounds, ready):
    lot = _lot()
    ping, pong = (shmlot.Event(name=n, lot=lot) for n in names)
    t0 = _atomics(raw)[0]
    ready.set()
    for _ in range(rounds):
        ping.wait()
        ping.clear()
        time.sleep(0.0003)  # the task is parked by now
        t0.store(now_ns())
        pong.set()


def wakeup(others, rounds):
    """Median ns from a set() in another process to the parked task running, with ``others``
    tasks of the task's process parked beside it."""
    lot = _lot()
    names = [f"bench-wake-{secrets.token_hex(4)}-{i}" for i in range(3)]
    raw = CTX.RawArray("Q", 1)
    t0 = _atomics(raw)[0]
    ready = CTX.Event()
    child = CTX.Process(target=_wake_child, args=(names[:2], raw, rounds, ready))
    child.start()
    try:
        ready.wait(60)
        ping, pong, never = (aio.Event(name=n, lot=lot) for n in names)

        async def main():
            idle = [asyncio.create_task(never.wait()) for _ in range(others)]
            while len(idle) and never.sync._words[1].load() < others:
                await asyncio.sleep(0.01)
            samples = []
            for _ in range(rounds):
                ping.set()
                await pong.wait()
                samples.append(now_ns() - t0.load())
                pong.clear()
            for t in idle:
                t.cancel()
            await asyncio.gather(*idle, return_exceptions=True)
            return statistics.median(samples[len(samples) // 10:])
        result = asyncio.run(main())
        child.join(60)
        return result
    finally:
        if child.is_alive():
            child.kill()
        for n in names:
            shmlot.unlink_object(n, lot)


# ---- the run ----------------------------------------------------------------------------------------

def _filelock_async():
    try:
        from filelock import AsyncFileLock  # noqa: F401 (filelock 3.15+)
        return None
    except ImportError as e:
        return f"filelock.AsyncFileLock unavailable ({e})"


def collect(repeats=3, quick=False, log=None):
    """Every scenario, ``repeats`` rounds, subjects interleaved within each round. Returns
    ({name: [one figure per round]}, why filelock's row is missing or "")."""
    log = log or (lambda msg: None)
    own = "SHMLOT_LOT" not in os.environ
    if own:
        os.environ["SHMLOT_LOT"] = f"shmlot-bench-aio-{os.getpid()}-{secrets.token_hex(3)}"
    lot = shmlot.ParkingLot.open(os.environ["SHMLOT_LOT"], slots=4096)
    pp_rounds = 2000 if quick else 10000
    duration = 1.0 if quick else 3.0
    wake_rounds = 300 if quick else 1000
    samples = {}

    def measure(name, fn, *args):
        log(f"  {name} ...")
        value = fn(*args)
        samples.setdefault(name, []).append(value)

    try:
        peers_missing = _filelock_async()
        for r in range(repeats):
            log(f"repeat {r + 1}/{repeats}")
            measure("pingpong: shmlot.Event (threads)", pingpong, "sync", pp_rounds)
            measure("pingpong: shmlot.aio.Event (tasks)", pingpong, "async", pp_rounds)
            measure("pingpong, parking: shmlot.Event (threads)", pingpong, "sync",
                    pp_rounds // 4, False)
            measure("pingpong, parking: shmlot.aio.Event (tasks)", pingpong, "async",
                    pp_rounds // 4, False)
            for kind in ("shmlot.aio.Lock", "filelock.AsyncFileLock",
                         "run_in_executor(multiprocessing.Lock)"):
                if kind.startswith("filelock") and peers_missing:
                    continue
                measure(f"contended: {kind}", contended, kind, duration)
            measure("wakeup: 1 parked task", wakeup, 0, wake_rounds)
            measure("wakeup: 1 of 1,000 parked tasks", wakeup, 999, wake_rounds)
    finally:
        lot.close()
        if own:
            lot.unlink()
            del os.environ["SHMLOT_LOT"]
    return samples, peers_missing


def run(repeats=3, quick=False, log=None):
    """Every scenario, ``repeats`` times (medians). Returns a list of result dicts:
    name, value, unit, peer (the name of the row it is compared with, or None), ratio
    (value / peer's value), target (text), ok (the target met, or None), and notes. A subject
    compared with two peers has a row for each."""
    samples, peers_missing = collect(repeats, quick, log)

    def med(name):
        vals = samples.get(name)
        if not vals:
            return None, None
        if isinstance(vals[0], tuple):  # (ops/s, exclusion held)
            return statistics.median(v[0] for v in vals), all(v[1] for v in vals)
        return statistics.median(vals), None

    results = []

    def add(name, unit, peer=None, target=None, limit=None, higher_is_better=False):
        value, exclusion = med(name)
        peer_value = med(peer)[0] if peer else None
        ratio = ok = None
        if value is not None and peer_value:
            ratio = value / peer_value
            if limit is not None:
                ok = ratio >= limit if higher_is_better else ratio <= limit
        notes = ""
        if value is None:
            notes = peers_missing or "not measured"
        elif exclusion is False:
            notes = "EXCLUSION BROKEN"
        results.append({"name": name, "value": value, "unit": unit, "peer": peer,
                        "ratio": ratio, "target": target, "ok": ok, "notes": notes})

    sync_pp = "pingpong: shmlot.Event (threads)"
    add(sync_pp, "ns/rt")
    add("pingpong: shmlot.aio.Event (tasks)", "ns/rt", sync_pp, "<= 3x the threads' ping-pong", 3.0)
    add("pingpong, parking: shmlot.Event (threads)", "ns/rt")
    add("pingpong, parking: shmlot.aio.Event (tasks)", "ns/rt",
        "pingpong, parking: shmlot.Event (threads)")
    for peer in ("filelock.AsyncFileLock", "run_in_executor(multiprocessing.Lock)"):
        add(f"contended: {peer}", "ops/s")
    for peer in ("filelock.AsyncFileLock", "run_in_executor(multiprocessing.Lock)"):
        add("contended: shmlot.aio.Lock", "ops/s", f"contended: {peer}",
            f"ahead of {peer.split('(')[0]}", 1.0, higher_is_better=True)
    add("wakeup: 1 parked task", "ns")
    add("wakeup: 1 of 1,000 parked tasks", "ns", "wakeup: 1 parked task",
        "<= 1.5x with no other task parked", 1.5)
    return results


# tools/bench.py's view of the same figures: one row per subject with a figure per round, so
# that its ratios are paired round by round (see tools/benchlib/scenarios/external.py)
_SCENARIOS = [
    ("async_pingpong", "async Event ping-pong across processes (round trip)", "ns/rt", "lower",
     [("shmlot.Event", "pingpong: shmlot.Event (threads)", None),
      ("shmlot.aio.Event", "pingpong: shmlot.aio.Event (tasks)",
       ("shmlot.Event", "<=", 3.0, "<= 3 x the synchronous one"))]),
    ("async_pingpong_parking", "async Event ping-pong, spinning off on both sides", "ns/rt",
     "lower",
     [("shmlot.Event", "pingpong, parking: shmlot.Event (threads)", None),
      ("shmlot.aio.Event", "pingpong, parking: shmlot.aio.Event (tasks)", None)]),
    ("async_contended", "contended async Lock, 4 processes x 100 tasks", "ops/s", "higher",
     [("filelock.AsyncFileLock", "contended: filelock.AsyncFileLock", None),
      ("run_in_executor(mp.Lock)", "contended: run_in_executor(multiprocessing.Lock)", None),
      ("shmlot.aio.Lock", "contended: shmlot.aio.Lock",
       ("filelock.AsyncFileLock", ">=", 1.0, "ahead of filelock.AsyncFileLock")),
      ("shmlot.aio.Lock", None,
       ("run_in_executor(mp.Lock)", ">=", 1.0, "ahead of run_in_executor(mp.Lock)"))]),
    ("async_wakeup", "wake-up of one task, alone or among 1,000 parked in the process", "ns",
     "lower",
     [("1 parked task", "wakeup: 1 parked task", None),
      ("1 of 1,000 parked tasks", "wakeup: 1 of 1,000 parked tasks",
       ("1 parked task", "<=", 1.5, "<= 1.5 x with no other task parked"))]),
]


def scenario_rows(repeat=3, quick=False):
    """The figures as rows for tools/bench.py: one dict per subject, with every round's figure."""
    samples, peers_missing = collect(max(repeat, 2), quick)
    rows = []
    for sid, title, unit, better, subjects in _SCENARIOS:
        for subject, name, target in subjects:
            row = {"scenario": sid, "title": title, "unit": unit, "better": better,
                   "subject": subject, "family": subject.split(".")[0].split("(")[0]}
            if name is None:  # a second target for a subject listed already
                row = next(r for r in rows if r["scenario"] == sid and r["subject"] == subject)
            else:
                vals = samples.get(name)
                if not vals:
                    row.update(status="n/a", reason=peers_missing or "not measured")
                elif isinstance(vals[0], tuple):  # (ops/s, exclusion held)
                    row["samples"] = [v[0] for v in vals]
                    if not all(v[1] for v in vals):
                        row.update(status="failed", reason="EXCLUSION BROKEN")
                else:
                    row["samples"] = list(vals)
                rows.append(row)
            if target:
                ref, op, threshold, text = target
                row.setdefault("targets", []).append(
                    {"ref": ref, "op": op, "threshold": threshold, "text": text,
                     "level": "raised"})
    return rows


def _fmt(v, unit):
    if v is None:
        return "n/a"
    if unit == "ops/s":
        return f"{v:,.0f} ops/s"
    if v >= 1e6:
        return f"{v / 1e6:.2f} ms"
    return f"{v / 1e3:.1f} us"


def print_table(results, out=sys.stdout):
    w = max(len(r["name"]) for r in results)
    for r in results:
        ratio = ""
        if r["ratio"] is not None:
            ratio = f"{r['ratio']:.2f}x {r['peer'].split(': ', 1)[1]}"
        target = ""
        if r["target"]:
            target = f"; target {r['target']}: {'met' if r['ok'] else 'MISSED'}"
        notes = f"  ({r['notes']})" if r["notes"] else ""
        print(f"{r['name']:<{w}}  {_fmt(r['value'], r['unit']):>15}  {ratio}{target}{notes}",
              file=out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args(argv)
    results = run(args.repeat, args.quick, log=lambda m: print(m, file=sys.stderr, flush=True))
    print_table(results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
