"""parking_lot_core's park/unpark test matrix, ported (Rust parking_lot, core/src/parking_lot.rs,
``mod tests``: ``run_parking_test`` and ``SingleLatchTest``).

Each latch is a FIFO semaphore built on the lot, starting unavailable: ``down()`` decrements a
shared counter and parks on the counter's key if it was not positive; ``up()`` increments it and,
if someone was waiting, unparks one (retrying while the waiter has decremented but not parked
yet). ``threads`` parkers per latch each do one ``down()`` and then report who they are; the test
does ``single_unparks`` ``up()``s (``delay`` apart), checking after each that exactly one parker
woke and that it was the one at the head of the queue (FIFO), then wakes the rest with
``unpark_all`` (in a loop: some may not have parked yet), checking every parker woke exactly once
and nothing is left parked on the key.

The parkers run as threads of the test process, and as processes: children started by
``multiprocessing`` fork (inheriting the lot handle) and spawn (the handle pickled, i.e. attached
by name), and unrelated interpreters (``python -c``) that attach by name. In process modes the
parkers of a round are spread over up to 4 processes (several threads each), and each process runs
all rounds on its own, so rounds overlap a little (distinct keys).

Process modes run 1/10 of parking_lot's repeat counts (at least 1) by default: set
SHMLOT_MATRIX_FULL=1 for the full counts everywhere.
"""
import math
import multiprocessing
import os
import sys
import threading
import time
import traceback

import pytest

from shmlot import DEFAULT_PARK_TOKEN, DEFAULT_UNPARK_TOKEN, ParkingLot

from helpers.processes import start_python
from helpers.segments import Segment, attach_segment
from helpers.waiting import parked

# name: (repeats, latches, delay in microseconds, threads, single_unparks) -- parking_lot's table
MATRIX = {
    "unpark_all_one_fast": (10000, 1, 0, 1, 0),
    "unpark_all_hundred_fast": (100, 1, 0, 100, 0),
    "unpark_one_one_fast": (1000, 1, 0, 1, 1),
    "unpark_one_hundred_fast": (20, 1, 0, 100, 100),
    "unpark_one_fifty_then_fifty_all_fast": (50, 1, 0, 100, 50),
    "unpark_all_one": (100, 1, 10000, 1, 0),
    "unpark_all_hundred": (100, 1, 10000, 100, 0),
    "unpark_one_one": (10, 1, 10000, 1, 1),
    "unpark_one_fifty": (1, 1, 10000, 50, 50),
    "unpark_one_fifty_then_fifty_all": (2, 1, 10000, 100, 50),
    "hundred_unpark_all_one_fast": (100, 100, 0, 1, 0),
    "hundred_unpark_all_one": (1, 100, 10000, 1, 0),
}
MODES = ("threads", "fork", "spawn", "popen")
PROC_SCALE = 1 if os.environ.get("SHMLOT_MATRIX_FULL") == "1" else 10
MAX_PROCS = 4
WAIT = 60.0  # seconds any single wait may take before the test fails instead of hanging

# shared segment layout: [errors][pad] then one 32-byte record per latch
ERRORS = 0
LATCH_BASE = 64
LATCH_SIZE = 32
SEM, AWAKE, LAST, BAD = 0, 8, 16, 24


def latch_offset(index):
    return LATCH_BASE + index * LATCH_SIZE


def spin_until(predicate, what, timeout=WAIT):
    """Yield the CPU until ``predicate()``; fail after ``timeout`` s (parking_lot spins with
    thread::yield_now; the deadline only turns a hang into a failure)."""
    deadline = time.monotonic() + timeout
    spins = 0
    while not predicate():
        spins += 1
        if spins < 1000:
            os.sched_yield()
        else:
            time.sleep(0.0005)
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")


# ---- the parker side (threads here or in child processes) --------------------------------------

def my_ident():
    return (os.getpid() << 32) | threading.get_native_id()


