"""The waiting loop shared by the counting primitives (Semaphore, Event, Barrier, RWLock).

Their words hold the state; a separate waiter count says whether anyone may be parked, so the
releasing side skips the lot entirely when nobody waits. No wake-up is lost: a waiter increments
the count *before* parking with a ``validate`` that re-checks its condition under the bucket lock,
and a releaser changes the state *before* reading the count, so either the waiter's validate sees
the new state, or the releaser sees the count and its unpark (which takes the same bucket lock)
finds the waiter queued.
"""
import random
import threading
import time

from ._core import lib
from ._results import PARK_TIMED_OUT
from .errors import LotFullError
import math

from .lot import deadline_after
from .spinwait import SpinWait

__all__ = ["Deadline", "wait_until", "acquire_timeout", "wait_timeout", "park", "full_backoff",
           "full_done"]

FULL_BACKOFF_MIN = 0.0005  # seconds; doubles per consecutive full park, up to FULL_BACKOFF_MAX
FULL_BACKOFF_MAX = 0.05
_full = threading.local()


def park(lot, key, validate, before_sleep, timed_out, park_token, timeout, poll=None, poll_ns=0,
         hint=0, word_ptr=None, word_id=0):
    """``lot._park`` for the primitives, which never raise LotFullError: when
    every slot of the lot is taken, wait a little (``full_backoff``) and return a *timed out*
    result, so that the caller re-checks its condition and parks again. Nothing was queued and
    ``before_sleep`` did not run."""
    try:
        result = lot._park(key, validate, before_sleep, timed_out, park_token, timeout, poll,
                           poll_ns, hint, word_ptr, word_id=word_id)
    except LotFullError:
        full_backoff(lot, timeout)
        return PARK_TIMED_OUT
    _full.n = 0
    return result


def full_done():
    """What was full (a slot, a hold) was found free: the next full wait starts short again."""
    _full.n = 0


def full_backoff(lot, timeout=None):
    """No free slot: count it (counter ``full_waits``) and sleep a randomised, growing interval
    (never past ``timeout`` seconds), so that parked threads get to leave and free theirs."""
    lot._count(lib.SL_C_FULL_WAITS)
    n = getattr(_full, "n", 0)
    _full.n = min(n + 1, 8)
    delay = min(FULL_BACKOFF_MIN * (1 << n), FULL_BACKOFF_MAX) * (0.5 + random.random())
    if timeout is not None:
        delay = min(delay, timeout)
    time.sleep(delay)


def wait_timeout(timeout):
    """threading's rules for the timeout of ``Event.wait``, ``Condition.wait``,
    ``Semaphore.acquire`` and ``Barrier.wait``: None waits for ever; any other number (a bool
    counts as 0 or 1) is seconds, and one that is negative (or NaN) means "do not wait": the
    call returns at once as on a timeout. Anything else raises TypeError."""
    if timeout is None:
        return None
    if not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number or None, not {type(timeout).__name__}")
    if math.isnan(timeout) or timeout < 0:
        return 0.0
    return float(timeout)


class Deadline:
    """A monotonic deadline from a timeout taken by ``wait_timeout``'s rules (None: never)."""
    __slots__ = ("at",)

    def __init__(self, timeout):
        timeout = wait_timeout(timeout)
        self.at = deadline_after(timeout) if timeout is not None else 0

    def remaining(self):
        """Seconds left (None: no deadline)."""
        if not self.at:
            return None
        return max(0.0, (self.at - lib.sl_now_ns()) / 1e9)

    def passed(self):
        return bool(self.at) and lib.sl_now_ns() >= self.at


def acquire_timeout(blocking, timeout):
    """threading's acquire(blocking, timeout=-1) rules; returns the timeout in seconds or None."""
    if not blocking:
        if timeout is not None and timeout != -1:
            raise ValueError("can't specify a timeout for a non-blocking call")
        return 0
    if timeout is None or timeout == -1:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number, not {type(timeout).__name__}")
    if timeout < 0:
        raise ValueError("timeout value must be a non-negative number")
    return timeout


def wait_until(lot, key, try_take, blocked, waiters, deadline, poll=None, poll_ns=200_000_000,
               park_token=0):
    """Spin, then park on ``key`` until ``try_take()`` succeeds or the deadline passes.

    ``try_take()`` attempts the operation (returns a true value on success), ``blocked()`` says
    whether it would still block (checked under the bucket lock as park's validate), ``waiters`` is
    the AtomicU64 waiter count. ``poll()`` runs every ``poll_ns`` while parked (reclaiming what
    dead processes hold); without one, the waiter re-checks ``blocked()`` that often, so a waker
    killed between changing the state and unparking costs at most one interval. Returns
    try_take()'s value, or None when the deadline passed.
    """
    if poll is None:
        def poll():
            return not blocked()

    got = try_take()
    if got:
        return got
    spin = SpinWait()
    while spin.spin():
        got = try_take()
        if got:
            return got
    if deadline.passed():
        return None
    waiters.fetch_add(1)
    try:
        while True:
            got = try_take()
            if got:
                return got
            remaining = deadline.remaining()
            if remaining == 0.0:
                return None
            park(lot, key, blocked, None, None, park_token, remaining, poll, poll_ns)
    finally:
        waiters.fetch_sub(1)
