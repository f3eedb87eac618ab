"""``Lock`` and ``RLock``: parking_lot's RawMutex on a u64 word that also names its owner.

The word (see ``_native/api.h``): LOCKED and PARKED bits plus the owner's pid, tid and the low
bits of its process start time. The uncontended acquire/release is C (``shmlot._fast``, keeping
the GIL); this module is the slow path, as in parking_lot's ``lock_slow`` / ``unlock_slow``:

- acquire: the C fast path has already watched the word for a few hundred nanoseconds (a
  collision with a short critical section in another process ends there, without a trip
  through Python); here, spin a little more (SpinWait) while nobody is parked, then set PARKED
  and park with a validate that re-checks LOCKED|PARKED under the bucket lock. A plain wake-up
  watches the word once more before parking again (in the core). While parked, poll the owner
  every 0.2 s: if its process is dead (pid plus start time), leave the queue, take the word
  over and raise ``OwnerDiedError`` with the lock held.
- release with PARKED set: unpark one thread; under the bucket lock, either hand the lock over
  (``be_fair``: the word gets the woken thread's identity, token HANDOFF) or unlock and leave
  PARKED set only if more threads wait.
"""

import warnings

from . import _engine as _e
from . import _fast
from . import _placement as _pl
from . import kinds
from ._engine import LOCKED, OWNER_POLL_NS, PARKED, TOKEN_HANDOFF
from .spinwait import SpinWait
from .errors import OwnerDiedError, OwnerDiedWarning

__all__ = ["Lock", "RLock", "OwnerDiedError", "OwnerDiedWarning"]


def owner_alive(word):
    """Is the process named in a lock word alive (pid and start time)? Our own pid is alive
    only with our own start time: a word left by an earlier process that had our pid is not."""
    pid, _tid, start = _fast.word_owner(word)
    return _fast.process_alive(pid, start)


def warn_owner_died(exc, release, stacklevel=3):
    """Report a dead owner found by a ``with`` statement: the lock is held by the caller, who
    runs the body. If the warning is turned into an exception, ``release()`` first: a ``with``
    whose ``__enter__`` raises never runs ``__exit__``."""
    # stacklevel 3 names the `with` statement: 1 is this function, 2 the _enter_slow calling it
    try:
        warnings.warn(f"{exc} (taken over by a with statement, whose body runs)",
                      OwnerDiedWarning, stacklevel=stacklevel)
    except BaseException:
        release()
        raise