def down(lot, seg, off):
    if seg.fetch_add(off + SEM, -1) > 0:
        return  # acquired without waiting
    r = lot.park(seg.key(off + SEM), validate=lambda: True, before_sleep=lambda: None,
                 timed_out=lambda key, was_last: None, park_token=DEFAULT_PARK_TOKEN,
                 timeout=None)
    if not (r.is_unparked and r.token == DEFAULT_UNPARK_TOKEN):
        seg.fetch_add(off + BAD, 1)


def run_parker(lot, seg, off):
    """SingleLatchTest::run: take one unit of the semaphore, then report back."""
    try:
        down(lot, seg, off)
        seg.store(off + LAST, my_ident())
        seg.fetch_add(off + AWAKE, 1)
    except BaseException:
        seg.fetch_add(ERRORS, 1)
        traceback.print_exc()
        raise


def worker_offsets(rounds, latches, threads, nprocs, w):
    """The latch offsets worker ``w`` of ``nprocs`` runs parkers for, round by round."""
    plan = []
    for r in range(rounds):
        offs = []
        for j in range(latches * threads):
            if j % nprocs == w:
                offs.append(latch_offset(r * latches + j // threads))
        plan.append(offs)
    return plan


def matrix_worker(lot, seg, rounds, latches, threads, nprocs, w):
    """One parker process: for each round, run its share of that round's parkers as threads."""
    if isinstance(lot, str):
        lot = ParkingLot.attach(lot)
    if isinstance(seg, str):
        seg = attach_segment(seg)
    failed = False
    for offs in worker_offsets(rounds, latches, threads, nprocs, w):
        ts = [threading.Thread(target=run_parker, args=(lot, seg, off)) for off in offs]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        if seg.load(ERRORS):
            failed = True
            break
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1 if failed else 0)


POPEN_WORKER = """
import sys
from test_park_matrix import matrix_worker
lot, seg, *nums = sys.argv[1:]
matrix_worker(lot, seg, *map(int, nums))
"""


# ---- the test side -----------------------------------------------------------------------------

class Latch:
    """SingleLatchTest, on a record of the shared segment."""

    def __init__(self, lot, seg, index, num_threads):
        self.lot, self.seg, self.num_threads = lot, seg, num_threads
        self.off = latch_offset(index)
        self.key = seg.key(self.off + SEM)

    def queue(self):
        return [(p.pid << 32) | p.tid for p in parked(self.lot, self.key)]

    def up(self):
        if self.seg.fetch_add(self.off + SEM, 1) < 0:
            # keep going until someone is actually unparked: the thread we pass ownership to may
            # have decremented the counter but not parked yet
            box = []

            def unparked_one():
                n = self.lot.unpark_one(self.key, lambda r: DEFAULT_UNPARK_TOKEN).unparked_threads
                assert n in (0, 1), f"unpark_one woke {n} threads"
                return n == 1

            spin_until(unparked_one, "a waiter to park so that up() can unpark it")
            del box

    def unpark_one(self, single_unpark_index):
        seg, off = self.seg, self.off
        assert seg.load(off + LAST) == 0
        queue = self.queue()
        assert len(queue) <= self.num_threads - single_unpark_index
        awake_before = seg.load(off + AWAKE)
        self.up()
        spin_until(lambda: seg.load(off + AWAKE) == awake_before + 1, "the woken thread")
        last = seg.load(off + LAST)
        assert last != 0
        if queue and queue[0] != last:
            raise AssertionError(f"woke up wrong thread: queue {[hex(q) for q in queue]}, "
                                 f"last awoken {last:#x}")
        seg.store(off + LAST, 0)

    def finish(self, num_single_unparks):
        seg, off = self.seg, self.off
        left = self.num_threads - num_single_unparks
        assert left >= 0
        deadline = time.monotonic() + WAIT
        while left > 0:
            waiting = len(self.queue())
            assert waiting <= left
            awake_before = seg.load(off + AWAKE)
            n = self.lot.unpark_all(self.key, DEFAULT_UNPARK_TOKEN)
            assert waiting <= n <= left, (waiting, n, left)
            spin_until(lambda: seg.load(off + AWAKE) == awake_before + n, f"{n} woken threads")
            left -= n
            if n == 0:
                assert time.monotonic() < deadline, f"{left} parkers never parked"
                os.sched_yield()
        assert seg.load(off + AWAKE) == self.num_threads
        assert self.queue() == []
        assert seg.load(off + BAD) == 0, "a park returned something other than Unparked(0)"


def start_workers(mode, lot, seg, rounds, latches, threads):
    nprocs = min(MAX_PROCS, latches * threads)
    procs = []
    for w in range(nprocs):
        params = (rounds, latches, threads, nprocs, w)
        if mode == "popen":
            procs.append(start_python(POPEN_WORKER, lot.name, seg.name, *params,
                                      stdin=None, stdout=None, stderr=None))
        else:
            ctx = multiprocessing.get_context(mode)
            args = (lot, seg, *params) if mode == "fork" else (lot, seg.name, *params)
            p = ctx.Process(target=matrix_worker, args=args, daemon=True)
            p.start()
            procs.append(p)
    return procs


def join_workers(procs, timeout=WAIT):
    deadline = time.monotonic() + timeout
    codes = []
    for p in procs:
        left = max(0.1, deadline - time.monotonic())
        if isinstance(p, multiprocessing.process.BaseProcess):
            p.join(left)
            codes.append(p.exitcode)
        else:
            try:
                codes.append(p.wait(left))
            except Exception:
                codes.append(None)
    return codes


def kill_workers(procs):
    for p in procs:
        try:
            p.kill()
        except Exception:
            pass
    join_workers(procs, 10)


def run_parking_test(mode, lot, seg, rounds, num_latches, delay, num_threads,
                     num_single_unparks):
    procs = []
    threads = []
    if mode != "threads":
        procs = start_workers(mode, lot, seg, rounds, num_latches, num_threads)
    try:
        for r in range(rounds):
            latches = [Latch(lot, seg, r * num_latches + i, num_threads)
                       for i in range(num_latches)]
            if mode == "threads":
                threads = [threading.Thread(target=run_parker, args=(lot, seg, latch.off),
                                            daemon=True)
                           for latch in latches for _ in range(num_threads)]
                for t in threads:
                    t.start()
            for unpark_index in range(num_single_unparks):
                if delay:
                    time.sleep(delay)
                for latch in latches:
                    latch.unpark_one(unpark_index)
            for latch in latches:
                latch.finish(num_single_unparks)
            for t in threads:
                t.join(WAIT)
                assert not t.is_alive()
            assert seg.load(ERRORS) == 0
        if procs:
            assert join_workers(procs) == [0] * len(procs)
            procs = []
    finally:
        if procs:
            kill_workers(procs)
        # release anything still parked after a failure, so that no thread hangs the run, and
        # let those threads finish before the caller unmaps the segment they write to
        for i in range(rounds * num_latches):
            lot.unpark_all(seg.key(latch_offset(i) + SEM), 2**64 - 1)
        for t in threads:
            t.join(WAIT)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", list(MATRIX))
def test_parking_matrix(case, mode, make_lot, lot_name):
    repeats, latches, delay_us, threads, single_unparks = MATRIX[case]
    if mode != "threads":
        repeats = max(1, math.ceil(repeats / PROC_SCALE))
    # slots: two overlapping rounds of parkers at most (process modes), plus margin
    lot = make_lot(buckets=64, slots=max(64, 2 * latches * threads + 16))
    seg = Segment(lot_name("matrix-"), create=True,
                  size=LATCH_BASE + repeats * latches * LATCH_SIZE)
    try:
        run_parking_test(mode, lot, seg, repeats, latches, delay_us / 1e6, threads,
                         single_unparks)
        assert parked(lot) == []
        assert lot.info()["slots_free"] == lot.slots
    finally:
        seg.close()
        seg.unlink()
