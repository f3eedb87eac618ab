"""The C fast paths keep the behaviour of the methods they replace: `with lock:` binds
__enter__/__exit__ to recycled objects that keep the lock alive and release it exactly once, and
Event's set/clear/is_set/wait-spin in C keep the flag, the generation and the wake-ups right."""
import gc
import sys
import threading

import pytest

import shmlot
from helpers.waiting import wait_parked, wait_until
from shmlot import _fast


@pytest.mark.parametrize("kind", ["Lock", "RLock"])
def test_with_binding_is_callable_like_a_method(lot, kind):
    lock = getattr(shmlot, kind)(lot=lot)
    enter, exit_ = lock.__enter__, lock.__exit__
    assert enter.__self__ is lock and enter.__name__ == "__enter__"
    assert "__exit__" in repr(exit_)
    assert enter() is True and lock.locked()
    assert exit_(None, None, None) is None and not lock.locked()
    cls = type(lock)
    cls.__enter__(lock)
    cls.__exit__(lock, ValueError, ValueError("x"), None)
    assert not lock.locked()
    with pytest.raises(TypeError):
        lock.__enter__(1)
    with pytest.raises(TypeError):
        lock.__exit__(exc=None)
    with pytest.raises(TypeError):
        _fast.LockCore.__dict__["__enter__"].__get__(3)
    assert cls.__enter__.__objclass__ in (_fast.LockCore, _fast.RLockCore)


def test_with_on_a_temporary_keeps_it_alive(lot):
    # the `with` block holds the only reference to the lock, through its bound __exit__
    with shmlot.Lock(lot=lot) as got:
        gc.collect()
        assert got is True
    # and the binding objects are recycled without leaking references to the lock
    lock = shmlot.Lock(lot=lot)
    before = sys.getrefcount(lock)
    for _ in range(1000):
        with lock:
            pass
    assert sys.getrefcount(lock) == before and not lock.locked()


def test_with_releases_on_exception(lot):
    lock = shmlot.RLock(lot=lot)
    with pytest.raises(KeyError):
        with lock:
            with lock:
                raise KeyError
    assert not lock.locked()


def test_event_c_paths(lot):
    ev = shmlot.Event(lot=lot)
    assert ev.is_set() is False and ev.isSet() is False
    ev.set()
    ev.set()  # setting a set event changes nothing
    gen = ev._words[0].load() & ~1
    assert ev.is_set() and ev.wait() is True and ev.wait(0) is True
    ev.clear()
    assert not ev.is_set() and ev._words[0].load() == gen  # clear keeps the generation
    assert ev.wait(0) is False and ev.wait(0.01) is False
    ev.set()
    assert ev._words[0].load() & ~1 == gen + 2  # each set of an unset event advances it


def test_event_set_wakes_a_parked_waiter_and_a_spinning_one(lot):
    ev = shmlot.Event(lot=lot)
    results = []
    t = threading.Thread(target=lambda: results.append(ev.wait(10)))
    t.start()
    wait_parked(lot, ev.key, 1)   # past the spin: parked, counted in the waiter word
    assert ev._words[1].load() == 1
    ev.set()
    t.join(10)
    assert results == [True] and ev._words[1].load() == 0


def test_event_set_then_clear_still_releases_a_parked_wait(lot):
    # C set() advances the generation and calls _wake_waiters(); the woken wait sees the flag
    # cleared again but the generation moved, and returns True as threading's would
    ev = shmlot.Event(lot=lot)
    results = []
    t = threading.Thread(target=lambda: results.append(ev.wait(10)))
    t.start()
    wait_parked(lot, ev.key, 1)
    ev.set()
    ev.clear()
    t.join(10)
    assert results == [True]
    wait_until(lambda: ev._words[1].load() == 0)
