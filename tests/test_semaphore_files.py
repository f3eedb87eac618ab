"""The semaphore backend makes each slot's named semaphore itself, under a name derived from the
lot (never glibc's random sem.XXXXXX), so that what a process killed while making one leaves is
found and removed by the reaper; the file it writes is the one glibc's sem_open writes."""
import os
import re

import pytest

import posix_ipc

from shmlot import ParkingLot
from shmlot._sleep import SEM_DIR, SEM_FILE_ZERO

from helpers.processes import run_python

pytestmark = pytest.mark.timeout(60)

GLIBC_TEMP = re.compile(r"sem\.[A-Za-z0-9]{6}$")


def test_the_file_is_what_sem_open_writes(lot_name):
    name = "/" + lot_name()[-20:]
    sem = posix_ipc.Semaphore(name, posix_ipc.O_CREX, 0o600, 0)
    try:
        with open(f"{SEM_DIR}/sem.{name[1:]}", "rb") as f:
            assert f.read() == SEM_FILE_ZERO
    finally:
        sem.unlink()
        sem.close()


def test_a_maker_killed_mid_create_leaves_a_named_file_that_reap_removes(lot_name):
    name = lot_name()
    lot = ParkingLot.create(name, waiter="semaphore", slots=8)
    try:
        before = {e for e in os.listdir(SEM_DIR) if GLIBC_TEMP.match(e)}
        r = run_python(r"""
import sys
from shmlot import ParkingLot
from shmlot._core import lib
lot = ParkingLot.attach(sys.argv[1])
lib.sl_test_set_die_at(b"sem_file_written")
lot.park(7, timeout=5)   # opens (so first makes) its slot's semaphore: killed there
""", name, check=False)
        assert r.returncode == -9, r.stderr
        prefix = f"sem.sl{lot._lot_id:016x}."
        left = [e for e in os.listdir(SEM_DIR) if e.startswith(prefix) and ".tmp" in e]
        assert len(left) == 1 and re.match(rf"{re.escape(prefix)}\d+\.tmp\d+-\d+$", left[0]), left
        assert {e for e in os.listdir(SEM_DIR) if GLIBC_TEMP.match(e)} <= before
        lot.reap()
        assert not [e for e in os.listdir(SEM_DIR) if e.startswith(prefix) and ".tmp" in e]
        # and the slot's semaphore is made afresh and works
        assert lot.park(7, timeout=0.01).is_timed_out
    finally:
        lot.unlink()

