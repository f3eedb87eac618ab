"""``RWLock``: many readers or one writer, across threads and processes.

Words: [0] the state: 0 free; a writer's lock word (owner bits | LOCKED, as in ``Lock``); or
readers << 2, plus READ_PHASE (bit 1) while the readers a writer let in go first. [1] readers that
may be parked, [2] writers waiting, [3] the readers' mutex (a ``Lock`` word). Readers park on the
key of word 0, writers on the key of word 1.

Fairness: a new reader waits while a writer waits (writers are not starved by a stream of
readers), unless this thread already holds a read share (re-entrant reads cannot deadlock).
A writer's release lets the readers parked at that moment in first: the state goes from "written"
to READ_PHASE under their bucket lock, which no writer can take, and they enter although writers
wait (readers are not starved either); the last of them out ends the phase and wakes one writer.

Owner death. A dead writer is found through its lock word, as for ``Lock``: the next acquirer
gets ``OwnerDiedError``. Every read share and every waiting writer is also recorded as a counted
hold (on the key of word 0, resp. word 1), and the count and the hold change together under the
readers' mutex. So: a dead reader's share, or a dead waiting writer, is found by its hold and
taken back by whoever waits on the lock (every OWNER_POLL_NS); a process killed in the middle of
such a change dies holding the mutex, and the next thread to take the mutex (OwnerDiedError on the
mutex) recomputes the counts from the holds of the living.
"""
import contextlib
import os
import threading

from . import _fast
from . import _placement as _pl
from ._base import Primitive
from ._core import lib
from ._results import FilterOp
from ._waiting import Deadline, acquire_timeout, full_backoff, full_done, park
from .errors import LotFullError, OwnerDiedError
from .locks import LOCKED, OWNER_POLL_NS, Lock, owner_alive, warn_owner_died
from .spinwait import SpinWait

__all__ = ["RWLock"]

READER = 4
READ_PHASE = 2
READ_HOLD = 1 | lib.SL_HOLD_COUNTED    # a read share (on the key of word 0)
WRITE_WAIT = 2 | lib.SL_HOLD_COUNTED   # a waiting writer (on the key of word 1)
TOKEN_READ_GRANT = 2  # "you may read although writers wait"
ALL_START_BITS = 2**64 - 1

_reads = threading.local()


def _forget_reads_in_child():
    """A fork child's thread inherits the forking thread's locals, but the read shares they count
    are the parent's (recorded under its pid): the child holds none."""
    _reads.__dict__.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_reads_in_child)


def _unpark_every_reader(_park_token):
    return FilterOp.UNPARK


