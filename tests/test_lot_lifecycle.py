"""Creating, attaching, opening, closing and unlinking lots; the default lot and the module-level
functions, on both backends, within one process. (Other processes:
test_lot_processes.py.)"""
import os
import pickle
import stat
import time

import pytest

import shmlot
from shmlot import LotNotFoundError, ParkingLot
from shmlot.lot import default_lot_name

from helpers import SHM_DIR
from helpers.processes import run_python
from helpers.waiting import ParkerThread, parked, wait_parked

pytestmark = pytest.mark.timeout(60)


def shm_mode(name):
    return stat.S_IMODE(os.stat(os.path.join(SHM_DIR, name)).st_mode)


def test_create_properties_and_info(lot_name, waiter):
    name = lot_name()
    lot = ParkingLot.create(name, buckets=64, slots=32, waiter=waiter)
    try:
        assert (lot.name, lot.buckets, lot.slots, lot.waiter) == (name, 64, 32, waiter)
        assert not lot.closed
        assert name in repr(lot) and waiter in repr(lot)
        info = lot.info()
        assert info["name"] == name and info["waiter"] == waiter
        assert (info["buckets"], info["slots"], info["slots_free"]) == (64, 32, 32)
        assert info["creator_pid"] == os.getpid()
        assert info["size"] == os.path.getsize(os.path.join(SHM_DIR, name))
        assert all(v == 0 for v in info["counters"].values())
    finally:
        lot.unlink()
    assert not os.path.exists(os.path.join(SHM_DIR, name))


def test_attach_sees_the_same_lot(make_lot):
    lot = make_lot(buckets=128, slots=64)
    other = ParkingLot.attach(lot.name)
    assert other is not lot
    assert (other.buckets, other.slots, other.waiter) == (128, 64, lot.waiter)
    assert other.info()["lot_id"] == lot.info()["lot_id"]
    # a thread parked through one handle is unparked through the other
    t = ParkerThread(lot, 5).start()
    wait_parked(other, 5, 1)
    assert other.unpark_one(5, lambda r: 3).unparked_threads == 1
    assert t.outcome().token == 3


def test_open_creates_then_attaches(lot_name, waiter):
    name = lot_name()
    first = ParkingLot.open(name, buckets=32, slots=16, waiter=waiter)
    try:
        assert (first.buckets, first.slots, first.waiter) == (32, 16, waiter)
        # the lot exists now: open attaches, whatever the creation arguments say
        other = "semaphore" if waiter == "futex" else "futex"
        second = ParkingLot.open(name, buckets=8, slots=8, waiter=other)
        assert (second.buckets, second.slots, second.waiter) == (32, 16, waiter)
        assert second.info()["lot_id"] == first.info()["lot_id"]
    finally:
        first.unlink()


def test_with_closes_the_handle_not_the_lot(make_lot):
    lot = make_lot()
    with ParkingLot.attach(lot.name) as handle:
        assert handle.park(1, timeout=0).is_timed_out
    assert handle.closed
    with pytest.raises(ValueError):
        handle.unpark_one(1)
    handle.close()  # idempotent
    # the lot itself is untouched
    assert os.path.exists(os.path.join(SHM_DIR, lot.name))
    again = ParkingLot.attach(lot.name)
    assert again.info()["lot_id"] == lot._lot_id
    assert lot.park(1, timeout=0).is_timed_out


def test_close_and_collect_handles_repeatedly(make_lot):
    lot = make_lot()
    for _ in range(200):
        h = ParkingLot.attach(lot.name)
        h.close()
        del h
    assert lot.info()["slots_free"] == lot.slots


