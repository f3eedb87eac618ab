"""Waiting for what a test can observe: a predicate, the threads queued in a lot, parker
threads."""
import collections
import os
import threading
import time

import pytest

from shmlot._core import ffi, lib

SLOT_QUEUED = 2  # lot.h SLOT_QUEUED


def wait_until(predicate, timeout=10.0, message="condition", interval=0.001):
    """Poll ``predicate()`` until it returns a true value (returned), failing after ``timeout``
    seconds. The interval grows to 10 ms so that long waits do not burn a core."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {message}")
        time.sleep(interval)
        interval = min(interval * 2, 0.01)


Parked = collections.namedtuple("Parked", "pid tid key park_token index wait guard")


def parked(lot, key=None, timeout=30.0):
    """The threads queued in ``lot`` (on ``key`` if given), in queue order (per bucket). A
    snapshot copies a bucket whose lock stays busy (a holder descheduled on a loaded machine) out
    of queue order: take another until every slot wanted was copied in order."""
    cap = lot.slots
    buf = ffi.new("sl_slot_info[]", cap)
    deadline = time.monotonic() + timeout
    while True:
        n = lib.sl_snapshot_slots(lot._h(), buf, cap)
        assert n >= 0, ffi.string(lib.sl_last_error()).decode()
        found = [s for s in buf[0:n]
                 if s.state == SLOT_QUEUED and (key is None or s.key == key)]
        if all(s.in_order for s in found):
            return [Parked(s.pid, s.tid, s.key, s.park_token, s.index, s.wait, s.guard_alive)
                    for s in found]
        assert time.monotonic() < deadline, "no snapshot of the queue in order"


def _wait_queued(lot, key, enough, timeout, what):
    box = []

    def ready():
        box[:] = parked(lot, key)
        return enough(len(box))

    wait_until(ready, timeout, f"{what} on key {key:#x} (have {len(box)})")
    return list(box)


def wait_parked(lot, key, n, timeout=10.0):
    """Wait until exactly ``n`` threads are queued on ``key``; returns them in queue order."""
    return _wait_queued(lot, key, lambda have: have == n, timeout, f"{n} thread(s) parked")


def wait_parked_at_least(lot, key, n, timeout=20.0):
    """Wait until at least ``n`` threads (of any process) are queued on ``key``; returns them."""
    return _wait_queued(lot, key, lambda have: have >= n, timeout,
                        f"at least {n} thread(s) parked")


def thread_ident():
    """(pid, native tid) of the calling thread: what the lot records for a parked thread."""
    return os.getpid(), threading.get_native_id()


class ParkerThread(threading.Thread):
    """A thread that calls ``lot.park(key, **park_kwargs)`` once and keeps the outcome.

    ``.ident_pair`` is its (pid, native tid) once started; ``.outcome(timeout)`` joins it and
    returns the ParkResult (or re-raises what park raised)."""

    def __init__(self, lot, key, **park_kwargs):
        super().__init__(daemon=True)
        self.lot, self.key, self.park_kwargs = lot, key, park_kwargs
        self.result = self.error = None
        self.ident_pair = None
        self._started_evt = threading.Event()

    def run(self):
        self.ident_pair = thread_ident()
        self._started_evt.set()
        try:
            self.result = self.lot.park(self.key, **self.park_kwargs)
        except BaseException as exc:  # noqa: B902 - reported to the test
            self.error = exc

    def start(self):
        super().start()
        self._started_evt.wait(10)
        return self

    def outcome(self, timeout=10.0):
        self.join(timeout)
        if self.is_alive():
            pytest.fail(f"parker on key {self.key:#x} still parked after {timeout} s")
        if self.error is not None:
            raise self.error
        return self.result


def park_in_order(lot, key, n, **park_kwargs):
    """Start ``n`` ParkerThreads on ``key`` one after the other, each queued before the next
    starts (so queue order is start order); ``park_token`` defaults to the thread's index."""
    threads = []
    for i in range(n):
        kwargs = dict(park_kwargs)
        kwargs.setdefault("park_token", i)
        before = len(parked(lot, key))
        threads.append(ParkerThread(lot, key, **kwargs).start())
        wait_parked(lot, key, before + 1)
    return threads


def raised_in_thread(call, timeout=10.0):
    """Run ``call()`` in another thread and return the exception it raised (None if it returned):
    for a test that one thread may not do what another may."""
    box = []

    def run():
        try:
            call()
        except BaseException as exc:  # noqa: B902 - returned to the test
            box.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"{call} still running in its thread after {timeout} s"
    return box[0] if box else None
