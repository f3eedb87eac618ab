"""Where primitives live: named objects (create-or-open, by unrelated
``python -c`` processes too, TypeError for another kind, ``unlink_object``), anonymous objects
(pickled to fork, spawn and forkserver children, Pool and ProcessPoolExecutor initializers and
task arguments, freed with their last handle: a million created and dropped do not exhaust the
lot), and ``Kind.at(buffer, offset)`` in the caller's own shared memory. Both backends.
"""
import concurrent.futures
import gc
import multiprocessing
import os
import pickle
import threading
import time

import pytest

import shmlot

from helpers.kills import kill_and_reap
from helpers.lots import fresh_default_lot, new_lot_name
from helpers.processes import run_python
from helpers.waiting import wait_parked_at_least, wait_until
from shmlot.snapshot import snapshot

pytestmark = pytest.mark.timeout(60)

KINDS = ("Lock", "RLock", "Condition", "Semaphore", "BoundedSemaphore", "Event", "Barrier",
         "RWLock")
CONTEXTS = ("fork", "spawn", "forkserver")


def make(kind, **kw):
    cls = getattr(shmlot, kind)
    if kind == "Barrier":
        return cls(2, **kw)
    if kind in ("Semaphore", "BoundedSemaphore"):
        return cls(1, **kw)
    return cls(**kw)


def used(lot):
    return lot.info()["objects_used"]


# ---- proving that two handles are one object --------------------------------------------------

def prepare(kind, obj):
    """Put ``obj`` in a state that another handle on it must observe (see ``observe``)."""
    if kind in ("Lock", "RLock", "Semaphore", "BoundedSemaphore"):
        obj.acquire()
    elif kind == "Condition":
        obj.acquire()
    elif kind == "Event":
        obj.set()
    elif kind == "RWLock":
        obj.acquire_write()
    elif kind == "Barrier":
        pass  # observed by completing a round with a party here


def observe(kind, obj):
    """Run in another process on another handle: what it sees and does. Returns a string."""
    if kind in ("Lock", "RLock", "Semaphore", "BoundedSemaphore", "Condition"):
        return f"held={not obj.acquire(blocking=False)}"
    if kind == "Event":
        return f"set={obj.is_set()}"
    if kind == "RWLock":
        return f"held={not obj.acquire_read(blocking=False)}"
    if kind == "Barrier":
        return f"passed={obj.wait(30) in (0, 1)}"
    raise AssertionError(kind)


EXPECTED = {"Event": "set=True", "Barrier": "passed=True"}


def expected(kind):
    return EXPECTED.get(kind, "held=True")


def finish(kind, obj):
    if kind in ("Lock", "RLock", "Semaphore", "BoundedSemaphore", "Condition"):
        obj.release()
    elif kind == "RWLock":
        obj.release_write()


class BarrierPartner(threading.Thread):
    """The party in this process for observe(Barrier) in a child."""

    def __init__(self, b):
        super().__init__(daemon=True)
        self.b, self.out = b, None
        self.start()

    def run(self):
        self.out = self.b.wait(30)


# ---- named -------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_named_create_or_open_and_unrelated_process(default_lot, kind):
    """``Kind(name=...)`` twice here is one object; a ``python -c`` process opening the name sees
    its state; opening the name as every other kind raises TypeError."""
    name = f"pl-{kind}-{os.getpid()}"
    a = make(kind, name=name)
    b = make(kind, name=name)
    assert a.key == b.key and a.name == name
    assert a._place.created and not b._place.created
    prepare(kind, a)
    partner = BarrierPartner(a) if kind == "Barrier" else None
    ctor = {"Barrier": "shmlot.Barrier(2, name=N)",
            "Semaphore": "shmlot.Semaphore(1, name=N)",
            "BoundedSemaphore": "shmlot.BoundedSemaphore(1, name=N)"}.get(
                kind, f"shmlot.{kind}(name=N)")
    r = run_python(f"""
        import shmlot, sys
        sys.path.insert(0, "tests")
        from test_placement import observe
        N = {name!r}
        print(observe({kind!r}, {ctor}))
    """, env={"SHMLOT_LOT": default_lot.name, "SHMLOT_WAITER": default_lot.waiter})
    assert r.stdout.strip() == expected(kind)
    if partner:
        partner.join(10)
        assert partner.out in (0, 1)
    finish(kind, a)
    for other in KINDS:
        if other != kind:
            with pytest.raises(TypeError):
                make(other, name=name)
    shmlot.unlink_object(name)


