"""How long an object lives, and what a handle on it names: a primitive keeps its lot mapped
after the user's handle is closed; a fork child takes its own references to the anonymous
objects it inherits; a handle carries its record's generation, so one whose object was freed
(and the record maybe reused) raises ObjectGoneError instead of naming another object; and
reference tracking never lapses silently when the hold table fills. Real processes, both
backends."""
import gc
import multiprocessing
import os
import pickle
import signal
import time

import pytest

import shmlot
from shmlot.snapshot import snapshot

from _prim_helpers import plot, wait_parked_on  # noqa: F401 (fixtures)
from conftest import new_lot_name, run_python, wait_until

pytestmark = pytest.mark.timeout(90)

FORK = multiprocessing.get_context("fork")


def used(lot):
    return lot.info()["objects_used"]


# ---- a closed lot handle ------------------------------------------------------------------------

def _contend(lock, out):
    out.put(("got", lock.acquire(timeout=20)))
    lock.release()


def test_primitive_outlives_the_with_block_of_its_lot(waiter):
    """``with ParkingLot.open(...) as lot: l = Lock(lot=lot)``, then ``l`` used after the block:
    the release that must wake a parked waiter works (the primitive holds its own handle on the
    mapping), and the waiter gets the lock; a new primitive on the closed handle is refused."""
    name = new_lot_name("closed-")
    try:
        with shmlot.ParkingLot.open(name, waiter=waiter) as lot:
            lk = shmlot.Lock(lot=lot)
        assert lot.closed
        lk.acquire()
        out = FORK.Queue()
        p = FORK.Process(target=_contend, args=(lk, out))
        p.start()
        with shmlot.ParkingLot.attach(name) as probe:
            wait_parked_on(probe, lk.key, 1)
        lk.release()  # slow path: PARKED is set
        assert out.get(timeout=20) == ("got", True)
        p.join(20)
        assert p.exitcode == 0
        assert lk.acquire(timeout=5)
        lk.release()
        with pytest.raises(ValueError, match="closed"):
            shmlot.Lock(lot=lot)
    finally:
        shmlot.ParkingLot.attach(name).unlink()
