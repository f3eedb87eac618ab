"""One Condition.wait: the C CondWaiter serves both sleep backends (the semaphore backend's
sleep and post go through its waiter object), with the same results: notified, timed out, an
RLock's recursion count restored, a handler's exception propagated with the lock held."""
import signal
import threading
import time

import pytest

import shmlot
from shmlot import _fast
from shmlot.snapshot import snapshot

pytestmark = pytest.mark.timeout(60)


def test_wait_is_the_c_waiter_on_every_backend(lot):
    cond = shmlot.Condition(lot=lot)
    assert type(cond.wait) is _fast.CondWaiter
    with cond:
        t0 = time.monotonic()
        assert cond.wait(0.05) is False
        assert time.monotonic() - t0 >= 0.04


def test_notify_all_wakes_every_waiter_with_its_rlock_count(lot):
    cond = shmlot.Condition(shmlot.RLock(lot=lot), lot=lot)
    out = []

    def waiter():
        with cond:
            with cond:  # count 2 across the wait
                r = cond.wait(10)
                out.append((r, cond._lock._count()))

    threads = [threading.Thread(target=waiter) for _ in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while len(snapshot(lot).parked) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    with cond:
        cond.notify_all()
    for t in threads:
        t.join(10)
    assert out == [(True, 2)] * 4


def test_a_handler_exception_leaves_with_the_lock_held(lot):
    cond = shmlot.Condition(lot=lot)

    class Stop(Exception):
        pass

    def handler(signum, frame):
        raise Stop

    old = signal.signal(signal.SIGALRM, handler)
    try:
        with cond:
            signal.setitimer(signal.ITIMER_REAL, 0.1)
            with pytest.raises(Stop):
                cond.wait(10)
            assert cond._is_owned()
        assert not snapshot(lot).parked
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
