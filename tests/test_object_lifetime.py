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

from helpers.lots import new_lot_name
from helpers.processes import run_python
from helpers.waiting import wait_parked_at_least, wait_until

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
            wait_parked_at_least(probe, lk.key, 1)
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


# ---- generations: a handle never names another object -------------------------------------------

@pytest.mark.parametrize("reuse_kind", ["Lock", "Event"])
def test_handle_of_a_freed_object_raises_object_gone(make_lot, reuse_kind):
    """A pickled handle whose object is freed before it is unpickled (in another process), the
    record then reused by another object of the same or another kind: unpickling raises
    ObjectGoneError (a LookupError) and takes no reference; the new object is untouched."""
    lot = make_lot(objects=1)
    old = shmlot.Lock(lot=lot)
    data = pickle.dumps(old)
    index = old._place.index
    del old
    gc.collect()
    new = getattr(shmlot, reuse_kind)(lot=lot)
    assert new._place.index == index  # the only record: reused
    r = run_python(f"""
        import pickle, shmlot
        try:
            lk = pickle.loads(bytes.fromhex({data.hex()!r}))
        except shmlot.ObjectGoneError as exc:
            assert isinstance(exc, LookupError)
            print("gone:", exc)
        else:
            print("resolved to", lk)
    """)
    assert r.stdout.startswith("gone:"), r.stdout + r.stderr
    refs = {o.index: o.refs for o in snapshot(lot, processes=False).objects}
    assert refs[index] == 1  # only ours: the refused handle took none
    # and a live object's handle still resolves, here and in another process
    assert pickle.loads(pickle.dumps(new))._place.index == index
    r = run_python(f"""
        import pickle, shmlot
        print(type(pickle.loads(bytes.fromhex({pickle.dumps(new).hex()!r}))).__name__)
    """)
    assert r.stdout.strip() == reuse_kind


# ---- fork children take their own references ----------------------------------------------------

def _hold_and_report(lk, held, go, out):
    lk.acquire()
    held.set()
    go.wait(30)
    out.put(lk.locked())
    lk.release()


def _start_holder(lot, held, go, out):
    """The user's pattern: the only handle in the parent is a local, and multiprocessing drops
    the Process's arguments in the parent right after start()."""
    lk = shmlot.Lock(lot=lot)
    p = FORK.Process(target=_hold_and_report, args=(lk, held, go, out))
    p.start()
    return p, lk._place.index


def test_fork_child_keeps_the_object_its_parent_dropped(make_lot):
    """The parent's references go right after start(); the child's own keep the record: new
    objects do not reuse it (so creating them does not zero the child's lock word), and the
    child's lock is still held when it looks."""
    lot = make_lot(objects=2)
    held, go, out = FORK.Event(), FORK.Event(), FORK.Queue()
    p, index = _start_holder(lot, held, go, out)
    gc.collect()
    assert held.wait(20)
    made = []
    for _ in range(2):
        try:
            made.append(shmlot.Event(lot=lot))
        except shmlot.LotFullError:
            pass
    assert index not in [e._place.index for e in made]
    go.set()
    assert out.get(timeout=20) is True  # still held: nothing reset the child's word
    p.join(20)
    assert p.exitcode == 0
    del made
    gc.collect()
    wait_until(lambda: used(lot) == 0, 10, "every record freed once the child has exited")


def test_os_fork_daemon_outlives_its_parent(make_lot):
    """An os.fork() daemon holds a Lock its parent made; the parent exits normally (its exit
    hook gives its references back): the record lives on for the daemon. Its handle still
    resolves in another process, the lock is still held by the daemon, and the only record of
    the lot is not handed to a new object."""
    lot = make_lot(objects=1)
    from helpers.processes import start_python
    proc = start_python("""
        import os, pickle, sys, time, shmlot
        lot = shmlot.ParkingLot.attach(sys.argv[1])
        lk = shmlot.Lock(lot=lot)
        parent = os.getpid()
        if os.fork() == 0:
            lk.acquire()
            while os.getppid() == parent:  # until the parent has exited
                time.sleep(0.01)
            print(pickle.dumps(lk).hex(), flush=True)
            sys.stdin.readline()
            print("locked" if lk.locked() else "unlocked", flush=True)
            lk.release()
            sys.exit(0)
        sys.exit(0)  # a normal exit: the exit hooks give the parent's references back
    """, lot.name)
    line = proc.stdout.readline()
    assert line.strip(), proc.stderr.read()
    lk = pickle.loads(bytes.fromhex(line.strip()))  # ObjectGoneError if the record was freed
    assert lk.locked()
    with pytest.raises(shmlot.LotFullError):
        shmlot.Event(lot=lot)  # the one record is the daemon's lock's
    proc.stdin.write("go\n")
    proc.stdin.flush()
    assert proc.stdout.readline().strip() == "locked"
    assert proc.stdout.read() == ""  # EOF: the daemon has exited
    del lk
    gc.collect()
    wait_until(lambda: used(lot) == 0, 10, "the record freed once the daemon has exited")