def test_unlink_object(default_lot):
    name = f"pl-unlink-{os.getpid()}"
    ev = shmlot.Event(name=name)
    ev.set()
    shmlot.unlink_object(name)
    assert ev.is_set()  # handles already open keep working
    fresh = shmlot.Event(name=name)  # a new object under the old name
    assert fresh._place.created and not fresh.is_set()
    assert fresh.key != ev.key
    shmlot.unlink_object(name)
    with pytest.raises(KeyError):
        shmlot.unlink_object(name)
    with pytest.raises(KeyError):
        default_lot.unlink_object("never-made")
    # the unlinked record is freed with its last handle
    base = used(default_lot)
    del ev, fresh
    gc.collect()
    assert used(default_lot) == base - 2


def test_named_in_other_lot(default_lot, waiter):
    """``lot=`` chooses the lot: the same name in two lots is two objects."""
    lot2 = shmlot.ParkingLot.create(new_lot_name("pl-other-"), waiter=waiter)
    try:
        a = shmlot.Lock(name="same")
        b = shmlot.Lock(name="same", lot=lot2)
        assert b._place.lot is lot2._bound() and a.key != b.key
        a.acquire()
        assert b.acquire(blocking=False)
        b.release()
        a.release()
        del b
    finally:
        lot2.unlink()
    shmlot.unlink_object("same")


# ---- anonymous: pickled to children ------------------------------------------------------------

def _child_observe(kind, obj, q):
    q.put(observe(kind, obj))


@pytest.mark.parametrize("method", CONTEXTS)
def test_anonymous_to_children(default_lot, method):
    """Every kind, anonymous, handed to a child started with ``method`` (pickled for spawn and
    forkserver): the child sees the parent's state. Records are freed once the children are
    gone and the parent drops its handles."""
    ctx = multiprocessing.get_context(method)
    base = used(default_lot)
    objs = {kind: make(kind) for kind in KINDS}
    assert used(default_lot) == base + len(KINDS)
    q = ctx.Queue()
    for kind, obj in objs.items():
        prepare(kind, obj)
    partner = BarrierPartner(objs["Barrier"])
    procs = [ctx.Process(target=_child_observe, args=(kind, obj, q))
             for kind, obj in objs.items()]
    for p in procs:
        p.start()
    results = sorted(q.get(timeout=30) for _ in procs)
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert results == sorted(expected(k) for k in KINDS)
    partner.join(10)
    for kind, obj in objs.items():
        finish(kind, obj)
    del objs, partner, procs, obj
    gc.collect()
    wait_until(lambda: used(default_lot) == base, message="records freed")


def test_pickle_round_trip_in_process(default_lot):
    """A pickled handle is one more reference: the record lives until the last handle goes."""
    base = used(default_lot)
    lock = shmlot.Lock()
    data = pickle.dumps(lock)
    copy = pickle.loads(data)
    assert copy.key == lock.key
    lock.acquire()
    assert copy.locked()
    lock.release()
    del lock
    gc.collect()
    assert used(default_lot) == base + 1  # the copy keeps it
    assert copy.acquire(blocking=False)
    copy.release()
    del copy
    gc.collect()
    assert used(default_lot) == base
    with pytest.raises(shmlot.ObjectGoneError):
        pickle.loads(data)  # its object is gone: refused, not silently bound to nothing


def test_fork_child_dropping_inherited_handle_keeps_parent_object(default_lot):
    """A fork child that drops an inherited handle (and exits through the normal interpreter
    exit, which runs finalizers) must not free the parent's object."""
    base = used(default_lot)
    lock = shmlot.Lock()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            del lock
            gc.collect()
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert used(default_lot) == base + 1
    # the same through multiprocessing's fork, with a child that exits via sys.exit
    ctx = multiprocessing.get_context("fork")
    p = ctx.Process(target=_drop_and_exit, args=(lock,))
    p.start()
    p.join(20)
    assert used(default_lot) == base + 1
    ev = shmlot.Event()  # must not land in the lock's record
    assert ev._place.offset != lock._place.offset
    del lock, ev
    gc.collect()
    assert used(default_lot) == base


def _drop_and_exit(obj):
    import atexit
    import sys
    del obj
    gc.collect()
    atexit._run_exitfuncs()  # what a normal interpreter exit does
    sys.exit(0)


