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
such a change dies holding the mutex, and the next thread to find the mutex held by a dead owner
recomputes the counts from the holds of the living.

Asynchronous exceptions. Each change of that bookkeeping (the count, the hold, and the calling
thread's own count of its shares) is one call into the core (``sl_rw_step``, rwstep.c), so a
Ctrl-C strikes before or after it, never inside; ``read()`` and ``write()`` give back what an
exception took between the core call and the ``with`` block.
"""
import os
import threading

from . import _engine as _e
from . import _fast
from . import kinds
from ._base import Primitive
from ._engine import (LOCKED, OWNER_POLL_NS, RW_READER as READER, RW_READ_PHASE as READ_PHASE,
                      TOKEN_READ_GRANT)
from ._results import FilterOp
from .errors import OwnerDiedError
from .kinds import READ_HOLD, WRITE_WAIT_HOLD as WRITE_WAIT  # on the keys of words 0 and 1
from .locks import Lock, owner_alive, warn_owner_died
from .spinwait import SpinWait

__all__ = ["RWLock"]

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
    KIND = kinds.RWLOCK
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
        self._wptr = _e.words_at(self._mutex._address - 24)  # the four words

    # Read shares of the calling thread, per lock (not per handle: two handles on one RWLock,
    # e.g. a named one opened twice, are the same lock for re-entrant reads). A cell the core
    # counts in, in the same call that changes the lock's count and hold.
    def _cell(self):
        d = getattr(_reads, "d", None)
        if d is None:
            d = _reads.d = {}
        cell = d.get(self._rkey)
        if cell is None:
            cell = d[self._rkey] = _e.new_cell()
        return cell

    def _wait_cell(self):
        """The calling thread's mark (1) of waiting as a writer, set and cleared by the core with
        the waiting-writers count. Found set when the thread starts an acquire, it was left by
        an exception that struck before the wait's end could clear it: clear it now, or new
        readers would wait for a writer that is not there."""
        d = getattr(_reads, "d", None)
        if d is None:
            d = _reads.d = {}
        key = (self._rkey, "w")
        cell = d.get(key)
        if cell is None:
            cell = d[key] = _e.new_cell()
        elif cell[0]:
            self._step(_e.RW_UNWAIT, False, cell)
        return cell

    def _my_reads(self):
        cell = getattr(_reads, "d", {}).get(self._rkey)
        return cell[0] if cell is not None else 0

    # -- the readers' mutex: only ever held inside one core call (sl_rw_step) --

    def _step(self, op, granted=False, cell=_e.NULL):
        """One bookkeeping step in the core; returns (code, out). Waits (spinning, then
        yielding) while another thread is inside a step; if the mutex's holder died inside one,
        recounts from the holds first."""
        lot = self._place.lot
        spin = SpinWait()
        while True:
            rc, word = _e.rw_step(lot, self._wptr, self._place.key, self._wkey, op, granted,
                                  cell)
            if rc != _e.RW_BUSY:
                return rc, word
            if word & LOCKED and (not owner_alive(word) or
                                  word & ~2 == _fast.self_owner_bits() | LOCKED):
                # its holder died inside a step, or it is this thread (an exception struck a
                # repair of ours before it let go): repair it
                self._repair_mutex(word)
            elif not spin.spin():
                os.sched_yield()

    def _repair_mutex(self, word):
        """The mutex's holder died inside a step: take the mutex and recount from the holds."""
        mutex = self._words[3]
        me = _fast.self_owner_bits() | LOCKED
        ok, _ = mutex.compare_exchange(word, me)
        if not ok:
            return
        try:
            self._recount()
        finally:
            mutex.store(0)

    def _recount(self):
        """(Mutex held.) Readers := the read shares of living holders; writers waiting := the
        living waiting writers. Dead holders' holds are dropped."""
        lot, key, wkey = self._place.lot, self._place.key, self._wkey
        readers = sum(h[3] for h in _e.holds_on(lot, key)
                      if h[4] == READ_HOLD and _fast.process_alive(h[0], h[2], ALL_START_BITS))
        writers = sum(h[3] for h in _e.holds_on(lot, wkey)
                      if h[4] == WRITE_WAIT and _fast.process_alive(h[0], h[2], ALL_START_BITS))
        _e.hold_take_dead(lot, key)
        _e.hold_take_dead(lot, wkey)
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
        _e.count(lot, _e.OWNER_DEATHS)

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
            _e.count(lot, _e.OWNER_DEATHS)
            self._dead_writer = _fast.word_owner(s)[:2]
            self._raise_writer_died()
        changed = self._reclaim_waiting_writers()
        mutex = self._words[3].load()
        if s or (mutex & LOCKED and not owner_alive(mutex)):
            changed = self._reclaim_readers() or changed
        return changed

    def _reclaim_readers(self):
        """Take back the read shares of dead readers (and whatever a death under the mutex
        left); returns how many shares were taken (0: none)."""
        shares, s = self._step(_e.RW_RECLAIM_READERS)
        if shares > 0 and s == 0:
            self._after_reader_exit(0)
        return max(shares, 0)

    def _reclaim_waiting_writers(self):
        """Waiting writers that died: they no longer keep new readers out."""
        if not self._words[2].load():
            return False
        dead, _ = self._step(_e.RW_RECLAIM_WRITERS)
        return dead > 0

    def _raise_writer_died(self):
        pid, tid = self._dead_writer
        raise OwnerDiedError(f"the writer of this RWLock (pid {pid}, tid {tid}) died holding it; "
                             "the write lock is now held by the caller: repair, then "
                             "release_write()")

    # -- read side --

    def _try_read(self, granted=False, backoff=_e.NO_DEADLINE):
        """Take a read share if no writer holds the lock (or waits, unless ``granted``). While
        the hold table has no room to record it, back off (never past the deadline ``backoff``;
        NO_DEADLINE: the usual growing interval) and return False, for the caller to retry."""
        if self._my_reads():
            granted = True  # re-entrant: never waits for writers
        s = self._words[0].load()
        if s & LOCKED or not (granted or not self._words[2].load()):
            return False
        rc, _ = self._step(_e.RW_READ, granted, self._cell())
        if rc == _e.RW_DONE:
            _e.full_done()
            return True
        if rc == _e.EFULL:  # no room to record the share: back off, then retry
            _e.full_backoff(self._place.lot, backoff)
        return False

    def acquire_read(self, blocking=True, timeout=-1):
        """Take a read share; returns False on timeout / when non-blocking and unavailable.
        RuntimeError (rather than a wait that cannot end) if this thread holds the write lock."""
        return self._acquire_read(_e.acquire_deadline(blocking, timeout))

    def _acquire_read(self, deadline):
        self._wait_cell()  # (clears a waiting-writer mark an exception left)
        if self._try_read(backoff=_e.EXPIRED):
            return True
        if _e.passed(deadline):
            self._reclaim()
            return self._try_read(backoff=_e.EXPIRED)
        self._refuse_waiting_for_itself("a read share")
        return self._wait(self._place.key, self._read_blocked, self._try_read, deadline)

    def _read_blocked(self):
        s = self._words[0].load()
        return bool(s & LOCKED) or (bool(self._words[2].load()) and not self._my_reads())

    def release_read(self):
        rc, s = self._step(_e.RW_UNREAD, False, self._cell())
        if rc == _e.RW_NOT_HELD:
            raise RuntimeError("cannot release un-acquired read lock")
        self._after_reader_exit(s)

    def _end_read_phase(self):
        """The readers let in by a writer's release are all out: writers may come in again."""
        self._words[0].compare_exchange(READ_PHASE, 0)

    def _after_reader_exit(self, s):
        if s == 0 and self._words[2].load():
            _e.unpark_one(self._place.lot, self._wkey)

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
        return self._acquire_write(_e.acquire_deadline(blocking, timeout))

    def _acquire_write(self, deadline):
        self._wait_cell()  # (clears a waiting-writer mark an exception left)
        if self._try_write():
            return True
        if _e.passed(deadline):
            self._reclaim()
            return self._try_write()
        self._refuse_waiting_for_itself("the write lock")
        lot = self._place.lot
        waiting = self._wait_cell()  # 1 while counted as a waiting writer (by the core)
        try:
            while True:
                rc, _ = self._step(_e.RW_WAIT, False, waiting)  # new readers now wait
                if rc != _e.EFULL:
                    _e.full_done()
                    break
                # the hold table is full: back off and retry, as the primitives do when the
                # lot is full, never raising LotFullError
                if self._try_write():
                    return True
                if _e.passed(deadline):
                    return False
                _e.full_backoff(lot, deadline)
            return self._wait(self._wkey, lambda: self._words[0].load() != 0, self._try_write,
                              deadline)
        finally:
            if waiting[0]:
                _, left = self._step(_e.RW_UNWAIT, False, waiting)
                # a writer leaving the queue (timeout, error) may be what kept readers out
                if left <= 1 and self._words[1].load() and not self._words[0].load() & LOCKED:
                    _e.unpark_all(lot, self._place.key, token=TOKEN_READ_GRANT)

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

            r = _e.unpark_filter(lot, self._place.key, filter=_unpark_every_reader,
                                 callback=callback)
            if r.unparked_threads:
                return
        else:
            ok, _ = state.compare_exchange(me, 0)
            if not ok:
                raise RuntimeError("cannot release un-acquired write lock")
        if self._words[2].load():
            _e.unpark_one(lot, self._wkey)

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
                if _e.passed(deadline):
                    self._reclaim()
                    return try_take(granted)
                r = _e.park(lot, key, validate=blocked, deadline=deadline, poll=poll,
                            poll_ns=OWNER_POLL_NS, hint=self._words[0].load())
                if writer_died:
                    self._raise_writer_died()
                granted = r.is_unparked and r.token == TOKEN_READ_GRANT
        finally:
            if not writer:
                self._words[1].fetch_sub(1)

    # -- context managers --

    def read(self, timeout=None):
        """``with rw.read():`` holds a read share for the block. A writer that died holding the
        lock is reported by ``OwnerDiedWarning`` (the write lock it left is released and the
        read share taken), not by an exception: see ``Lock``'s ``with``."""
        return _Held(self, True, timeout)

    def write(self, timeout=None):
        """``with rw.write():`` holds the write lock for the block. A writer that died holding it
        is reported by ``OwnerDiedWarning`` and the block runs holding the lock: see ``Lock``'s
        ``with``."""
        return _Held(self, False, timeout)

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


class _Held:
    """What ``read()`` / ``write()`` return. An asynchronous exception (Ctrl-C) can strike after
    the lock was taken inside ``__enter__``, before the ``with`` block is entered (then
    ``__exit__`` never runs): ``__enter__`` gives back what it took if it raises. Whether this
    guard still holds is read from the lock itself (the thread's share count reaching this
    guard's depth, the write word naming this thread), so nothing is given back twice.

    As with any ``__exit__`` written in Python (threading.Condition's and Semaphore's too), an
    exception that strikes as ``__exit__`` begins leaves the lock held by the thread, whole
    (count, hold and the thread's own count agree): ``release_read()`` gives it back."""
    __slots__ = ("_rw", "_read", "_timeout", "_depth", "_me")

    def __init__(self, rw, read, timeout):
        self._rw, self._read, self._timeout = rw, read, timeout
        self._depth = 0   # read: the thread's share count with this guard's share (0: none)
        self._me = None   # write: our lock word while this guard holds the write lock

    def __enter__(self):
        rw = self._rw
        if self._read:
            cell = rw._cell()
            before = cell[0]
            deadline = _e.wait_deadline(self._timeout)
            while True:
                try:
                    ok = rw._acquire_read(deadline)
                    break
                except OwnerDiedError as exc:  # we hold the dead writer's write lock now
                    # stacklevel 3: warn_owner_died, this __enter__, the with statement
                    warn_owner_died(exc, rw.release_write, stacklevel=3)
                    rw.release_write()
                except BaseException:
                    if cell[0] > before:  # taken before the exception struck: give it back
                        rw.release_read()
                    raise
            if ok:
                self._depth = before + 1
        else:
            me = _fast.self_owner_bits() | LOCKED
            try:
                ok = rw._acquire_write(
                    _e.acquire_deadline(True, -1 if self._timeout is None else self._timeout))
            except OwnerDiedError as exc:  # held now: the with block runs holding it
                warn_owner_died(exc, rw.release_write, stacklevel=3)
                ok = True
            except BaseException:
                if rw._words[0].load() == me:
                    rw.release_write()
                raise
            if ok:
                self._me = me
        if not ok:
            raise TimeoutError(f"RWLock.{'read' if self._read else 'write'}() timed out")
        return rw

    def _holds(self):
        if self._read:
            return bool(self._depth) and self._rw._my_reads() >= self._depth
        return self._me is not None and self._rw._words[0].load() == self._me

    def __exit__(self, *exc):
        if self._holds():
            if self._read:
                self._rw.release_read()
            else:
                self._rw.release_write()
        self._depth, self._me = 0, None