class _WordLock:
    """The slow paths shared by Lock and RLock (and anything with the same word)."""

    def _acquire_slow(self, blocking, timeout):
        """acquire()'s slow path (the C fast path's CAS failed); ``_fast`` has checked the
        arguments and passes ``timeout`` as a float, -1.0 for none. The one conversion of the
        timeout: into a deadline (``_engine``), passed down unchanged."""
        deadline = _e.acquire_deadline(True, timeout) if blocking else _e.EXPIRED
        return self._acquire_until(deadline)

    def _acquire_until(self, deadline):
        lot = self._place.lot
        me = _fast.self_owner_bits() | LOCKED
        # A Lock (not an RLock) may be acquired again by the thread that holds it (and block):
        # then finding our identity in the word says nothing about a hand-off.
        mine = self._word() & ~PARKED == me

        def handed_to_us():
            return not mine and self._word() & ~PARKED == me

        spin = SpinWait()
        while True:
            word = self._word()
            if not word & LOCKED:
                ok, _ = self._cas_word(word, me | (word & PARKED))
                if ok:
                    return True
                continue
            if _e.passed(deadline):
                return self._take_if_owner_dead(word, me)
            if not word & PARKED:
                if spin.spin():
                    continue
                ok, _ = self._cas_word(word, word | PARKED)
                if not ok:
                    continue
                word |= PARKED

            def timed_out(_key, was_last):
                if was_last:  # nobody else parked: clear PARKED (unless the word moved on)
                    self._clear_parked()

            owner_dead = []

            def poll():
                # Every OWNER_POLL_NS while parked: leave the queue if the owner died, and also
                # if the lock is free or already ours (an unlocker killed between changing the
                # word and waking us must not leave us asleep forever).
                current = self._word()
                if not current & LOCKED or (not mine and current & ~PARKED == me):
                    return True
                if not owner_alive(current):
                    owner_dead.append(current)
                    return True
                return False

            try:
                # validate (in the core): the word is still LOCKED|PARKED
                result = _e.park_word(lot, self._lockword, timed_out=timed_out,
                                      deadline=deadline, poll=poll, poll_ns=OWNER_POLL_NS)
            except BaseException as exc:
                # Ctrl-C while parked: if the lock was handed to us meanwhile, give it back.
                r = getattr(exc, "shmlot_park_result", None)
                if (r is not None and r.token == TOKEN_HANDOFF) or handed_to_us():
                    self._release_handed_off()
                raise
            if (result.is_unparked and result.token == TOKEN_HANDOFF) or handed_to_us():
                # the unlocker wrote our identity into the word (if it died before waking us,
                # poll() found the word ours)
                return True
            if owner_dead:
                # the word as it is now: leaving the queue may have cleared PARKED (timed_out,
                # when we were the last waiter), so the word seen by poll() is stale
                self._take_if_owner_dead(self._word(), me)
            spin.reset()

    def _enter_slow(self, blocking, timeout):
        """__enter__'s slow path: a dead owner is reported by OwnerDiedWarning, and the body of
        the ``with`` runs holding the lock (see OwnerDiedWarning)."""
        try:
            return self._acquire_slow(blocking, timeout)
        except OwnerDiedError as exc:
            warn_owner_died(exc, self._release_handed_off)
            return True

    def _take_if_owner_dead(self, word, me):
        """Non-blocking failure path: if the holder is dead, take the lock and say so."""
        if not word & LOCKED or owner_alive(word):
            return False
        ok, _ = self._cas_word(word, me | (word & PARKED))
        if not ok:
            return False
        _e.count(self._place.lot, _e.OWNER_DEATHS)
        pid, tid, _ = _fast.word_owner(word)
        raise OwnerDiedError(
            f"the previous owner of this {type(self).__name__} (pid {pid}, tid {tid}) died "
            "holding it; it is now held by the caller: repair the state it protects, then "
            "release() it")

    def _clear_parked(self):
        word = self._word()
        while word & PARKED:
            ok, word = self._cas_word(word, word & ~PARKED)
            if ok:
                return

    def _release_handed_off(self):
        """We own the lock (by hand-off, or taken over from a dead owner) but cannot use it
        (exception): release it normally, whatever count a dead owner left."""
        if hasattr(self, "_set_count"):
            self._set_count(1)
        self.release()

    def _release_slow(self, force_fair=False):
        """RawMutex::unlock_slow, in the core (one call, no Python callback): unpark the first
        waiter; on be_fair (or ``force_fair``) hand the lock over with the waiter's identity
        already in the word, else unlock; PARKED stays set while more wait."""
        _e.word_unlock(self._place.lot, self._lockword, force_fair=force_fair)

    # -- shared plumbing --

    @classmethod
    def _from_place(cls, place):
        """The lock whose word is at the start of ``place``."""
        obj = cls.__new__(cls)
        obj._init_place(place)
        return obj

    @classmethod
    def on_place(cls, place):
        """A lock on the first bytes of another object's ``place`` (a Condition's record carries
        its RLock there). It shares the record (no registry reference of its own) and keeps the
        owner's Place alive, so the record lives as long as the lock is used."""
        obj = cls._from_place(_pl.Place(place.lot, place.buffer, place.offset, place.key))
        obj._keepalive = place
        return obj

    def _init_place(self, place):
        self._place = place
        self._CORE.__init__(self, place.buffer, place.offset)
        # what the engine hands the core to park on, unlock or release this lock's word
        self._lockword = _e.lock_word(place, self._address, counted=self.SIZE > _e.LOCK_SIZE)

    @property
    def key(self):
        """The key this lock parks on (``shmlot.key_for(lock)``)."""
        return self._place.key

    @property
    def name(self):
        return self._place.name

    def _owner(self):
        """(pid, tid) of the holder, or None."""
        word = self._word()
        if not word & LOCKED:
            return None
        pid, tid, _ = _fast.word_owner(word)
        return pid, tid

    def __reduce__(self):
        return (_rebuild, (type(self), self._place.reduce_args()))

    def __repr__(self):
        owner = self._owner()
        state = f"locked by pid {owner[0]} tid {owner[1]}" if owner else "unlocked"
        name = f" {self._place.name!r}" if self._place.name else ""
        return f"<shmlot.{type(self).__name__}{name} {state}>"