# ---- Pool and ProcessPoolExecutor --------------------------------------------------------------

_worker_state = {}


def _init(lock, sem, ev):
    _worker_state.update(lock=lock, sem=sem, ev=ev)


def _task_with_initargs(i):
    with _worker_state["lock"]:
        _worker_state["sem"].release()
    return i


def _task_with_args(lock, ev, i):
    with lock:
        pass
    return (i, ev.is_set())


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_pool_initializer_and_task_args(default_lot, method):
    ctx = multiprocessing.get_context(method)
    base = used(default_lot)
    lock, sem, ev = shmlot.Lock(), shmlot.Semaphore(0), shmlot.Event()
    ev.set()
    with ctx.Pool(2, initializer=_init, initargs=(lock, sem, ev)) as pool:
        assert sorted(pool.map(_task_with_initargs, range(20))) == list(range(20))
        assert sem._value() == 20
        out = pool.starmap(_task_with_args, [(lock, ev, i) for i in range(10)])
        assert out == [(i, True) for i in range(10)]
        lock.acquire()  # held here: a task must wait for it
        res = pool.apply_async(_task_with_args, (lock, ev, 99))
        with pytest.raises(multiprocessing.TimeoutError):
            res.get(timeout=0.2)
        lock.release()
        assert res.get(timeout=20) == (99, True)
        pool.close()
        pool.join()
    del lock, sem, ev, pool, res
    gc.collect()
    wait_until(lambda: used(default_lot) == base, message="records freed after the pool")


def test_process_pool_executor(default_lot):
    ctx = multiprocessing.get_context("spawn")
    lock, sem, ev = shmlot.Lock(), shmlot.Semaphore(0), shmlot.Event()
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=ctx, initializer=_init,
                                                initargs=(lock, sem, ev)) as ex:
        assert sorted(ex.map(_task_with_initargs, range(10))) == list(range(10))
        assert sem._value() == 10
        futs = [ex.submit(_task_with_args, lock, ev, i) for i in range(5)]
        assert [f.result(timeout=30) for f in futs] == [(i, False) for i in range(5)]


# ---- .at(): the caller's shared memory -----------------------------------------------------------

AT_KINDS = ("Lock", "RLock", "RWLock", "Event", "Semaphore")


def test_sizes():
    assert shmlot.Lock.SIZE <= 8
    for kind in AT_KINDS + ("BoundedSemaphore", "Barrier"):
        size = getattr(shmlot, kind).SIZE
        assert size % 8 == 0 and size > 0


@pytest.mark.parametrize("kind", AT_KINDS)
def test_at_zero_bytes_are_initial_state(default_lot, make_shared_memory, kind):
    seg = make_shared_memory(4096)
    cls = getattr(shmlot, kind)
    a = cls.at(seg, 64)
    b = cls.at(seg, 64)  # a second handle on the same bytes
    assert a.key == b.key == shmlot.key_for(seg, 64)
    if kind in ("Lock", "RLock"):
        assert not a.locked()
        assert a.acquire(blocking=False)
        assert not b.acquire(blocking=False) if kind == "Lock" else b._is_owned()
        a.release()
        assert bytes(seg.buf[64:72]) == bytes(8)
    elif kind == "RWLock":
        assert a.acquire_write(blocking=False)
        assert not b.acquire_read(blocking=False)
        a.release_write()
        assert bytes(seg.buf[64:64 + cls.SIZE]) == bytes(cls.SIZE)
    elif kind == "Event":
        assert not a.is_set()
        b.set()
        assert a.wait(0)
        e2 = cls.at(seg, 128, init_value=True)
        assert e2.is_set()
    elif kind == "Semaphore":
        assert not a.acquire(blocking=False)  # zero bytes: value 0
        b.release(2)
        assert a.acquire(blocking=False) and a.acquire(blocking=False)
        s3 = cls.at(seg, 256, init_value=3)
        assert s3._value() == 3
    with pytest.raises(ValueError):
        cls.at(seg, 65)  # misaligned
    with pytest.raises(ValueError):
        cls.at(seg, 4096)  # outside
    with pytest.raises(ValueError):
        cls.at(seg, -8)
    del a, b


def _at_child(obj, q):
    q.put(observe(type(obj).__name__, obj))


