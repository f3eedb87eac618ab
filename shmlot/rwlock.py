"""``RWLock``: many readers or one writer, across threads and processes.

Words: [0] the state: 0 free; a writer's lock word (owner bits | LOCKED, as in ``Lock``); or
readers << 2 (LOCKED clear). [1] readers that may be parked, [2] writers that may be parked.
Readers park on the key of word 0, writers on the key of word 1.

Fairness: a new reader waits while a writer waits (writers are not starved by a stream of
readers), unless this thread already holds a read share (re-entrant reads cannot deadlock).
A writer's release hands the lock to the readers parked at that moment (the state goes straight from
"written" to "read by n", so no writer barges in between: readers are not starved either); the
last reader out wakes one writer.

Each read share is recorded as a counted hold on the key, so a dead reader's share is reclaimed
(by whoever waits on the lock); a dead writer is found through its lock word, as for ``Lock``, and
the next acquirer gets ``OwnerDiedError``.
"""
import contextlib
import threading

from . import _fast
from . import _placement as _pl
from ._base import Primitive
from ._core import lib
from ._results import FilterOp
from ._waiting import Deadline, acquire_timeout, park
from .errors import OwnerDiedError
from .locks import LOCKED, OWNER_POLL_NS, owner_alive
from .spinwait import SpinWait

__all__ = ["RWLock"]

READER = 4
READ_HOLD = 1 | lib.SL_HOLD_COUNTED
TOKEN_READ_GRANT = 2    # "you may read although writers wait" (the state was not changed for you)
TOKEN_READ_HANDOFF = 3  # "you read now": the releasing writer added your share to the state


_reads = threading.local()


def _unpark_every_reader(_park_token):
    return FilterOp.UNPARK