def test_unlink_removes_the_name_but_handles_keep_working(make_lot):
    lot = make_lot()
    name = lot.name
    other = ParkingLot.attach(name)
    lot.unlink()
    assert not os.path.exists(os.path.join(SHM_DIR, name))
    with pytest.raises(LotNotFoundError):
        ParkingLot.attach(name)
    # both handles still share the (now nameless) lot
    t = ParkerThread(lot, 9).start()
    wait_parked(other, 9, 1)
    assert other.unpark_all(9, 4) == 1
    assert t.outcome().token == 4
    # the name is free for a new, different lot
    new = ParkingLot.create(name, waiter=lot.waiter, slots=8)
    try:
        assert new.info()["lot_id"] != other.info()["lot_id"]
        assert parked(new) == []
    finally:
        new.unlink()
    # a park and a wake-up after the unlink leave no semaphore names behind
    assert not [e for e in os.listdir(SHM_DIR) if e.startswith(f"sem.sl{lot._lot_id:016x}.")]


def test_semaphore_backend_unlink_while_parked(make_lot):
    """The lot is unlinked (taking its semaphores along) while a thread is parked and a
    wake-up is on its way: the thread is still woken, promptly, and no semaphore name is
    re-created for the unlinked lot."""
    lot = make_lot(waiter="semaphore", slots=16)
    waker = ParkingLot.attach(lot.name)
    t = ParkerThread(lot, 1).start()
    wait_parked(lot, 1, 1)
    lot.unlink()
    start = time.monotonic()
    assert waker.unpark_one(1).unparked_threads == 1
    assert t.outcome().is_unparked
    t2 = ParkerThread(lot, 2).start()  # a park after the unlink, from the same handle
    wait_parked(lot, 2, 1)
    assert waker.unpark_one(2).unparked_threads == 1
    assert t2.outcome().is_unparked
    assert time.monotonic() - start < 0.5  # not a 1 s sleep slice
    assert not [e for e in os.listdir(SHM_DIR) if e.startswith(f"sem.sl{lot._lot_id:016x}.")]


def test_semaphore_backend_unlink_removes_its_semaphores(make_lot):
    lot = make_lot(waiter="semaphore", slots=16)
    t = ParkerThread(lot, 1).start()
    [p] = wait_parked(lot, 1, 1)
    sem_file = os.path.join(SHM_DIR, f"sem.sl{lot._lot_id:016x}.{p.index}")
    lot.unpark_one(1)
    t.outcome()
    assert os.path.exists(sem_file)
    assert shm_mode(os.path.basename(sem_file)) == 0o600
    lot.unlink()
    assert not [e for e in os.listdir(SHM_DIR) if e.startswith(f"sem.sl{lot._lot_id:016x}.")]


def test_mode_defaults_to_0600(make_lot):
    lot = make_lot()
    assert shm_mode(lot.name) == 0o600


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o660, 0o666, 0o604])
def test_mode_is_exact_whatever_the_umask(make_lot, mode):
    old = os.umask(0o077)
    try:
        lot = make_lot(mode=mode)
    finally:
        os.umask(old)
    assert shm_mode(lot.name) == mode
    if lot.waiter == "semaphore":
        t = ParkerThread(lot, 1).start()
        [p] = wait_parked(lot, 1, 1)
        lot.unpark_one(1)
        t.outcome()
        assert shm_mode(f"sem.sl{lot._lot_id:016x}.{p.index}") == mode


def test_waiter_from_environment(lot_name, monkeypatch, waiter):
    monkeypatch.setenv("SHMLOT_WAITER", waiter)
    name = lot_name()
    lot = ParkingLot.create(name, slots=8)
    try:
        assert lot.waiter == waiter
        assert ParkingLot.attach(name).waiter == waiter
    finally:
        lot.unlink()


def test_pickle_reattaches_by_name(make_lot):
    lot = make_lot()
    copy = pickle.loads(pickle.dumps(lot))
    assert copy is not lot and copy.name == lot.name
    assert copy.info()["lot_id"] == lot.info()["lot_id"]


def test_default_lot_size_is_within_8_mib(lot_name, waiter):
    lot = ParkingLot.create(lot_name(), waiter=waiter)
    try:
        assert lot.info()["size"] <= 8 * 2**20
        assert (lot.buckets, lot.slots) == (4096, 4096)
    finally:
        lot.unlink()