# ---- reference tracking never lapses ------------------------------------------------------------

def test_references_of_killed_processes_beyond_the_table_are_taken_back(make_lot):
    """A lot whose hold table has room for 8 references (holds=16): 4 Events held here, and
    one killed process after another taking its own references to all 4 (at fork and by
    unpickling). Each newcomer finds the table full of the dead one's entries and takes them
    back; none of its references go untracked, so once we drop ours and reap, every record is
    freed (before: from the second process on, references silently went untracked and the 4
    records leaked for good)."""
    from test_placement import _killed_holder_of
    lot = make_lot(holds=16, objects=8)
    events = [shmlot.Event(lot=lot) for _ in range(4)]
    for _ in range(4):
        _killed_holder_of(events)
    del events
    gc.collect()
    lot.reap()
    assert used(lot) == 0


def _reference_both(lock, pickled_event, ready, go):
    event = pickle.loads(pickled_event)  # LotFullError if this process's reference has no entry
    ready.release()
    go.wait(60)
    assert lock is not None and event is not None


def test_a_hundred_processes_reference_one_object(make_lot):
    """One Lock inherited by 100 fork children and one Event unpickled in each: every child
    records its own reference in a lot of the default hold table (4,096 entries for references).
    Before, a reference's place in the table was hashed from the object alone, so all processes
    referencing one object probed the same 64 entries: the 65th child's inherited reference went
    untracked (a RuntimeWarning) and its unpickling raised LotFullError."""
    lot = make_lot()
    lock, event = shmlot.Lock(lot=lot), shmlot.Event(lot=lot)
    ready, go = FORK.Semaphore(0), FORK.Event()
    procs = [FORK.Process(target=_reference_both, args=(lock, pickle.dumps(event), ready, go))
             for _ in range(100)]
    try:
        for p in procs:
            p.start()
        deadline = time.monotonic() + 30
        started = sum(ready.acquire(timeout=max(0.0, deadline - time.monotonic()))
                      for _ in procs)
        assert started == len(procs), [p.exitcode for p in procs if p.exitcode is not None]
        refs = {o.index: o.refs for o in snapshot(lot, processes=False).objects}
        # each child: the inherited lock; the inherited event and the one it unpickled
        assert refs[lock._place.index] == 1 + len(procs)
        assert refs[event._place.index] == 1 + 2 * len(procs)
    finally:
        go.set()
        for p in procs:
            p.join(30)
    assert [p.exitcode for p in procs] == [0] * len(procs)
    del lock, event
    gc.collect()
    wait_until(lambda: used(lot) == 0, 20, "both records freed once every process let go")


def test_taking_a_reference_beyond_the_table_raises_lot_full(make_lot):
    """Living processes hold every entry for references: taking one more (unpickling, creating)
    raises LotFullError saying so, and takes nothing; once a holder exits, it works again."""
    lot = make_lot(holds=16, objects=8)
    events = [shmlot.Event(lot=lot) for _ in range(4)]  # 4 entries here
    from helpers.processes import start_python
    holder = start_python("""
        import pickle, sys
        keep = pickle.loads(bytes.fromhex(sys.stdin.readline()))
        print("holding", flush=True)
        sys.stdin.readline()
    """)
    holder.stdin.write(pickle.dumps(events).hex() + "\n")
    holder.stdin.flush()
    assert holder.stdout.readline().strip() == "holding"  # 8 entries: full
    refs = [o.refs for o in snapshot(lot, processes=False).objects]
    r = run_python(f"""
        import pickle, shmlot
        try:
            pickle.loads(bytes.fromhex({pickle.dumps(events[0]).hex()!r}))
        except shmlot.LotFullError as exc:
            print("full:", exc)
    """)
    assert r.stdout.startswith("full:") and "hold table full" in r.stdout, r.stdout + r.stderr
    with pytest.raises(shmlot.LotFullError, match="more holds"):
        shmlot.Lock(lot=lot)  # our own 5th record: a 9th entry
    assert [o.refs for o in snapshot(lot, processes=False).objects] == refs
    holder.stdin.write("done\n")
    holder.stdin.flush()
    holder.wait(20)
    lk = shmlot.Lock(lot=lot)  # the holder gave its references back at exit
    del lk, events
    gc.collect()
    assert used(lot) == 0
