"""Where shmlot's primitives must behave exactly as ``threading``'s: negative and bool timeouts
(Event.wait, Semaphore.acquire, Condition.wait on both waiter backends, Barrier.wait), checked
against threading itself in the same interpreter, and a Semaphore whose 64-bit value would
overflow."""
import threading
import time

import pytest

import shmlot


pytestmark = pytest.mark.timeout(60)

# Timeouts that threading takes: negative ones do not wait, bools are 0 and 1 second.
TIMEOUTS = [-1, -0.5, -1e9, False, True, 0, 0.01]


def outcome(fn, *args, **kwargs):
    """What a call returns or raises (type only), and whether it came back quickly."""
    t0 = time.monotonic()
    try:
        r = ("returned", fn(*args, **kwargs))
    except Exception as exc:  # noqa: BLE001 - compared with threading's
        r = ("raised", type(exc).__name__)
    return r, time.monotonic() - t0


def same_as_threading(ours, theirs, *args, **kwargs):
    (r1, t1), (r2, t2) = outcome(ours, *args, **kwargs), outcome(theirs, *args, **kwargs)
    assert r1 == r2, (args, kwargs, r1, r2)
    assert abs(t1 - t2) < 0.5, (args, kwargs, t1, t2)


@pytest.mark.parametrize("timeout", TIMEOUTS)
def test_event_wait(default_lot, timeout):
    same_as_threading(shmlot.Event().wait, threading.Event().wait, timeout)


@pytest.mark.parametrize("timeout", TIMEOUTS)
def test_semaphore_acquire(default_lot, timeout):
    same_as_threading(shmlot.Semaphore(0).acquire, threading.Semaphore(0).acquire,
                      timeout=timeout)
    same_as_threading(shmlot.BoundedSemaphore(0).acquire,
                      threading.BoundedSemaphore(0).acquire, True, timeout)


@pytest.mark.parametrize("timeout", TIMEOUTS)
def test_condition_wait(default_lot, timeout):
    ours, theirs = shmlot.Condition(), threading.Condition()
    with ours, theirs:
        same_as_threading(ours.wait, theirs.wait, timeout)
        same_as_threading(ours.wait_for, theirs.wait_for, lambda: False, timeout)
        assert ours._is_owned()
    # with a plain Lock too (the futex backend's C wait takes the other branch)
    ours = shmlot.Condition(shmlot.Lock())
    theirs = threading.Condition(threading.Lock())
    with ours, theirs:
        same_as_threading(ours.wait, theirs.wait, timeout)


@pytest.mark.parametrize("timeout", TIMEOUTS)
def test_barrier_wait_breaks(default_lot, timeout):
    ours, theirs = shmlot.Barrier(2), threading.Barrier(2)
    same_as_threading(ours.wait, theirs.wait, timeout)
    assert ours.broken and theirs.broken


@pytest.mark.parametrize("timeout", [-1, False])
def test_barrier_default_timeout(default_lot, timeout):
    ours, theirs = shmlot.Barrier(2, timeout=timeout), threading.Barrier(2, timeout=timeout)
    same_as_threading(ours.wait, theirs.wait)
    assert ours.broken and theirs.broken


def test_barrier_last_party_ignores_a_negative_timeout(default_lot):
    b = shmlot.Barrier(1)
    assert b.wait(-1) == 0 and not b.broken


def test_timeouts_of_the_wrong_type_are_refused(default_lot):
    for fn in (shmlot.Event().wait, shmlot.Semaphore(0).acquire, shmlot.Barrier(2).wait):
        with pytest.raises(TypeError):
            fn(timeout="1")
    cv = shmlot.Condition()
    with cv:
        with pytest.raises(TypeError):
            cv.wait("1")


@pytest.mark.parametrize("kind", [shmlot.Semaphore, shmlot.BoundedSemaphore])
def test_release_that_would_overflow_raises_and_changes_nothing(default_lot, kind):
    sem = kind(1)
    if kind is shmlot.BoundedSemaphore:
        with pytest.raises(ValueError):
            sem.release(2**64 - 1)
    else:
        with pytest.raises(ValueError):
            sem.release(2**64 - 1)
        with pytest.raises(ValueError):
            sem.release(2**70)
        sem.release(2**64 - 2)
        assert sem._value() == 2**64 - 1
        with pytest.raises(ValueError):
            sem.release()
        assert sem._value() == 2**64 - 1
        for _ in range(3):
            assert sem.acquire(timeout=0)
        return
    assert sem._value() == 1
    assert sem.acquire(timeout=0) and not sem.acquire(timeout=0)
