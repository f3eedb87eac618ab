"""shmlot.get_context(): multiprocessing's call forms and reprs on shmlot's locks, and the
context's Queue, JoinableQueue, SimpleQueue, Value, Array and Pool built on them. (CPython's own
multiprocessing tests against the context are in test_mp_context.py.)"""
import multiprocessing
import threading
import time
import warnings

import pytest

import shmlot
from shmlot import context as shctx

from helpers.kills import kill_and_reap
from helpers.waiting import raised_in_thread


pytestmark = pytest.mark.timeout(120)


def test_context_classes_and_start_methods(default_lot):
    for method in ("fork", "spawn", "forkserver"):
        ctx = shmlot.get_context(method)
        assert isinstance(ctx, type(multiprocessing.get_context(method)))
        assert ctx.get_start_method() == method
        assert ctx.get_context() is ctx
        assert shmlot.get_context(method) is ctx
        assert isinstance(ctx.Lock(), shmlot.Lock)
        assert isinstance(ctx.RLock(), shmlot.RLock)
        assert isinstance(ctx.Semaphore(), shmlot.Semaphore)
        assert isinstance(ctx.BoundedSemaphore(), shmlot.BoundedSemaphore)
    default = shmlot.get_context()
    assert default.get_start_method() == multiprocessing.get_context().get_start_method()
    with pytest.raises(ValueError):
        shmlot.get_context("thread")


def test_lot_argument(default_lot):
    ctx = shmlot.get_context("fork", lot=default_lot)
    # a handle of its own on the same lot
    assert ctx.Lock()._place.lot._lot_id == default_lot._lot_id
    assert ctx.get_context("spawn")._lot is default_lot


def test_multiprocessing_acquire_forms(default_lot):
    ctx = shmlot.get_context("fork")
    for lock in (ctx.Lock(), ctx.RLock()):
        assert lock.acquire(block=True, timeout=None) is True
        held = threading.Event()
        got = []

        def other():
            got.append(lock.acquire(False, 0.1))      # timeout ignored, no ValueError
            t = time.monotonic()
            got.append(lock.acquire(True, 0.05))
            got.append(time.monotonic() - t >= 0.04)
            got.append(lock.acquire(True, -1))        # negative: 0
            got.append(lock.acquire(timeout=0))
            held.set()

        th = threading.Thread(target=other)
        th.start()
        th.join(30)
        assert held.is_set() and got == [False, False, True, False, False]
        lock.release()
    # the threading-exact classes keep threading's rules
    with pytest.raises(ValueError):
        shmlot.Lock().acquire(False, 0.1)


def test_release_errors_and_reprs(default_lot):
    ctx = shmlot.get_context("fork")
    lock = ctx.Lock()
    assert repr(lock) == "<Lock(owner=None)>"
    lock.acquire()
    assert repr(lock) == "<Lock(owner=MainProcess)>"
    out = []
    th = threading.Thread(target=lambda: out.append(repr(lock)), name="T1")
    th.start()
    th.join()
    assert out == ["<Lock(owner=SomeOtherThread)>"]
    th = threading.Thread(target=lock.release)  # any thread may release a Lock
    th.start()
    th.join()
    assert not lock.locked()
    with pytest.raises(ValueError, match="released too many times"):
        lock.release()

    rlock = ctx.RLock()
    assert repr(rlock) == "<RLock(None, 0)>"
    rlock.acquire()
    rlock.acquire()
    assert repr(rlock) == "<RLock(MainProcess, 2)>"
    assert isinstance(raised_in_thread(rlock.release), AssertionError)
    rlock.release()
    rlock.release()

    sem = ctx.Semaphore(2)
    assert repr(sem) == "<Semaphore(value=2)>" and sem.get_value() == 2
    assert sem.acquire(False, 5) is True and sem.get_value() == 1
    bsem = ctx.BoundedSemaphore(1)
    assert repr(bsem) == "<BoundedSemaphore(value=1, maxvalue=1)>"
    with pytest.raises(ValueError, match="released too many times"):
        bsem.release()
    assert repr(ctx.Condition()) == "<Condition(<RLock(None, 0)>, 0)>"


def test_queues_values_and_pool_use_shmlot_locks(default_lot):
    ctx = shmlot.get_context("fork")
    q, jq, sq = ctx.Queue(2), ctx.JoinableQueue(), ctx.SimpleQueue()
    assert isinstance(q._rlock, shmlot.Lock) and isinstance(q._sem, shmlot.BoundedSemaphore)
    assert isinstance(jq._unfinished_tasks, shmlot.Semaphore)
    assert isinstance(sq._rlock, shmlot.Lock) and isinstance(sq._wlock, shmlot.Lock)
    assert isinstance(ctx.Value("i", 1).get_lock(), shmlot.RLock)
    assert isinstance(ctx.Array("i", 3).get_lock(), shmlot.RLock)
    q.put(1)
    assert q.qsize() == 1 and q.get(timeout=10) == 1
    jq.put(1)
    jq.get(timeout=10)
    jq.task_done()
    jq.join()
    with ctx.Pool(2) as pool:
        assert isinstance(pool._inqueue._rlock, shmlot.Lock)
        assert pool.map(abs, range(-5, 0)) == [5, 4, 3, 2, 1]


def _hold(lock, ready):
    lock.acquire()
    ready.set()
    time.sleep(120)


@pytest.mark.parametrize("kind", ["Lock", "RLock"])
def test_dead_holder_is_a_warning_for_every_acquire(default_lot, kind):
    ctx = shmlot.get_context("fork")
    lock = getattr(ctx, kind)()
    ready = ctx.Event()
    p = ctx.Process(target=_hold, args=(lock, ready), daemon=True)
    p.start()
    assert ready.wait(30)
    kill_and_reap(p)
    with pytest.warns(shmlot.OwnerDiedWarning):
        assert lock.acquire(True, 10) is True
    assert lock._is_owned()
    lock.release()
    assert not lock.locked()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with lock:
            pass


def test_flavours_pickle_as_themselves(default_lot):
    import pickle
    ctx = shmlot.get_context("fork")
    for obj in (ctx.Lock(), ctx.RLock(), ctx.Semaphore(3), ctx.BoundedSemaphore(2)):
        copy = pickle.loads(pickle.dumps(obj))
        assert type(copy) is type(obj) and copy.key == obj.key
    assert shctx.Lock.__mro__.index(shmlot.Lock) > 0
