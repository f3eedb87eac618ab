"""``with lock:`` after a dead owner: the lock is taken over, the death is reported once by
``OwnerDiedWarning``, the body runs, and ``__exit__`` releases it; a warning turned into an
exception releases the lock before it propagates. So a ``with`` never leaves its thread holding a
lock, and the explicit ``acquire()`` keeps raising ``OwnerDiedError`` with the lock held.

Real processes, real SIGKILL: each dead owner is a forked child killed while it holds the lock.
"""
import multiprocessing
import os
import sys
import time
import warnings

import pytest

import shmlot

from helpers.kills import kill_and_reap


pytestmark = pytest.mark.timeout(90)

FORK = multiprocessing.get_context("fork")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KINDS = ("Lock", "RLock", "Condition", "RWLock")


def make(kind):
    return getattr(shmlot, kind)()


def held(obj):
    if isinstance(obj, shmlot.RWLock):
        return obj._words[0].load() & shmlot.locks.LOCKED != 0
    lock = obj._lock if isinstance(obj, shmlot.Condition) else obj
    return lock.locked()


def enter(obj):
    return obj.write() if isinstance(obj, shmlot.RWLock) else obj


def _hold(obj, ready):
    if isinstance(obj, shmlot.RWLock):
        obj.acquire_write()
    else:
        obj.acquire()
        if not isinstance(obj, shmlot.Lock):
            obj.acquire()  # recursion count 2: the taker must start again at 1
    ready.set()
    time.sleep(120)


def kill_holder(obj):
    """A forked child takes ``obj`` and is SIGKILLed while holding it."""
    ready = FORK.Event()
    p = FORK.Process(target=_hold, args=(obj, ready), daemon=True)
    p.start()
    assert ready.wait(30)
    kill_and_reap(p)
    assert held(obj)


@pytest.mark.parametrize("kind", KINDS)
def test_with_takes_over_warns_once_and_releases(default_lot, kind):
    obj = make(kind)
    kill_holder(obj)
    ran = []
    with pytest.warns(shmlot.OwnerDiedWarning, match="died") as record:
        with enter(obj):
            ran.append(held(obj))
    assert ran == [True]
    assert len([w for w in record if w.category is shmlot.OwnerDiedWarning]) == 1
    assert record[0].filename == __file__  # points at the with statement
    assert not held(obj)
    # the death was reported once: the next with is an ordinary one
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with enter(obj):
            assert held(obj)
        with enter(obj):
            pass
    assert not held(obj)


@pytest.mark.parametrize("kind", KINDS)
def test_warning_as_error_leaves_the_lock_released(default_lot, kind):
    obj = make(kind)
    kill_holder(obj)
    ran = []
    with warnings.catch_warnings():
        warnings.simplefilter("error", shmlot.OwnerDiedWarning)
        with pytest.raises(shmlot.OwnerDiedWarning):
            with enter(obj):
                ran.append(True)
    assert ran == []
    assert not held(obj)
    with enter(obj):  # usable at once, by this thread too
        pass


@pytest.mark.parametrize("kind", ("Lock", "RLock"))
def test_explicit_acquire_still_raises_with_the_lock_held(default_lot, kind):
    obj = make(kind)
    kill_holder(obj)
    with pytest.raises(shmlot.OwnerDiedError):
        obj.acquire()
    assert obj._is_owned()
    obj.release()
    assert not obj.locked()


def test_rwlock_read_after_dead_writer(default_lot):
    rw = shmlot.RWLock()
    kill_holder(rw)
    with pytest.warns(shmlot.OwnerDiedWarning):
        with rw.read():
            assert rw._my_reads() == 1
    assert rw._words[0].load() == 0
    with rw.write():
        pass


@pytest.mark.timeout(240)
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_pool_example_survives_workers_killed_holding_the_lock(default_lot, method):
    """pool_lock.py's tasks use `with lock:`; workers are SIGKILLed while they hold it, and
    every task submitted afterwards completes (before the fix the next worker's __enter__ raised
    with the lock held, and it deadlocked on itself at its next `with lock:`)."""
    sys.path.insert(0, os.path.join(ROOT, "tools", "examples"))
    try:
        import pool_lock
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", shmlot.OwnerDiedWarning)
            assert pool_lock.main(method, kills=3, workers=3, per_task=200, timeout=90) == 0
    finally:
        sys.path.remove(os.path.join(ROOT, "tools", "examples"))
