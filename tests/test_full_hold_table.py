"""The primitives never raise LotFullError (they back off and retry, counter ``full_waits``):
Barrier and RWLock record holds (a party waiting, a read share, a waiting writer), and when the
lot's hold table is full they wait for room instead of failing, across processes. The table is
filled here with ``deadlock.acquire_resource`` holds, then room is made while they wait."""
import threading
import time

import pytest

import shmlot
from shmlot import LotFullError, deadlock

from helpers.processes import child_env, start_python
from helpers.waiting import wait_until

pytestmark = pytest.mark.timeout(60)


def fill_holds(lot):
    """Take every free hold of ``lot`` (as resources of this thread); return their keys."""
    keys = []
    while True:
        try:
            deadlock.acquire_resource(0xF000 + len(keys), lot=lot)
        except LotFullError:
            return keys
        keys.append(0xF000 + len(keys))


def free_holds(lot, keys):
    for k in keys:
        deadlock.release_resource(k, lot=lot)


def full_waits(lot):
    return lot.info()["counters"]["full_waits"]


def start_child(lot, code):
    p = start_python(code, lot.name, env=child_env(lot))
    return p


def fill_after_child_opened(lot, child):
    """Once ``child`` has opened its object (which records its reference, a hold of its own),
    fill the hold table and let the child go on to the step that needs one more hold."""
    line = child.stdout.readline()
    assert line.strip() == "ready", (line, child.stderr.read() if child.poll() is not None else "")
    keys = fill_holds(lot)
    child.stdin.write("go\n")
    child.stdin.flush()
    return keys


def test_barrier_party_waits_for_room_in_the_hold_table(make_lot):
    lot = make_lot(holds=24)
    b = shmlot.Barrier(2, name="b", lot=lot)
    child = start_child(lot, """
import sys, shmlot
lot = shmlot.ParkingLot.attach(sys.argv[1])
b = shmlot.Barrier(2, name="b", lot=lot)
print("ready", flush=True)
sys.stdin.readline()
print("index", b.wait(30), flush=True)
""")
    keys = fill_after_child_opened(lot, child)
    wait_until(lambda: full_waits(lot) > 0, 20, "the party to find the hold table full")
    free_holds(lot, keys)
    assert b.wait(30) in (0, 1)
    out, err = child.communicate(timeout=30)
    assert child.returncode == 0, err
    assert out.startswith("index")


def test_barrier_timeout_while_the_table_stays_full_breaks_it(make_lot):
    lot = make_lot(holds=24)
    b = shmlot.Barrier(2, lot=lot)
    keys = fill_holds(lot)
    try:
        t0 = time.monotonic()
        with pytest.raises(shmlot.BrokenBarrierError):
            b.wait(0.3)
        assert 0.25 < time.monotonic() - t0 < 2
        assert b.broken
    finally:
        free_holds(lot, keys)


@pytest.mark.parametrize("side", ["read", "write"])
def test_rwlock_waits_for_room_in_the_hold_table(make_lot, side):
    """A reader needs a hold for its share; a writer needs one to wait (here for this process's
    read share): with the table full, the acquire in another process waits for room, then gets
    the lock."""
    lot = make_lot(holds=24)
    rw = shmlot.RWLock(name="rw", lot=lot)
    if side == "write":
        rw.acquire_read()
    child = start_child(lot, f"""
import sys, shmlot
lot = shmlot.ParkingLot.attach(sys.argv[1])
rw = shmlot.RWLock(name="rw", lot=lot)
print("ready", flush=True)
sys.stdin.readline()
print("got", rw.acquire_{side}(timeout=30), flush=True)
rw.release_{side}()
""")
    keys = fill_after_child_opened(lot, child)
    wait_until(lambda: full_waits(lot) > 0, 20, "the child to find the hold table full")
    free_holds(lot, keys)
    if side == "write":
        time.sleep(0.05)
        rw.release_read()
    out, err = child.communicate(timeout=30)
    assert child.returncode == 0, err
    assert out.strip() == "got True"


def test_rwlock_non_blocking_read_with_the_table_full_returns_false_at_once(make_lot):
    lot = make_lot(holds=24)
    rw = shmlot.RWLock(lot=lot)
    keys = fill_holds(lot)
    try:
        t0 = time.monotonic()
        assert rw.acquire_read(blocking=False) is False
        assert rw.acquire_read(timeout=0.2) is False
        assert time.monotonic() - t0 < 1.5
    finally:
        free_holds(lot, keys)
    assert rw.acquire_read(blocking=False)
    rw.release_read()