def test_key_at_matches_key_for(make_lot):
    lot = make_lot()
    for off in (0, 8, 4096):
        assert lot.key_at(off) == shmlot.key_for(lot.name, off)


# ---- the default lot -------------------------------------------------------------------

def test_default_lot_name(monkeypatch):
    monkeypatch.delenv("SHMLOT_LOT", raising=False)
    assert default_lot_name() == f"shmlot-{os.getuid()}"
    monkeypatch.setenv("SHMLOT_LOT", "")
    assert default_lot_name() == f"shmlot-{os.getuid()}"
    monkeypatch.setenv("SHMLOT_LOT", "elsewhere")
    assert default_lot_name() == "elsewhere"


@pytest.fixture
def fresh_default_lot_name(monkeypatch, lot_name, waiter):
    """$SHMLOT_LOT set to a fresh name (and the backend via $SHMLOT_WAITER); the default lot is
    unlinked afterwards."""
    name = lot_name()
    monkeypatch.setenv("SHMLOT_LOT", name)
    monkeypatch.setenv("SHMLOT_WAITER", waiter)
    yield name
    lot = shmlot.lot._default_lots.pop(name, None)
    if lot is not None and os.path.exists(os.path.join(SHM_DIR, name)):
        lot.unlink()


def test_default_lot_is_opened_once_per_process(fresh_default_lot_name, waiter):
    lot = shmlot.default_lot()
    assert lot.name == fresh_default_lot_name and lot.waiter == waiter
    assert shmlot.default_lot() is lot
    lot.close()  # a closed default handle is replaced, not returned
    again = shmlot.default_lot()
    assert again is not lot and not again.closed
    assert again.info()["lot_id"] == lot._lot_id


def test_module_level_functions_use_the_default_lot(fresh_default_lot_name):
    from shmlot import FilterOp, RequeueOp
    lot = shmlot.default_lot()
    t1 = ParkerThread(lot, 1, park_token=11).start()
    wait_parked(lot, 1, 1)
    r = shmlot.unpark_one(1, lambda res: 21)
    assert r.unparked_threads == 1 and t1.outcome().token == 21

    seen = []
    t2 = ParkerThread(lot, 2, park_token=12).start()
    wait_parked(lot, 2, 1)
    r = shmlot.unpark_filter(2, lambda tok: seen.append(tok) or FilterOp.UNPARK, lambda res: 22)
    assert seen == [12] and r.unparked_threads == 1 and t2.outcome().token == 22

    t3 = ParkerThread(lot, 3).start()
    wait_parked(lot, 3, 1)
    r = shmlot.unpark_requeue(3, 4, lambda: RequeueOp.REQUEUE_ALL)
    assert r.requeued_threads == 1
    assert shmlot.unpark_all(4, 24) == 1 and t3.outcome().token == 24

    # and park itself, unparked through the lot object
    box = []
    import threading
    t4 = threading.Thread(target=lambda: box.append(shmlot.park(5, park_token=15, timeout=30)))
    t4.start()
    [p] = wait_parked(lot, 5, 1)
    assert p.park_token == 15
    lot.unpark_one(5, lambda res: 25)
    t4.join(10)
    assert box[0].token == 25
    assert shmlot.park(6, validate=lambda: False).is_invalid
    assert shmlot.park(6, timeout=0.01).is_timed_out


@pytest.mark.parametrize("kind", ["Lock", "RWLock", "Event"])
def test_exit_with_a_lot_in_a_reference_cycle(lot, kind):
    """A process whose lot and primitives are garbage in one cycle at exit (here through a
    function of __main__ stored on the lot) exits cleanly: the collector must not tear the lot's
    buffer away from the words still bound to it (this crashed with SIGSEGV at exit)."""
    code = f"""
import shmlot
lot = shmlot.ParkingLot.attach({lot.name!r})
obj = shmlot.{kind}(name="cycle", lot=lot)
def hook(*args):
    return lot, obj
lot.hook = hook
print("done")
"""
    proc = run_python(code, check=False)
    assert (proc.returncode, proc.stdout.strip()) == (0, "done"), proc.stderr