class RWLock(Primitive):
    """A reader-writer lock; ``name=`` / ``lot=`` / ``.at()`` as for ``Lock``."""
    KIND = _pl.RWLOCK
    WORDS = 4
    SIZE = 32

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
        self._mutex = Lock.at(place.buffer, place.offset + 24, lot=place.lot,
                              key=(place.key + 24) & 0xFFFFFFFFFFFFFFFF)

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

    # -- the readers' mutex --

    @contextlib.contextmanager
    def _locked(self):
        """Hold the mutex that makes a count change and its hold one step. If its holder died
        (mid-step), recompute the counts from the holds before going on."""
        try:
            self._mutex.acquire()
        except OwnerDiedError:
            try:
                self._recount()
            except BaseException:
                self._mutex.release()
                raise
        try:
            yield
        finally:
            self._mutex.release()

    def _recount(self):
        """(Mutex held.) Readers := the read shares of living holders; writers waiting := the
        living waiting writers. Dead holders' holds are dropped."""
        lot, key, wkey = self._place.lot, self._place.key, self._wkey
        readers = sum(h[3] for h in lot._holds_on(key)
                      if h[4] == READ_HOLD and _fast.process_alive(h[0], h[2], ALL_START_BITS))
        writers = sum(h[3] for h in lot._holds_on(wkey)
                      if h[4] == WRITE_WAIT and _fast.process_alive(h[0], h[2], ALL_START_BITS))
        lot._hold_take_dead(key)
        lot._hold_take_dead(wkey)
        self._words[2].store(writers)
        state = self._words[0]
        s = state.load()
        while not s & LOCKED:  # a writer in: there are no readers to count
            new = READER * readers
            if new and s & READ_PHASE:
                new |= READ_PHASE
            ok, s = state.compare_exchange(s, new)
            if ok:
                if new == 0:
                    self._after_reader_exit(0)
                break
        lot._count(lib.SL_C_OWNER_DEATHS)

    # -- dead holders --

    def _reclaim(self):
        """Take back what dead processes hold. Returns True if something changed; raises
        OwnerDiedError (write lock now ours) if the writer died."""
        lot = self._place.lot
        state = self._words[0]
        s = state.load()
        if s & LOCKED:
            if owner_alive(s):
                return self._reclaim_waiting_writers()
            me = _fast.self_owner_bits() | LOCKED
            ok, _ = state.compare_exchange(s, me)
            if not ok:
                return True
            lot._count(lib.SL_C_OWNER_DEATHS)
            self._dead_writer = _fast.word_owner(s)[:2]
            self._raise_writer_died()
        changed = self._reclaim_waiting_writers()
        mutex = self._mutex._word()
        if s or (mutex & LOCKED and not owner_alive(mutex)):
            changed = self._reclaim_readers() or changed
        return changed

    def _reclaim_readers(self):
        """Take back the read shares of dead readers (and whatever a death under the mutex
        left); returns how many shares were taken (0: none)."""
        lot, key = self._place.lot, self._place.key
        with self._locked():
            shares = lot._hold_take_dead(key)
            if not shares:
                return 0
            s = self._words[0].fetch_sub(READER * shares) - READER * shares
            if s == READ_PHASE:
                self._end_read_phase()
            elif s == 0:
                self._after_reader_exit(0)
        return shares

    def _reclaim_waiting_writers(self):
        """Waiting writers that died: they no longer keep new readers out."""
        if not self._words[2].load():
            return False
        lot = self._place.lot
        with self._locked():
            dead = lot._hold_take_dead(self._wkey)
            if dead:
                self._words[2].fetch_sub(min(dead, self._words[2].load()))
        return bool(dead)

    def _raise_writer_died(self):
        pid, tid = self._dead_writer
        raise OwnerDiedError(f"the writer of this RWLock (pid {pid}, tid {tid}) died holding it; "
                             "the write lock is now held by the caller: repair, then "
                             "release_write()")

    # -- read side --

    def _try_read(self, granted=False, backoff=None):
        """Take a read share if no writer holds the lock (or waits, unless ``granted``). While
        the hold table has no room to record it, back off (at most ``backoff`` seconds, None:
        the usual growing interval) and return False, for the caller to retry."""
        if self._my_reads():
            granted = True  # re-entrant: never waits for writers
        state = self._words[0]
        s = state.load()
        if s & LOCKED or not (granted or not self._words[2].load()):
            return False
        lot, key = self._place.lot, self._place.key
        pid, tid, start = _fast.self_ident()
        with self._locked():
            try:
                lot._hold_add(key, pid, tid, start, READ_HOLD)
            except LotFullError:
                full = True  # no room to record the share: back off (unlocked), then retry
            else:
                full = False
                s = state.load()
                while not s & LOCKED and (granted or not self._words[2].load()):
                    ok, s = state.compare_exchange(s, s + READER)
                    if ok:
                        self._add_my_reads(1)
                        full_done()
                        return True
                lot._hold_remove(key, pid, tid, READ_HOLD)
        if full:
            full_backoff(lot, backoff)
        return False

    def acquire_read(self, blocking=True, timeout=-1):
        """Take a read share; returns False on timeout / when non-blocking and unavailable.
        RuntimeError (rather than a wait that cannot end) if this thread holds the write lock."""
        timeout = acquire_timeout(blocking, timeout)
        if self._try_read(backoff=0):
            return True
        if timeout != 0:
            self._refuse_waiting_for_itself("a read share")
        if timeout == 0:
            self._reclaim()
            return self._try_read(backoff=0)
        return self._wait(self._place.key, self._read_blocked, self._try_read, Deadline(timeout))

    def _read_blocked(self):
        s = self._words[0].load()
        return bool(s & LOCKED) or (bool(self._words[2].load()) and not self._my_reads())

    def release_read(self):
        if not self._my_reads():
            raise RuntimeError("cannot release un-acquired read lock")
        lot, key = self._place.lot, self._place.key
        pid, tid, _ = _fast.self_ident()
        with self._locked():
            lot._hold_remove(key, pid, tid, READ_HOLD)
            self._add_my_reads(-1)
            s = self._words[0].fetch_sub(READER) - READER
            if s == READ_PHASE:
                self._end_read_phase()
                s = 0
        self._after_reader_exit(s)

    def _end_read_phase(self):
        """The readers let in by a writer's release are all out: writers may come in again."""
        self._words[0].compare_exchange(READ_PHASE, 0)

    def _after_reader_exit(self, s):
        if s == 0 and self._words[2].load():
            self._place.lot.unpark_one(self._wkey)

    def _refuse_waiting_for_itself(self, what):
        """A blocking acquire that would wait for this very thread to let go never ends (and a
        timed one could only time out): say so instead."""
        if self._words[0].load() == _fast.self_owner_bits() | LOCKED:
            held = "the write lock"
        elif what == "the write lock" and self._my_reads():
            held = "a read share"
        else:
            return
        raise RuntimeError(f"cannot wait for {what} of this RWLock while holding {held} of it: "
                           "it would wait for this thread itself")

    # -- write side --

    def _try_write(self, granted=False):
        me = _fast.self_owner_bits() | LOCKED
        ok, _ = self._words[0].compare_exchange(0, me)
        return ok

    def acquire_write(self, blocking=True, timeout=-1):
        """Take the write lock; returns False on timeout / when non-blocking and unavailable.
        RuntimeError (rather than a wait that cannot end) if this thread holds a read share or
        the write lock already: there is no upgrade; release_read() first."""
        timeout = acquire_timeout(blocking, timeout)
        if self._try_write():
            return True
        if timeout != 0:
            self._refuse_waiting_for_itself("the write lock")
        if timeout == 0:
            self._reclaim()
            return self._try_write()
        lot = self._place.lot
        pid, tid, start = _fast.self_ident()
        deadline = Deadline(timeout)
        while True:
            with self._locked():  # from here on, new readers wait for us
                try:
                    lot._hold_add(self._wkey, pid, tid, start, WRITE_WAIT)
                except LotFullError:
                    full = True
                else:
                    full = False
                    self._words[2].fetch_add(1)
            if not full:
                full_done()
                break
            # the hold table is full: back off (not holding the mutex) and retry, as the
            # primitives do when the lot is full, never raising LotFullError
            if self._try_write():
                return True
            remaining = deadline.remaining()
            if remaining == 0.0:
                return False
            full_backoff(lot, remaining)
        try:
            return self._wait(self._wkey, lambda: self._words[0].load() != 0, self._try_write,
                              deadline)
        finally:
            with self._locked():
                lot._hold_remove(self._wkey, pid, tid, WRITE_WAIT)
                left = self._words[2].load()
                if left:
                    self._words[2].fetch_sub(1)
            # a writer leaving the queue (timeout, error) may be what kept readers out
            if left <= 1 and self._words[1].load() and not self._words[0].load() & LOCKED:
                self._place.lot.unpark_all(self._place.key, TOKEN_READ_GRANT)

    def release_write(self):
        """Release the write lock. The readers parked now go first: under their bucket lock the
        state goes from "written by us" to READ_PHASE, which keeps writers out until they are
        done (readers are not starved by a stream of writers)."""
        state = self._words[0]
        me = _fast.self_owner_bits() | LOCKED
        if state.load() != me:
            raise RuntimeError("cannot release un-acquired write lock")
        lot = self._place.lot
        if self._words[1].load():
            def callback(result):
                state.store(READ_PHASE if result.unparked_threads else 0)
                return TOKEN_READ_GRANT

            r = lot.unpark_filter(self._place.key, _unpark_every_reader, callback)
            if r.unparked_threads:
                return
        else:
            ok, _ = state.compare_exchange(me, 0)
            if not ok:
                raise RuntimeError("cannot release un-acquired write lock")
        if self._words[2].load():
            lot.unpark_one(self._wkey)

    # -- the shared waiting loop --

    def _wait(self, key, blocked, try_take, deadline):
        lot = self._place.lot
        writer = key == self._wkey
        spin = SpinWait()
        while spin.spin():
            if try_take():
                return True
        writer_died = []
        phase_seen = []

        def poll():
            try:
                if writer and self._words[0].load() == READ_PHASE:
                    # readers let in first that never came (killed, timed out): end their turn
                    if phase_seen:
                        self._end_read_phase()
                        return True
                    phase_seen.append(True)
                # also leave when no longer blocked: whoever unblocked us may have been killed
                # before it unparked us
                return self._reclaim() or not blocked()
            except OwnerDiedError:
                writer_died.append(True)  # took the write lock; raise after leaving the queue
                return True

        if not writer:
            self._words[1].fetch_add(1)
        granted = False
        try:
            while True:
                if try_take(granted):
                    return True
                remaining = deadline.remaining()
                if remaining == 0.0:
                    self._reclaim()
                    return try_take(granted)
                r = park(lot, key, blocked, None, None, 0, remaining, poll, OWNER_POLL_NS,
                         self._words[0].load())
                if writer_died:
                    self._raise_writer_died()
                granted = r.is_unparked and r.token == TOKEN_READ_GRANT
        finally:
            if not writer:
                self._words[1].fetch_sub(1)

    # -- context managers --

    @contextlib.contextmanager
    def read(self, timeout=None):
        """``with rw.read():`` holds a read share for the block. A writer that died holding the
        lock is reported by ``OwnerDiedWarning`` (the write lock it left is released and the
        read share taken), not by an exception: see ``Lock``'s ``with``."""
        deadline = Deadline(timeout)
        while True:
            remaining = deadline.remaining()
            try:
                if not self.acquire_read(timeout=-1 if remaining is None else remaining):
                    raise TimeoutError("RWLock.read() timed out")
                break
            except OwnerDiedError as exc:  # we hold the dead writer's write lock now
                warn_owner_died(exc, self.release_write, stacklevel=4)
                self.release_write()
        try:
            yield self
        finally:
            self.release_read()

    @contextlib.contextmanager
    def write(self, timeout=None):
        """``with rw.write():`` holds the write lock for the block. A writer that died holding it
        is reported by ``OwnerDiedWarning`` and the block runs holding the lock: see ``Lock``'s
        ``with``."""
        try:
            if not self.acquire_write(timeout=-1 if timeout is None else timeout):
                raise TimeoutError("RWLock.write() timed out")
        except OwnerDiedError as exc:
            warn_owner_died(exc, self.release_write, stacklevel=4)
        try:
            yield self
        finally:
            self.release_write()

    def __repr__(self):
        s = self._words[0].load()
        if s & LOCKED:
            pid, tid, _ = _fast.word_owner(s)
            state = f"write-locked by pid {pid} tid {tid}"
        elif s >= READER:
            state = f"{s // READER} readers"
        else:
            state = "unlocked"
        name = f" {self._place.name!r}" if self._place.name else ""
        return f"<shmlot.RWLock{name} {state}>"