def _rebuild(cls, args):
    return cls._from_place(_pl.rebuild_place(args))


class Lock(_WordLock, _fast.LockCore):
    """``threading.Lock`` across processes.

    Creating one:
      ``Lock()``                      anonymous, in the default lot: pass it to other processes
                                      (fork, spawn, forkserver, a Pool's initializer; it pickles
                                      as a handle); freed when the last handle anywhere is gone.
      ``Lock(name="jobs")``           named: every process of the same user that asks for "jobs"
                                      (in the same lot) gets the same lock; it lives until
                                      ``shmlot.unlink_object("jobs")``.
      ``Lock(lot=shmlot.ParkingLot.open("mylot"))``  in another lot (e.g. one shared by users).
      ``Lock.at(shm, offset)``        its 8 bytes inside your own SharedMemory (zero: unlocked).

    Using it: exactly as ``threading.Lock``: ``acquire(blocking=True, timeout=-1)``,
    ``release()`` (any thread or process may release it), ``locked()``, ``with lock:``.

    A holder that dies (SIGKILL included) is detected by the next acquirer, which takes the
    lock over: ``acquire()`` then raises ``OwnerDiedError`` with the lock held (repair, then
    ``release()``); ``with lock:`` issues ``OwnerDiedWarning`` and runs its body holding it.
    For multiprocessing's call forms (``acquire(block, timeout)``), use
    ``shmlot.get_context().Lock()``.
    """
    SIZE = _e.LOCK_SIZE
    KIND = kinds.LOCK
    _CORE = _fast.LockCore

    def __init__(self, *, name=None, lot=None):
        self._init_place(_pl.new_place(self.KIND, name, lot))

    @classmethod
    def at(cls, buffer, offset=0, *, lot=None, key=None):
        """A lock in ``buffer[offset:offset+8]`` (all-zero bytes: unlocked)."""
        return cls._from_place(_pl.at_place(cls.KIND, buffer, offset, cls.SIZE, lot, key))

    # threading.Condition's protocol for a Lock
    def _is_owned(self):
        return self._word() & ~PARKED == _fast.self_owner_bits() | LOCKED

    def _release_save(self):
        self.release()

    def _acquire_restore(self, _state):
        self.acquire()


class RLock(_WordLock, _fast.RLockCore):
    """``threading.RLock`` across processes: the thread that holds it may acquire it again, and
    must release it as many times. Created, shared and placed (16 bytes) as ``Lock`` is; a dead
    holder is reported the same way (``OwnerDiedError`` from ``acquire()``, ``OwnerDiedWarning``
    from ``with``), and the taker's recursion count starts at 1."""
    SIZE = _e.RLOCK_SIZE
    KIND = kinds.RLOCK
    _CORE = _fast.RLockCore

    def __init__(self, *, name=None, lot=None):
        self._init_place(_pl.new_place(self.KIND, name, lot))

    at = classmethod(Lock.at.__func__)

    def _recursion_count(self):
        """How many times the calling thread holds the lock (0 if it does not), as
        threading.RLock._recursion_count."""
        return self._count() if self._is_owned() else 0

    # threading.Condition's protocol for an RLock
    def _release_save(self):
        if not self._is_owned():
            raise RuntimeError("cannot release un-acquired lock")
        count = self._count()
        self._set_count(1)
        self.release()
        return count

    def _acquire_restore(self, count):
        try:
            self.acquire()
        except OwnerDiedError:
            self._set_count(count)  # held again, at the depth the caller expects
            raise
        self._set_count(count)

    def __repr__(self):
        base = super().__repr__()
        return base[:-1] + f" count={self._count()}>" if self._owner() else base