@pytest.mark.parametrize("kind", AT_KINDS)
def test_at_pickles_to_spawn_child(default_lot, make_shared_memory, kind):
    """Placed in a SharedMemory, a handle pickles to (segment name, offset): a spawn child maps
    the segment and sees the same object."""
    seg = make_shared_memory(4096)
    kw = {"init_value": 1} if kind == "Semaphore" else {}
    obj = getattr(shmlot, kind).at(seg, 8, **kw)
    prepare(kind, obj)
    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_at_child, args=(obj, q))
    p.start()
    assert q.get(timeout=30) == expected(kind)
    p.join(30)
    assert p.exitcode == 0
    finish(kind, obj)
    del obj


def test_at_plain_buffer(default_lot):
    """A plain writable buffer works in this process (with a key) but cannot be pickled."""
    buf = bytearray(64)
    lock = shmlot.Lock.at(memoryview(buf), 8, key=12345)
    assert lock.key == 12345
    with lock:
        assert buf[8:16] != bytes(8)
    with pytest.raises(TypeError):
        pickle.dumps(lock)
    del lock


def test_at_shared_between_threads_blocks_and_wakes(default_lot, make_shared_memory):
    seg = make_shared_memory(64)
    lock = shmlot.Lock.at(seg, 0)
    lock.acquire()
    out = []
    t = threading.Thread(target=lambda: out.append(shmlot.Lock.at(seg, 0).acquire(timeout=20)))
    t.start()
    wait_parked_at_least(default_lot, lock.key, 1)
    lock.release()
    t.join(20)
    assert out == [True]
    lock.release()  # any thread may release a Lock: the word was taken by the other handle
    del lock


# ---- a million anonymous objects -------------------------------------------------------------

@pytest.mark.timeout(120)
def test_million_anonymous_objects_do_not_exhaust_the_lot():
    """Create and drop 1,000,000 anonymous Locks (the lot holds 4096 records), then a few
    thousand of every other kind: the registry never fills, and ends as it started. One
    backend: the registry does not involve the waiter."""
    with fresh_default_lot("futex") as lot:
        records = lot.info()["objects"]
        base = used(lot)
        t0 = time.monotonic()
        for _ in range(1_000_000):
            shmlot.Lock()
        elapsed = time.monotonic() - t0
        assert used(lot) == base
        for kind in KINDS:
            for _ in range(2 * records):
                make(kind)
        keep = [shmlot.Event() for _ in range(10)]
        assert used(lot) == base + 10
        del keep
        gc.collect()
        assert used(lot) == base
        print(f"1,000,000 Locks in {elapsed:.1f} s")


def _take_handles_then_hang(data, ready):
    """(fork child) Unpickle handles, which takes this process's own references, and wait."""
    keep = pickle.loads(data)  # noqa: F841 (held until killed)
    ready.set()
    time.sleep(120)


def _killed_holder_of(objs):
    """A fork child takes its own references to ``objs`` (by unpickling them) and is SIGKILLed."""
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    p = ctx.Process(target=_take_handles_then_hang, args=(pickle.dumps(objs), ready))
    p.start()
    assert ready.wait(20)
    kill_and_reap(p, timeout=20)


def test_references_of_a_killed_process_are_taken_back(default_lot):
    """A process killed while holding handles to anonymous objects never gives its references
    back; reaping takes them back (each process's references are a counted hold), so the
    records are freed once the living drop theirs; and a full registry takes them back by
    itself before it says it is full."""
    base = used(default_lot)
    locks = [shmlot.Lock() for _ in range(3)]
    _killed_holder_of(locks)
    refs = {o.index: o.refs for o in snapshot(default_lot, processes=False).objects}
    # ours, the child's for the handle it inherited (taken at fork), the one it unpickled
    assert [refs[lk._place.index] for lk in locks] == [3, 3, 3]
    del locks
    gc.collect()
    assert used(default_lot) == base + 3  # the dead child's references keep them
    default_lot.reap()
    assert used(default_lot) == base


def test_full_registry_takes_back_references_of_killed_processes(make_lot):
    """Every record held only by a killed process: creating one more object succeeds, because
    the registry takes those references back before giving up."""
    lot = make_lot(objects=4)
    events = [shmlot.Event(lot=lot) for _ in range(4)]
    _killed_holder_of(events)
    del events
    gc.collect()
    assert lot.info()["objects_used"] == 4
    again = [shmlot.Event(lot=lot) for _ in range(4)]  # would be LotFullError without it
    assert lot.info()["objects_used"] == 4
    del again
    gc.collect()
    assert lot.info()["objects_used"] == 0