class RWLock(Primitive):
    """A reader-writer lock; ``name=`` / ``lot=`` / ``.at()`` as for ``Lock``."""
    KIND = _pl.RWLOCK
    WORDS = 3
    SIZE = 24

    def __init__(self, *, name=None, lot=None):
        self._bind(self._new(name, lot))

    @classmethod
    def at(cls, buffer, offset=0, *, lot=None, key=None):
        obj = cls.__new__(cls)
        obj._bind(cls._at_place(buffer, offset, lot, key))
        return obj

    def _bind(self, place):
        super()._bind(place)
        self._wkey = (place.key + 8) & 0xFFFFFFFFFFFFFFFF
        self._rkey = (place.lot.name, place.key)

    # Read shares of the calling thread, per lock (not per handle: two handles on one RWLock,
    # e.g. a named one opened twice, are the same lock for re-entrant reads).
    def _my_reads(self):
        return getattr(_reads, "d", {}).get(self._rkey, 0)

    def _add_my_reads(self, n):
        d = getattr(_reads, "d", None)
        if d is None:
            d = _reads.d = {}
        left = d.get(self._rkey, 0) + n
        if left:
            d[self._rkey] = left
        else:
            d.pop(self._rkey, None)

    # -- dead holders --

    def _reclaim(self):
        """Take back what dead processes hold. Returns True if something changed; raises
        OwnerDiedError (write lock now ours) if the writer died."""
        lot, key = self._place.lot, self._place.key
        state = self._words[0]
        s = state.load()
        if s & LOCKED:
            if owner_alive(s):
                return False
            me = _fast.self_owner_bits() | LOCKED
            ok, _ = state.compare_exchange(s, me)
            if not ok:
                return True
            lot._count(lib.SL_C_OWNER_DEATHS)
            self._dead_writer = _fast.word_owner(s)[:2]
            self._raise_writer_died()
        if s:
            shares = lot._hold_take_dead(key)
            if shares:
                state.fetch_sub(READER * shares)
                self._after_reader_exit(state.load())
                return True
        return False

    def _raise_writer_died(self):
        pid, tid = self._dead_writer
        raise OwnerDiedError(f"the writer of this RWLock (pid {pid}, tid {tid}) died holding it; "
                             "the write lock is now held by the caller: repair, then "
                             "release_write()")

    # -- read side --

    def _try_read(self, granted=False):
        state = self._words[0]
        s = state.load()
        while not s & LOCKED and (granted or self._my_reads() or not self._words[2].load()):
            ok, s = state.compare_exchange(s, s + READER)
            if ok:
                self._took_read()
                return True
        return False

    def _took_read(self):
        """Record a read share this thread now has (counted in the state word)."""
        pid, tid, start = _fast.self_ident()
        self._place.lot._hold_add(self._place.key, pid, tid, start, READ_HOLD)
        self._add_my_reads(1)

    def acquire_read(self, blocking=True, timeout=-1):
        """Take a read share; returns False on timeout / when non-blocking and unavailable."""
        timeout = acquire_timeout(blocking, timeout)
        if self._try_read():
            return True
        if timeout == 0:
            self._reclaim()
            return self._try_read()
        return self._wait(self._place.key, self._words[1], self._read_blocked, self._try_read,
                          Deadline(timeout))

    def _read_blocked(self):
        s = self._words[0].load()
        return bool(s & LOCKED) or (bool(self._words[2].load()) and not self._my_reads())

    def release_read(self):
        if not self._my_reads():
            raise RuntimeError("cannot release un-acquired read lock")
        pid, tid, _ = _fast.self_ident()
        self._place.lot._hold_remove(self._place.key, pid, tid, READ_HOLD)
        self._add_my_reads(-1)
        s = self._words[0].fetch_sub(READER) - READER
        self._after_reader_exit(s)

    def _after_reader_exit(self, s):
        if s == 0 and self._words[2].load():
            self._place.lot.unpark_one(self._wkey)

    # -- write side --

    def _try_write(self, granted=False):
        me = _fast.self_owner_bits() | LOCKED
        ok, _ = self._words[0].compare_exchange(0, me)
        return ok

    def acquire_write(self, blocking=True, timeout=-1):
        """Take the write lock; returns False on timeout / when non-blocking and unavailable."""
        timeout = acquire_timeout(blocking, timeout)
        if self._try_write():
            return True
        if timeout == 0:
            self._reclaim()
            return self._try_write()
        try:
            return self._wait(self._wkey, self._words[2], lambda: self._words[0].load() != 0,
                              self._try_write, Deadline(timeout))
        finally:
            # a writer leaving the queue (timeout, error) may be what kept readers out
            if not self._words[2].load() and self._words[1].load() and \
                    not self._words[0].load() & LOCKED:
                self._place.lot.unpark_all(self._place.key, TOKEN_READ_GRANT)

    def release_write(self):
        """Release the write lock. Readers parked now get it directly: under their bucket lock
        the state goes from "written by us" to "read by them" in one store, so no writer can
        barge in between (readers are not starved by a stream of writers)."""
        state = self._words[0]
        me = _fast.self_owner_bits() | LOCKED
        if state.load() != me:
            raise RuntimeError("cannot release un-acquired write lock")
        lot = self._place.lot
        if self._words[1].load():
            def callback(result):
                state.store(READER * result.unparked_threads)  # 0 when nobody was parked
                return TOKEN_READ_HANDOFF

            r = lot.unpark_filter(self._place.key, _unpark_every_reader, callback)
            if r.unparked_threads or not self._words[2].load():
                return
        else:
            ok, _ = state.compare_exchange(me, 0)
            if not ok:
                raise RuntimeError("cannot release un-acquired write lock")
        if self._words[2].load():
            lot.unpark_one(self._wkey)

    # -- the shared waiting loop --

    def _wait(self, key, waiters, blocked, try_take, deadline):
        lot = self._place.lot
        spin = SpinWait()
        while spin.spin():
            if try_take():
                return True
        writer_died = []

        def poll():
            try:
                # also leave when no longer blocked: whoever unblocked us may have been killed
                # before it unparked us
                return self._reclaim() or not blocked()
            except OwnerDiedError:
                writer_died.append(True)  # took the write lock; raise after leaving the queue
                return True

        waiters.fetch_add(1)
        granted = False
        try:
            while True:
                if try_take(granted):
                    return True
                remaining = deadline.remaining()
                if remaining == 0.0:
                    self._reclaim()
                    return try_take(granted)
                try:
                    r = park(lot, key, blocked, None, None, 0, remaining, poll, OWNER_POLL_NS,
                             self._words[0].load())
                except BaseException as exc:
                    r = getattr(exc, "shmlot_park_result", None)
                    if r is not None and r.token == TOKEN_READ_HANDOFF:
                        self._took_read()  # handed a share as we were interrupted: give it back
                        self.release_read()
                    raise
                if r.is_unparked and r.token == TOKEN_READ_HANDOFF:
                    self._took_read()  # the writer counted our share for us
                    return True
                if writer_died:
                    self._raise_writer_died()
                granted = r.is_unparked and r.token == TOKEN_READ_GRANT
        finally:
            waiters.fetch_sub(1)

    # -- context managers --

    @contextlib.contextmanager
    def read(self, timeout=None):
        """``with rw.read():`` holds a read share for the block."""
        if not self.acquire_read(timeout=-1 if timeout is None else timeout):
            raise TimeoutError("RWLock.read() timed out")
        try:
            yield self
        finally:
            self.release_read()

    @contextlib.contextmanager
    def write(self, timeout=None):
        """``with rw.write():`` holds the write lock for the block."""
        if not self.acquire_write(timeout=-1 if timeout is None else timeout):
            raise TimeoutError("RWLock.write() timed out")
        try:
            yield self
        finally:
            self.release_write()

    def __repr__(self):
        s = self._words[0].load()
        if s & LOCKED:
            pid, tid, _ = _fast.word_owner(s)
            state = f"write-locked by pid {pid} tid {tid}"
        elif s:
            state = f"{s // READER} readers"
        else:
            state = "unlocked"
        name = f" {self._place.name!r}" if self._place.name else ""
        return f"<shmlot.RWLock{name} {state}>"
