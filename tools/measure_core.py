#!/usr/bin/env python3
"""Measure the parking lot core from Python: the median cost of

- a park/unpark round trip between two processes (ping-pong: each side unparks the other and
  parks until unparked; one round trip = two hand-offs), and
- uncontended lot operations (nobody parked: unpark_one, unpark_all, an invalid park whose
  validate says no, a park with timeout=0 that queues and times out at once),

on each waiter backend. Each figure is the median over batches of the per-operation mean of the
batch (batches absorb timer overhead; the median absorbs the noise of a busy machine).

    PYTHONPATH=. python tools/measure_core.py [--waiter futex|semaphore|both] [--batches N]
                                              [--batch-size N] [--cpus LIST] [--json]

``--cpus 0`` pins both processes to one CPU (hand-offs then cost a context switch, not a
cross-CPU wake-up); by default they float.
"""
import argparse
import json
import mmap
import multiprocessing
import os
import statistics
import struct
import sys
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from shmlot import ParkingLot  # noqa: E402

KEY_A, KEY_B = 0x5A01, 0x5B02


# ---- ping-pong between two processes ---------------------------------------------------------

def _turn(buf):
    return struct.unpack_from("<q", buf, 0)[0]


def _set_turn(buf, value):
    struct.pack_into("<q", buf, 0, value)


def _pong(lot, buf, rounds, cpus):
    """The child: wait for its turn (1), hand the turn back (0), until ``rounds`` round trips.
    The turn word is read by validate under the bucket lock and written before unparking, which
    takes that lock: no wake-up can be lost."""
    if cpus:
        os.sched_setaffinity(0, cpus)
    for i in range(rounds):
        while _turn(buf) != 1:
            lot.park(KEY_B, validate=lambda: _turn(buf) != 1)
        _set_turn(buf, 0)
        lot.unpark_one(KEY_A)


def ping_pong(lot, batches, batch_size, cpus):
    """Median seconds per round trip (parent -> child -> parent)."""
    buf = mmap.mmap(-1, 4096)  # shared with the forked child
    _set_turn(buf, 0)
    rounds = batches * batch_size + batch_size  # one warm-up batch
    ctx = multiprocessing.get_context("fork")
    child = ctx.Process(target=_pong, args=(lot, buf, rounds, cpus), daemon=True)
    child.start()
    if cpus:
        os.sched_setaffinity(0, cpus)
    means = []
    try:
        for b in range(batches + 1):
            t0 = time.perf_counter()
            for _ in range(batch_size):
                _set_turn(buf, 1)
                lot.unpark_one(KEY_B)
                while _turn(buf) != 0:
                    lot.park(KEY_A, validate=lambda: _turn(buf) != 0)
            if b:  # the first batch warms up (semaphores opened, pages touched)
                means.append((time.perf_counter() - t0) / batch_size)
    finally:
        child.join(60)
        if child.exitcode is None:
            child.kill()
        if cpus:
            os.sched_setaffinity(0, range(os.cpu_count()))
    return statistics.median(means)


# ---- uncontended operations -------------------------------------------------------------

def per_call(fn, batches, batch_size):
    for _ in range(batch_size):  # warm-up
        fn()
    means = []
    for _ in range(batches):
        t0 = time.perf_counter()
        for _ in range(batch_size):
            fn()
        means.append((time.perf_counter() - t0) / batch_size)
    return statistics.median(means)


def uncontended(lot, batches, batch_size):
    no = lambda: False  # noqa: E731
    ops = {
        "unpark_one (nobody parked)": lambda: lot.unpark_one(KEY_A),
        "unpark_all (nobody parked)": lambda: lot.unpark_all(KEY_A),
        "park, validate -> False": lambda: lot.park(KEY_A, validate=no),
        "park, timeout=0": lambda: lot.park(KEY_A, timeout=0),
    }
    return {name: per_call(fn, batches, batch_size) for name, fn in ops.items()}


def measure(waiter, batches, batch_size, cpus):
    name = f"shmlot-measure-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    lot = ParkingLot.create(name, buckets=64, slots=64, waiter=waiter)
    try:
        out = {"round trip between two processes": ping_pong(lot, batches, batch_size // 4 or 1,
                                                              cpus)}
        out.update(uncontended(lot, batches, batch_size))
        return out
    finally:
        lot.unlink()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--waiter", choices=["futex", "semaphore", "both"], default="both")
    ap.add_argument("--batches", type=int, default=21)
    ap.add_argument("--batch-size", type=int, default=2000)
    ap.add_argument("--cpus", default="", help="pin both processes to these CPUs, e.g. 0 or 0,1")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    cpus = {int(c) for c in args.cpus.split(",") if c.strip()}
    waiters = ["futex", "semaphore"] if args.waiter == "both" else [args.waiter]
    results = {w: measure(w, args.batches, args.batch_size, cpus) for w in waiters}
    if args.json:
        print(json.dumps({"python": sys.version.split()[0], "results": results}, indent=2))
        return
    print(f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
          f"median of {args.batches} batches" + (f", pinned to CPUs {sorted(cpus)}" if cpus
                                                  else ""))
    names = list(next(iter(results.values())))
    width = max(map(len, names))
    print(f"{'':{width}}  " + "  ".join(f"{w:>10}" for w in waiters))
    for n in names:
        print(f"{n:{width}}  " + "  ".join(f"{results[w][n] * 1e6:8.2f}us" for w in waiters))


if __name__ == "__main__":
    main()
