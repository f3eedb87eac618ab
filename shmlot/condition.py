"""``Condition``, as in ``threading``, across processes, after parking_lot's Condvar.

A waiter is queued on the condition's key and the lock is released in the same core call
(``_fast.CondWaiter``), so no notify can be missed. ``notify`` moves waiters onto the lock's
queue with ``unpark_requeue`` while the lock is held (``notify_all`` with one core call that does
the same for all of them), instead of waking them to fight for it: each then gets the lock when
it is released, usually by direct hand-off. Dead waiters are dropped by the lot (their process no
longer exists), so they never absorb a notification.

Record layout (named/anonymous): bytes 0-15 the RLock created with the condition (when no lock is
given; ``RLock.on_place``); bytes 16-23 are never written: waiters park on their key.
"""
import time

from . import _engine as _e
from . import _placement as _pl
from . import kinds
from . import locks as _locks
from ._engine import LOCKED, PARKED, RLOCK_SIZE
from .errors import OwnerDiedError
from ._results import RequeueOp

__all__ = ["Condition"]

CV_OFFSET = RLOCK_SIZE  # waiters park on the key of the word after the record's RLock


class Condition:
    """``threading.Condition(lock=None)``. ``lock`` must be a shmlot ``Lock`` or ``RLock``;
    without one, an ``RLock`` is created with the condition (so a named condition carries its
    lock: ``Condition(name="jobs")`` in any process is the same condition and the same lock)."""
    SIZE = 24

    def __init__(self, lock=None, *, name=None, lot=None):
        if lock is not None and not isinstance(lock, (_locks.Lock, _locks.RLock)):
            raise TypeError("Condition needs a shmlot Lock or RLock (a threading or "
                            f"multiprocessing lock cannot be shared): got {type(lock).__name__}")
        if lock is not None:
            if lot is None:
                lot = lock._place.lot
            elif not _e.same_lot(lot, lock._place.lot):
                # its waiters move onto the lock's queue, which is in the lock's lot
                raise ValueError("a Condition must be in the same lot as its lock")
        place = _pl.new_place(kinds.CONDITION, name, lot)
        if lock is None:
            lock = _locks.RLock.on_place(place)  # the record's first 16 bytes
        self._bind(place, lock)

    def _bind(self, place, lock):
        self._place = place
        self._lock = lock
        self._rlock = isinstance(lock, _locks.RLock)
        self._cv_key = place.lot.key_at(place.offset + CV_OFFSET) if place.index is not None \
            else (place.key + CV_OFFSET) & 0xFFFFFFFFFFFFFFFF
        # Condition.wait as one C call (see _native/fast/condwait.c); the instance attribute
        # shadows the method below, saving a Python frame per wait
        self._fast_wait = self.wait = _e.cond_waiter(place.lot, self._cv_key, lock._lockword,
                                                     lock, _fast_wait_slow)
        self.acquire = lock.acquire
        self.release = lock.release
        # threading.Condition exports its lock's protocol methods too
        self._release_save = lock._release_save
        self._acquire_restore = lock._acquire_restore

    @property
    def key(self):
        """The key waiters park on."""
        return self._cv_key

    @property
    def name(self):
        return self._place.name

    def __reduce__(self):
        own_lock = getattr(self._lock, "_keepalive", None) is self._place
        return (_rebuild, (self._place.reduce_args(), None if own_lock else self._lock))

    def __enter__(self):
        # the lock's own __enter__, but with the warning naming the caller's `with` statement
        try:
            return self._lock.acquire()
        except OwnerDiedError as exc:
            _locks.warn_owner_died(exc, self._lock._release_handed_off)
            return True

    def __exit__(self, *exc):
        return self._lock.__exit__(*exc)

    def __repr__(self):
        return f"<shmlot.Condition({self._lock!r})>"

    def _is_owned(self):
        return self._lock._is_owned()

    # -- waiting --

    def wait(self, timeout=None):
        """Release the lock, wait for a notify (or ``timeout`` seconds), re-acquire the lock.
        Returns False if it timed out before a notify. As in threading, the lock is held again on
        return, also when an exception propagates (OwnerDiedError included: the lock's holder
        died, and the lock is now held by the caller).

        Each Condition has this as a C callable on its instance (``_fast.CondWaiter``, on
        either sleep backend)."""
        return self._fast_wait(timeout)

    def wait_for(self, predicate, timeout=None):
        """threading.Condition.wait_for: wait until ``predicate()`` is true."""
        endtime = None
        waittime = timeout
        result = predicate()
        while not result:
            if waittime is not None:
                if endtime is None:
                    endtime = time.monotonic() + waittime
                else:
                    waittime = endtime - time.monotonic()
                    if waittime <= 0:
                        break
            self.wait(waittime)
            result = predicate()
        return result

    # -- notifying --

    def _mark_lock_parked_if_locked(self):
        lock = self._lock
        word = lock._word()
        while word & LOCKED:
            ok, word = lock._cas_word(word, word | PARKED)
            if ok:
                return True
        return False

    def notify(self, n=1):
        """Wake up to ``n`` waiters (moving them onto the lock's queue while it is held)."""
        if not self._is_owned():
            raise RuntimeError("cannot notify on un-acquired lock")
        lot = self._place.lot
        lock_key = self._lock._place.key
        for _ in range(n):
            def validate():
                if self._mark_lock_parked_if_locked():
                    return RequeueOp.REQUEUE_ONE
                return RequeueOp.UNPARK_ONE

            r = lot.unpark_requeue(self._cv_key, lock_key, validate)
            if not r.have_more_threads:
                break

    def notify_all(self):
        """Wake every waiter: all move to the lock's queue in one step."""
        if not self._is_owned():
            raise RuntimeError("cannot notify on un-acquired lock")
        # One core call, no Python callback: PARKED on the held lock and every waiter moved.
        if _e.cond_notify_all(self._place.lot, self._cv_key, self._lock._lockword) is not None:
            return

        # the lock is not LOCKED after all: wake one waiter, move the rest
        def validate():
            if self._mark_lock_parked_if_locked():
                return RequeueOp.REQUEUE_ALL
            return RequeueOp.UNPARK_ONE_REQUEUE_REST

        def callback(op, result):
            if op == RequeueOp.UNPARK_ONE_REQUEUE_REST and result.requeued_threads:
                word = self._lock._word()
                while not word & PARKED:
                    ok, word = self._lock._cas_word(word, word | PARKED)
                    if ok:
                        break
            return 0

        self._place.lot.unpark_requeue(self._cv_key, self._lock._place.key, validate, callback)

    notifyAll = notify_all


def _full_backoff(lock, lot, deadline):
    """No slot to wait in (never queued, the lock still held). The primitives do not raise
    LotFullError: back off with the lock released (whoever would notify us, or free a slot, may
    need it), and take it back; the caller returns as from a spurious wake-up."""
    state = lock._release_save()
    try:
        _e.full_backoff(lot, deadline)
    finally:
        lock._acquire_restore(state)


def _fast_wait_slow(waiter, code, timeout):
    """What a CondWaiter's core error code means (the lock is held again when it calls;
    ``timeout`` is the caller's argument, already checked)."""
    if code == _e.ETIMEDOUT:
        return False  # the bucket lock stayed busy past the deadline; never queued
    if code == _e.EFULL:
        _e.reap_for_slot(waiter.lot)  # for the next wait
        _full_backoff(waiter.lock, waiter.lot, _e.wait_deadline(timeout))
        return True
    _e.check(code, "wait")
    raise AssertionError(f"CondWaiter: unexpected code {code}")


def _rebuild(place_args, lock):
    obj = Condition.__new__(Condition)
    place = _pl.rebuild_place(place_args)
    obj._bind(place, lock if lock is not None else _locks.RLock.on_place(place))
    return obj
