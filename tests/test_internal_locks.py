"""The lot's internal locks (a bucket's, the registry's): futex words naming their holder.

- A process stopped (SIGSTOP) while it holds the registry lock: object creation, unlink_object
  and reap raise TimeoutError after a bounded wait, naming the holder's pid and saying it is
  alive but not releasing; ``shmlot-stat --reap`` exits 1 with one line naming it, while plain
  ``shmlot-stat`` (which never takes the registry lock) still works. Continued (SIGCONT), the
  holder lets go and everything works again; killed instead, the next caller takes the lock
  over at once.
- A process stopped while it holds a bucket lock: a timed park keeps its timeout.
- Killed there and left a zombie (kill(pid, 0) still succeeds), the threads already asleep on
  the bucket lock notice at the end of their sleep slice (50 ms), take it over and repair the
  queue.
"""
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

import shmlot

from helpers import REPO_ROOT
from helpers.kills import kill_all, kill_and_reap
from helpers.processes import python_env, start_python
from helpers.waiting import ParkerThread, wait_until

pytestmark = pytest.mark.timeout(60)

REGISTRY_BOUND = 2.0  # lot.c SL_REGISTRY_STUCK_NS


def process_state(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rpartition(")")[2].split()[0]


def stopped_holding(lot, step, op):
    """A child attached to ``lot`` that stops itself (SIGSTOP) at core step ``step`` of ``op``
    (the test hook "stop:STEP"), holding the lock taken there. Returns its Popen once stopped."""
    code = f"""
import shmlot
from shmlot._core import lib
lot = shmlot.ParkingLot.attach({lot.name!r})
lib.sl_test_set_die_at(b"stop:{step}")
{op}
lib.sl_test_set_die_at(b"")
print("done", flush=True)
"""
    proc = start_python(code)
    wait_until(lambda: process_state(proc.pid) == "T", timeout=20, message="child stopped")
    return proc


def run_stat(*args):
    return subprocess.run([sys.executable, "-m", "shmlot.stat", *args], capture_output=True,
                          text=True, timeout=30, cwd=REPO_ROOT, env=python_env())


def timed(fn):
    t0 = time.monotonic()
    try:
        fn()
        return None, time.monotonic() - t0
    except Exception as exc:  # noqa: B902 - the test looks at it
        return exc, time.monotonic() - t0


def test_registry_lock_of_a_stopped_process_is_a_bounded_wait(make_lot):
    lot = make_lot()
    shmlot.Lock(name="old", lot=lot)
    proc = stopped_holding(lot, "registry_locked", "shmlot.Lock(name='new', lot=lot)")
    try:
        for what, fn in (("create", lambda: shmlot.Lock(name="other", lot=lot)),
                         ("unlink_object", lambda: lot.unlink_object("old")),
                         ("reap", lot.reap)):
            exc, took = timed(fn)
            assert isinstance(exc, TimeoutError), (what, exc)
            msg = str(exc)
            assert f"process {proc.pid}" in msg and "alive" in msg and "stopped" in msg, msg
            assert REGISTRY_BOUND <= took < REGISTRY_BOUND + 2.0, (what, took)
        r = run_stat("--reap", lot.name)
        assert r.returncode == 1, (r.stdout, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and str(proc.pid) in lines[0] and "Traceback" not in r.stderr
        assert run_stat(lot.name).returncode == 0   # viewing never takes the registry lock
        os.kill(proc.pid, signal.SIGCONT)
        out, err = proc.communicate(timeout=20)
        assert proc.returncode == 0 and out.strip() == "done", err
        shmlot.Lock(name="other", lot=lot)
        lot.unlink_object("old")
        assert run_stat("--reap", lot.name).returncode == 0
    finally:
        kill_all(proc)


def test_registry_lock_of_a_killed_stopped_process_is_taken_over(make_lot):
    lot = make_lot()
    proc = stopped_holding(lot, "registry_locked", "shmlot.Lock(name='new', lot=lot)")
    try:
        kill_and_reap(proc)
        exc, took = timed(lambda: shmlot.Lock(name="other", lot=lot))
        assert exc is None and took < 1.0, (exc, took)
        lot.reap()
    finally:
        kill_all(proc)


def test_bucket_lock_of_a_stopped_process_keeps_timeouts(make_lot):
    lot = make_lot()
    key = 0x51AB
    proc = stopped_holding(lot, "park_after_enqueue", f"lot.park({key}, timeout=30)")
    try:
        exc, took = timed(lambda: lot.park(key, timeout=0.2))
        assert isinstance(exc, TimeoutError) or (exc is None), exc
        assert took < 0.2 + 0.5, took
    finally:
        kill_all(proc)


def test_sleepers_take_over_from_a_zombie_bucket_lock_holder_within_a_slice(make_lot):
    """Killed while holding the bucket lock and not reaped: a zombie, whose pid still exists, so
    only the check at the end of a sleep slice sees it dead."""
    lot = make_lot()
    key = 0x51AC
    parker = ParkerThread(lot, key, timeout=30).start()
    wait_until(lambda: lot.info()["slots_free"] == lot.slots - 1, message="parked")
    proc = stopped_holding(lot, "unpark_locked", f"lot.unpark_one({key}, lambda r: 5)")
    results = []

    def unparker():
        results.append(lot.unpark_one(key, lambda r: 6).unparked_threads)

    try:
        t = threading.Thread(target=unparker)
        t.start()
        time.sleep(0.2)          # asleep on the bucket lock by now
        assert not results
        killed = time.monotonic()
        os.kill(proc.pid, signal.SIGKILL)
        wait_until(lambda: process_state(proc.pid) == "Z", message="zombie")
        t.join(10)
        took = time.monotonic() - killed
        assert not t.is_alive() and took < 0.05 + 0.45, took   # one slice, and a loaded machine
        # the dead child had dequeued the parked thread with token 5 before stopping
        assert parker.outcome().token == 5
        assert results == [0]
        assert lot.info()["counters"]["bucket_repairs"] == 1
    finally:
        kill_all(proc)
