"""Asyncio counterparts of the primitives, on the same words as the synchronous ones.

``shmlot.aio.Lock(name="jobs")`` is the very lock ``shmlot.Lock(name="jobs")`` is: a thread may
hold it with ``with`` while a task of another process waits for it with ``async with``, and
exclusion holds between all threads, tasks and processes at once. ``Kind.from_sync(obj)`` wraps
an existing synchronous object, ``.sync`` gives it back. The interfaces are asyncio's own
(``async with``, ``await acquire()``, ``release()``, ``locked()``, ``await wait()``, ``set()``...);
owner death is the synchronous primitives' (a killed holder's lock reaches the next waiter, task
or thread, with ``OwnerDiedError``, the lock then held).

How a task waits. It parks like a thread: it takes a slot in the lot and queues it under the
bucket lock, with the same validate a thread uses, but it does not sleep on the slot's wait word:
it hands the slot to its event loop's *watch* and awaits a future. The watch's helper threads
sleep in Linux ``futex_waitv`` on up to 127 slot words each (plus a private control word for
adding and removing slots while they sleep) and tell the loop through an eventfd which slots were
unparked: the releaser's ordinary wake-up, no polling, and the loop's thread never sleeps in a
futex. A new wait starts in a small group (8 words: a helper on few words wakes sooner) and
moves to a packed one after OWNER_POLL seconds; 1,000 waiting tasks cost at most 12 helper
threads (``_native/waitv.c``). Before it parks, a task spins briefly in the loop's thread, as a
thread would: ``Event.wait`` watches the flag in C for at most EVENT_SPIN_NS, a contended
``Lock`` or ``Semaphore`` runs a few SpinWait rounds; that is the longest the loop is held.

Where ``futex_waitv`` is missing (Linux before 5.16) and on the semaphore backend, each waiting
task has a thread of its own, asleep on its slot's futex word or semaphore, which a cancelled
task wakes (a futex wake, or a post) so that it exits; the cost is a thread (and its start, some
tens of microseconds) per waiting task. ``SHMLOT_AIO_WAITV=0`` selects that path on any kernel.

Cancellation. A cancelled task (``task.cancel()``, ``asyncio.timeout()``, ``wait_for()``, Ctrl-C
under ``asyncio.run``) leaves the queue under the bucket lock, exactly as a thread that times
out: nothing stays queued. If an unparker got there first, the task passes on what it was given:
a lock handed over to it is released, a plain wake-up of a lock or of a semaphore goes to the
next waiter, a notification of a Condition goes to another waiter. A task also wakes every
``OWNER_POLL`` seconds (a timer of its loop) to check for a dead owner, as a thread does.

Identity. Lock words and holds name a thread; every task of one loop acts as that loop's thread.
Tasks still exclude each other (a task that finds the lock held by its own thread waits like any
other), but where a synchronous primitive counts per thread, tasks of one loop share the count:
an RWLock read share held by one task lets another task of that loop read although a writer
waits (no deadlock can follow), and ``Condition(name=...)``'s RLock is taken by a task as a plain
lock. The short internal mutex an ``RWLock`` step takes, and the bucket locks, are taken by the
loop's thread as by any thread: they are held for a few instructions, never across an ``await``.
"""
import asyncio
import itertools
import os
import threading
import weakref

from . import _engine as _e
from . import _fast
from . import barrier as _barrier
from . import condition as _condition
from . import event as _event
from . import locks as _locks
from . import rwlock as _rwlock
from . import semaphore as _semaphore
from ._engine import LOCKED, OWNER_POLL_NS, PARKED, TOKEN_HANDOFF
from .errors import OwnerDiedError
from .spinwait import SpinWait

__all__ = ["Lock", "Semaphore", "BoundedSemaphore", "Event", "Condition", "Barrier", "RWLock",
           "OwnerDiedError", "BrokenBarrierError", "watch_stats"]

BrokenBarrierError = _barrier.BrokenBarrierError
OWNER_POLL = OWNER_POLL_NS / 1e9  # seconds between a waiting task's liveness checks
THREAD_SLICE_NS = _e.SLICE_OTHER_NS  # a per-task thread's sleep slice (no futex_waitv)
FULL_BACKOFF_STEPS = 4  # a task with no free slot waits 2**4 times the shortest back-off
# Event.wait watches the flag word in C before it parks, as the synchronous wait does, but holds
# the loop for at most this long (the adaptive estimate of event.py's spin, capped lower): a
# set() from a process running on another core is seen in well under a microsecond, where the
# park's way (helper thread, eventfd, the loop waking) costs tens.
EVENT_SPIN_NS = 10_000

USE_WAITV = _e.AIO_SUPPORTED and os.environ.get("SHMLOT_AIO_WAITV", "1") != "0"


# ---- the watch: one per event loop ---------------------------------------------------------------

class _SlotWait:
    """One parked task's slot, watched. ``fired`` once the slot was seen unparked; ``fut`` is
    a weak reference to the future the task awaits now (the watch resolves it with True, its
    poll timer with False): weak, so that the watch (kept per loop) never keeps a loop alive
    through it."""
    __slots__ = ("cookie", "lot", "slot", "fired", "fut", "threaded", "cancelled")

    def __init__(self, cookie, lot, slot, threaded):
        self.cookie = cookie
        self.lot = lot  # kept alive while watched: the helper thread reads its mapping
        self.slot = slot
        self.fired = False
        self.fut = None
        self.threaded = threaded  # a thread of its own (else the C watch's helpers)
        self.cancelled = False

    def fire(self):
        self.fired = True
        fut = self.fut() if self.fut is not None else None
        if fut is not None and not fut.done():
            fut.set_result(True)


class _Handle:
    """A watch's C handle, apart from the watch: the loop's finalizer holds this (holding the
    watch would keep the loop alive through the futures it resolves)."""
    __slots__ = ("a", "pid")

    def __init__(self, a, pid):
        self.a, self.pid = a, pid


def _close_watch(handle):
    """The loop is gone: stop the helper threads. Waits of tasks destroyed after it (their
    coroutines closed) still leave the queue, with nothing left to disarm."""
    a, handle.a = handle.a, None
    if a is not None and os.getpid() == handle.pid:  # a fork child has no threads
        a.close()


class _Watch:
    """Fires a loop's _SlotWaits when their slots are unparked: through the C watch (futex_waitv
    helper threads and an eventfd) for futex lots, through a thread per wait otherwise."""
    DRAIN = 256

    def __init__(self, loop):
        self._loop_ref = weakref.ref(loop)
        self._pid = os.getpid()
        self._waits = {}
        self._cookies = itertools.count(1)
        self._h = _Handle(None, self._pid)

    @property
    def _a(self):
        return self._h.a

    def _c_watch(self):
        if self._h.a is None:
            self._h.a = _e.Watch(self.DRAIN)
            loop = self._loop_ref()
            loop.add_reader(self._h.a.fd(), self._drain)
            weakref.finalize(loop, _close_watch, self._h)
        return self._h.a

    def arm(self, lot, slot):
        w = _SlotWait(next(self._cookies), lot, slot,
                      threaded=not (USE_WAITV and _e.watched_by_watch(lot)))
        if not w.threaded:
            self._c_watch().add(lot, slot, w.cookie)
        else:
            threading.Thread(target=self._thread_wait, args=(w,), daemon=True,
                             name="shmlot-aio-wait").start()
        self._waits[w.cookie] = w
        return w

    def disarm(self, w):
        """Stop watching (the task leaves the queue next). Harmless once fired."""
        if self._waits.pop(w.cookie, None) is None:
            return
        if not w.threaded:
            if self._a is not None:
                self._a.remove(w.cookie)
        else:
            w.cancelled = True  # its thread exits at its next wake-up, which this gives it
            _e.slot_wake_sleeper(w.lot, w.slot)

    def age(self, w):
        """The wait has lasted a while: its slot moves to a packed helper group (waitv.c)."""
        if not w.threaded and self._a is not None and w.cookie in self._waits:
            self._a.age(w.cookie)

    def _drain(self):
        waits = self._waits
        while self._a is not None:
            cookies = self._a.drain()
            for cookie in cookies:
                w = waits.pop(cookie, None)
                if w is not None:
                    w.fire()
            if len(cookies) < self.DRAIN:
                return

    def _fire_cookie(self, cookie):
        w = self._waits.pop(cookie, None)
        if w is not None:
            w.fire()

    def _thread_wait(self, w):
        """A wait's own thread (no futex_waitv, or the semaphore backend)."""
        lot, slot = w.lot, w.slot
        while not w.cancelled:
            if _e.slot_unparked(lot, slot):
                loop = self._loop_ref()
                if loop is not None:
                    try:
                        loop.call_soon_threadsafe(self._fire_cookie, w.cookie)
                    except RuntimeError:
                        pass  # the loop is closed
                return
            _e.slot_sleep(lot, slot, _e.now_ns() + THREAD_SLICE_NS)
        # the futex wake we last took may have been meant for whoever parks on the slot now
        _e.slot_wake_sleeper(lot, slot, exiting=True)

    def stats(self):
        if self._a is None:
            return {"watched": 0, "threads": 0, "waits": len(self._waits)}
        watched, threads = self._a.stats()
        return {"watched": watched, "threads": threads, "waits": len(self._waits)}


_watches = weakref.WeakKeyDictionary()


def _watch(loop):
    w = _watches.get(loop)
    if w is None or w._pid != os.getpid():
        w = _watches[loop] = _Watch(loop)
    return w


def watch_stats():
    """The running loop's watch: slots watched by helper threads, helper threads, waits."""
    return _watch(asyncio.get_running_loop()).stats()


# ---- parking a task --------------------------------------------------------------------------------

def _settle(fut):
    if not fut.done():
        fut.set_result(False)


async def _sleep(lot, slot, poll=None):
    """Await the slot's unpark: True once unparked, False when ``poll()`` (run every OWNER_POLL
    seconds) says to leave. The caller then finishes or cancels the park; on an exception
    (cancellation) the slot is no longer watched and the caller cancels the park."""
    loop = asyncio.get_running_loop()
    watch = _watch(loop)
    w = watch.arm(lot, slot)
    try:
        aged = False
        while not w.fired:
            fut = loop.create_future()
            w.fut = weakref.ref(fut)
            timer = loop.call_later(OWNER_POLL, _settle, fut)
            try:
                await fut
            finally:
                timer.cancel()
            if w.fired or _e.slot_unparked(lot, slot):
                return True
            if poll is not None and poll():
                return False
            if not aged:
                watch.age(w)
                aged = True
        return True
    finally:
        w.fut = None
        watch.disarm(w)


async def _full_backoff(lot, n):
    """No free slot: count it and wait a randomised, growing interval (never LotFullError)."""
    _e.count(lot, _e.FULL_WAITS)
    await asyncio.sleep(_e.full_delay(n))


async def _park(lot, key, validate, poll=None, hint=0, pass_on=None):
    """Park the task on ``key`` until unparked: returns the unpark token, or None when it did
    not sleep or was not unparked (validate false, ``poll()`` said to leave, no free slot): the
    caller re-checks its condition. On an exception (cancellation) the task leaves the queue,
    and ``pass_on(token)`` runs if an unparker had got there first."""
    rc, slot = _e.task_park(lot, key, validate=validate, hint=hint)
    if rc == _e.PARK_INVALID_CODE:
        return None
    if rc == _e.EFULL:
        await _full_backoff(lot, FULL_BACKOFF_STEPS)
        return None
    try:
        woke = await _sleep(lot, slot, poll)
    except BaseException:
        token = _e.task_cancel(lot, slot)
        if token is not None and pass_on is not None:
            pass_on(token)
        raise
    if woke:
        return _e.task_finish(lot, slot)
    return _e.task_cancel(lot, slot)


def _spin(done):
    """parking_lot's brief spin before parking, in the loop's thread (microseconds): a
    hand-off that is about to happen costs no park."""
    spin = SpinWait()
    while spin.spin():
        if done():
            return True
    return False


class _Wrapper:
    """Shared by the async kinds: the synchronous object they stand on."""
    _SYNC = None

    @classmethod
    def from_sync(cls, obj):
        """The async face of an existing synchronous object (same words, same waiters)."""
        if not isinstance(obj, cls._SYNC):
            raise TypeError(f"{cls.__name__}.from_sync needs a shmlot.{cls._SYNC.__name__}, "
                            f"not {type(obj).__name__}")
        self = cls.__new__(cls)
        self._bind(obj)
        return self

    def _bind(self, obj):
        self._sync = obj

    @property
    def sync(self):
        """The synchronous object on the same words."""
        return self._sync

    @property
    def key(self):
        return self._sync.key

    @property
    def name(self):
        return self._sync.name

    def __reduce__(self):
        return (type(self).from_sync, (self._sync,))

    def __repr__(self):
        return f"<shmlot.aio.{repr(self._sync)[len('<shmlot.'):]}"


# ---- Lock ------------------------------------------------------------------------------------------

class _WordLockMixin:
    """Acquiring a lock word (Lock, or an RLock taken as a plain lock) from a task."""

    def _me(self):
        return _fast.self_owner_bits() | LOCKED

    def _try(self, lock, me):
        word = lock._word()
        while not word & LOCKED:
            ok, word = lock._cas_word(word, me | (word & PARKED))
            if ok:
                self._taken(lock)
                return True
        return False

    @staticmethod
    def _taken(lock):
        if isinstance(lock, _locks.RLock):
            lock._set_count(1)

    async def _acquire_word(self, lock):
        me = self._me()
        if self._try(lock, me):
            return True
        lot = lock._place.lot
        spin = SpinWait()
        full = 0
        while True:
            word = lock._word()
            if not word & LOCKED:
                if self._try(lock, me):
                    return True
                continue
            if not word & PARKED:
                if spin.spin():
                    continue
                ok, _ = lock._cas_word(word, word | PARKED)
                if not ok:
                    continue
            rc, slot = _e.task_word_park(lot, lock._lockword)
            if rc == _e.EFULL:
                full += 1
                await _full_backoff(lot, full)
                continue
            if rc == _e.PARK_INVALID_CODE:
                continue
            full = 0
            owner_dead = []

            def poll():
                # leave the queue if the lock is free (an unlocker killed before it woke us) or
                # its owner died
                current = lock._word()
                if not current & LOCKED:
                    return True
                if not _locks.owner_alive(current):
                    owner_dead.append(current)
                    return True
                return False

            try:
                woke = await _sleep(lot, slot, poll)
            except BaseException:
                self._leave_word(lock, slot, me)
                raise
            rc, token = 0, 0
            if woke:  # finish: the token says whether the lock is ours (handed over or taken)
                rc, token = _e.task_word_finish(lot, slot, lock._lockword)
            if rc != _e.PARK_DONE:  # poll said leave: settle it with any unparker
                token = _e.task_word_cancel(lot, slot, lock._lockword) or 0
            if token == TOKEN_HANDOFF:
                self._taken(lock)
                return True
            if owner_dead:
                try:  # the word as it is now (leaving may have cleared PARKED)
                    lock._take_if_owner_dead(lock._word(), me)
                except OwnerDiedError:
                    self._taken(lock)
                    raise
            spin.reset()

    def _leave_word(self, lock, slot, me):
        """A cancelled waiter leaves the queue and passes on what it was given meanwhile."""
        token = _e.task_word_cancel(lock._place.lot, slot, lock._lockword)
        if token is None:
            return
        if token == TOKEN_HANDOFF:
            self._taken(lock)
            lock.release()  # handed to us: give it to the next one
            return
        # a plain wake-up: the lock was left free for us; if others wait, wake one of them by
        # taking and releasing it (the release unparks, PARKED being set)
        word = lock._word()
        if word & PARKED and not word & LOCKED and self._try(lock, me):
            lock.release()


class Lock(_WordLockMixin, _Wrapper):
    """``asyncio.Lock`` across processes, on a ``shmlot.Lock``'s word: ``Lock()`` anonymous,
    ``Lock(name="jobs")`` named (the same lock as ``shmlot.Lock(name="jobs")``),
    ``Lock.from_sync(lock)`` on an existing one."""
    _SYNC = _locks.Lock

    def __init__(self, *, name=None, lot=None):
        self._bind(_locks.Lock(name=name, lot=lot))

    def locked(self):
        return self._sync.locked()

    async def acquire(self):
        """Take the lock, waiting as long as it takes; True. ``OwnerDiedError`` (with the lock
        now held) if its holder died."""
        return await self._acquire_word(self._sync)

    def release(self):
        """Release the lock (any task or thread may, as with asyncio.Lock)."""
        self._sync.release()

    async def __aenter__(self):
        await self.acquire()

    async def __aexit__(self, *exc):
        self.release()


# ---- Event, Semaphore, BoundedSemaphore ----------------------------------------------------------

class Event(_Wrapper):
    """``asyncio.Event`` across processes, on a ``shmlot.Event``'s words."""
    _SYNC = _event.Event

    def __init__(self, *, name=None, lot=None):
        self._bind(_event.Event(name=name, lot=lot))

    def _bind(self, obj):
        super()._bind(obj)
        # The flag's calls are the synchronous object's own C methods, bound here (as
        # threading.Condition binds its lock's acquire and release): a ping-pong's set() and
        # clear() then cost no Python frame of ours. The methods below document them.
        self.is_set, self.set, self.clear = obj.is_set, obj.set, obj.clear

    def is_set(self):
        return self._sync.is_set()

    def set(self):
        self._sync.set()

    def clear(self):
        self._sync.clear()

    async def wait(self):
        """Wait until the flag is set; True (also when a set() released this wait and a clear()
        followed before the task ran, as with threading.Event)."""
        ev = self._sync
        start = ev._spin_wait(EVENT_SPIN_NS)
        if start is True:
            return True
        word = ev._words[0]
        gen = start & _event.GEN_MASK

        def done():
            w = word.load()
            return bool(w & _event.FLAG) or (w & _event.GEN_MASK) != gen

        if _spin(done):
            return True
        lot, key, waiters = ev._place.lot, ev._place.key, ev._words[1]
        waiters.fetch_add(1)  # before the re-check: set() reads it after its CAS
        try:
            while not done():
                # done() as the poll: a set() killed between its CAS and its wake-up
                await _park(lot, key, lambda: not done(), done)
            return True
        finally:
            waiters.fetch_sub(1)


class Semaphore(_Wrapper):
    """``asyncio.Semaphore(value=1)`` across processes, on a ``shmlot.Semaphore``'s words."""
    _SYNC = _semaphore.Semaphore

    def __init__(self, value=1, *, name=None, lot=None):
        self._bind(self._SYNC(value, name=name, lot=lot))

    def locked(self):
        """True when an acquire() would wait (the value is 0)."""
        return self._sync._value() == 0

    async def acquire(self):
        """Take one unit, waiting while there is none; True."""
        sem = self._sync
        if sem._try_take():
            return True
        value, waiters = sem._words[0], sem._words[1]
        lot, key = sem._place.lot, sem._place.key
        if _spin(lambda: value.load() > 0) and sem._try_take():
            return True

        def pass_on(_token):
            # the unit a release() woke us for may be left: wake the next waiter for it
            if value.load():
                _e.unpark_one(lot, key)

        waiters.fetch_add(1)
        try:
            while not sem._try_take():
                await _park(lot, key, lambda: value.load() == 0, lambda: value.load() != 0,
                            pass_on=pass_on)
            return True
        finally:
            waiters.fetch_sub(1)

    def release(self, n=1):
        self._sync.release(n)

    async def __aenter__(self):
        await self.acquire()

    async def __aexit__(self, *exc):
        self.release()


class BoundedSemaphore(Semaphore):
    """``asyncio.BoundedSemaphore``: release() beyond the initial value raises ValueError."""
    _SYNC = _semaphore.BoundedSemaphore


# ---- Condition -------------------------------------------------------------------------------------

class Condition(_WordLockMixin, _Wrapper):
    """``asyncio.Condition(lock=None)`` across processes, on a ``shmlot.Condition``: ``lock`` is
    a ``shmlot.aio.Lock`` or ``shmlot.Lock``; without one, the condition's own lock (an RLock,
    which tasks take as a plain lock). ``Condition(name="jobs")`` is the same condition and lock
    as ``shmlot.Condition(name="jobs")``. Notified waiters move onto the lock's queue, as the
    synchronous ones do."""
    _SYNC = _condition.Condition

    def __init__(self, lock=None, *, name=None, lot=None):
        if isinstance(lock, Lock):
            lock = lock.sync
        elif lock is not None and not isinstance(lock, _locks.Lock):
            raise TypeError("an aio.Condition needs a shmlot.aio.Lock or shmlot.Lock, "
                            f"not {type(lock).__name__}")
        self._bind(_condition.Condition(lock, name=name, lot=lot))

    def _bind(self, cond):
        self._sync = cond
        self._lock = cond._lock

    def locked(self):
        return self._lock.locked()

    async def acquire(self):
        return await self._acquire_word(self._lock)

    def release(self):
        self._lock.release()

    async def __aenter__(self):
        await self.acquire()

    async def __aexit__(self, exc_type, *exc):
        if exc_type is GeneratorExit and self._lock._word() & ~PARKED != self._me():
            return  # closed in wait() without the lock back: it is not ours to release
        self.release()

    def notify(self, n=1):
        """Wake up to ``n`` waiters (the lock must be held by this loop's thread)."""
        self._sync.notify(n)

    def notify_all(self):
        self._sync.notify_all()

    async def wait_for(self, predicate):
        result = predicate()
        while not result:
            await self.wait()
            result = predicate()
        return result

    async def _reacquire(self):
        """Take the lock back, through cancellations (as asyncio.Condition does): the lock is
        held when wait() returns or raises."""
        cancelled = None
        while True:
            try:
                await self._acquire_word(self._lock)
                break
            except asyncio.CancelledError as exc:
                cancelled = exc
        if cancelled is not None:
            raise cancelled

    async def wait(self):
        """Release the lock, wait for a notify, take the lock again; True. Cancelled, it still
        returns holding the lock, and a notification it had received goes to another waiter."""
        lock, cond = self._lock, self._sync
        lot, cv_key = cond._place.lot, cond._cv_key
        me = self._me()
        if lock._word() & ~PARKED != me:
            raise RuntimeError("cannot wait on un-acquired lock")
        word = lock._lockword
        # queued on the condition's key, then the lock released, in one core call: no notify can
        # fall between the two
        rc, slot = _e.task_cond_park(lot, cv_key, word)
        if rc == _e.EFULL:
            self.release()
            try:
                await _full_backoff(lot, FULL_BACKOFF_STEPS)
            finally:
                await self._reacquire()
            return True  # as a spurious wake-up

        def poll():  # requeued onto the lock, whose holder died: leave, the re-acquire reports it
            word = lock._word()
            return bool(word & LOCKED) and not _locks.owner_alive(word)

        cancelled = None
        try:
            woke = await _sleep(lot, slot, poll)
        except BaseException as exc:
            cancelled, woke = exc, False
        rc, token = 0, 0
        if woke:
            rc, token = _e.task_word_finish(lot, slot, word)
        notified = rc == _e.PARK_DONE
        if not notified:  # leave the queue, settling the race with a notify or an unlock
            notified, token = _e.task_cond_cancel(lot, slot, cv_key, word)
        if token == TOKEN_HANDOFF:
            self._taken(lock)  # handed over by the lock's unlocker, or taken when woken
        elif isinstance(cancelled, GeneratorExit):
            # the coroutine is being closed (its loop is gone): no awaiting; take the lock if it
            # is free, for the ``async with`` around us to release (see __aexit__)
            self._try(lock, me)
            raise cancelled
        else:
            await self._reacquire()
        if cancelled is not None:
            if notified:
                cond.notify(1)  # pass the notification on
            raise cancelled
        return True


# ---- Barrier ---------------------------------------------------------------------------------------

class Barrier(_Wrapper):
    """``asyncio.Barrier(parties)`` across processes, on a ``shmlot.Barrier``: threads and tasks
    of any process may be its parties. A cancelled party leaves the round it waited in (it no
    longer counts); a party whose process dies breaks the barrier."""
    _SYNC = _barrier.Barrier

    def __init__(self, parties, *, name=None, lot=None):
        self._bind(_barrier.Barrier(parties, name=name, lot=lot))

    parties = property(lambda self: self._sync.parties)
    n_waiting = property(lambda self: self._sync.n_waiting)
    broken = property(lambda self: self._sync.broken)

    async def reset(self):
        self._sync.reset()

    async def abort(self):
        self._sync.abort()

    async def wait(self):
        """Wait until all parties have arrived; returns this party's arrival index."""
        b = self._sync
        lot, key = b._place.lot, b._place.key
        state = b._words[1]
        parties = b._words[0].load()
        pid, tid, start = _fast.self_ident()
        _e.hold_add(lot, key, pid, tid, start, _barrier.HOLD_MODE)  # see Barrier.wait
        try:
            while True:
                s = state.load()
                if s & _barrier.BROKEN:
                    raise BrokenBarrierError
                index = s & _barrier.COUNT_MASK
                if index >= parties:  # the round is being released: join the next one
                    await self._park_while(lambda s=s: state.load() == s)
                    continue
                ok, _ = state.compare_exchange(s, s + 1)
                if not ok:
                    continue
                if index + 1 == parties:
                    return b._release_round(s + 1, index)
                gen = _barrier._gen(s)
                try:
                    await self._park_while(lambda: b._same_round(gen))
                except BrokenBarrierError:
                    raise
                except BaseException:
                    b._withdraw(gen, parties)
                    raise
                step = (_barrier._gen(state.load()) - gen) % (1 << 31)
                if step == 0 or step % 2 == 1:  # broken, or reset
                    raise BrokenBarrierError
                return index
        finally:
            _e.hold_remove(lot, key, pid, tid, _barrier.HOLD_MODE)

    async def _park_while(self, waiting):
        b = self._sync
        lot, key = b._place.lot, b._place.key
        died = []

        def party_died():
            if _e.hold_take_dead(lot, key) > 0:
                died.append(True)
            return bool(died) or not waiting()

        b._words[2].fetch_add(1)
        try:
            while waiting():
                if died:
                    b._break()
                    raise BrokenBarrierError
                await _park(lot, key, waiting, party_died)
        finally:
            b._words[2].fetch_sub(1)


# ---- RWLock ----------------------------------------------------------------------------------------

class _Held:
    """``async with rw.read():`` / ``rw.write()``."""
    __slots__ = ("_acquire", "_release")

    def __init__(self, acquire, release):
        self._acquire, self._release = acquire, release

    async def __aenter__(self):
        await self._acquire()

    async def __aexit__(self, *exc):
        self._release()


class RWLock(_Wrapper):
    """A reader-writer lock for tasks, on a ``shmlot.RWLock``'s words: ``await
    acquire_read()`` / ``release_read()``, ``await acquire_write()`` / ``release_write()``,
    ``async with rw.read():`` / ``async with rw.write():``. Writers are preferred as in the
    synchronous one; read shares are counted per thread (see the module's doc)."""
    _SYNC = _rwlock.RWLock

    def __init__(self, *, name=None, lot=None):
        self._bind(_rwlock.RWLock(name=name, lot=lot))

    def read(self):
        return _Held(self.acquire_read, self.release_read)

    def write(self):
        return _Held(self.acquire_write, self.release_write)

    async def acquire_read(self):
        rw = self._sync
        if rw._try_read():
            return True
        return await self._wait(rw._place.key, rw._read_blocked, rw._try_read)

    def release_read(self):
        self._sync.release_read()

    async def acquire_write(self):
        """The write lock; ``OwnerDiedError`` (write lock held) if its writer died."""
        rw = self._sync
        if rw._try_write():
            return True
        lot = rw._place.lot
        # this task's mark of waiting as a writer, set and cleared by the core with the count of
        # waiting writers and the hold (a cell of its own: the tasks of a loop share a thread)
        waiting = _e.new_cell()
        full = 0
        try:
            while True:
                rc, _ = rw._step(_e.RW_WAIT, False, waiting)  # new readers now wait for us
                if rc != _e.EFULL:
                    break
                if rw._try_write():  # the hold table is full: back off, as the sync one does
                    return True
                full += 1
                await _full_backoff(lot, full)
            return await self._wait(rw._wkey, lambda: rw._words[0].load() != 0, rw._try_write)
        finally:
            if waiting[0]:
                _, left = rw._step(_e.RW_UNWAIT, False, waiting)
                # a writer leaving the queue (cancelled) may be what kept readers out
                if left <= 1 and rw._words[1].load() and not rw._words[0].load() & LOCKED:
                    _e.unpark_all(lot, rw._place.key, token=_rwlock.TOKEN_READ_GRANT)

    def release_write(self):
        self._sync.release_write()

    async def _wait(self, key, blocked, try_take):
        rw = self._sync
        lot = rw._place.lot
        writer = key == rw._wkey
        if _spin(lambda: not blocked()) and try_take():
            return True
        writer_died = []
        phase_seen = []

        def poll():  # as RWLock._wait's
            try:
                if writer and rw._words[0].load() == _rwlock.READ_PHASE:
                    if phase_seen:
                        rw._end_read_phase()
                        return True
                    phase_seen.append(True)
                return rw._reclaim() or not blocked()
            except OwnerDiedError:
                writer_died.append(True)
                return True

        def pass_on(token):
            # what the unparker meant for us goes to the next one
            if writer:
                if rw._words[0].load() == 0 and rw._words[2].load() > 1:
                    lot.unpark_one(rw._wkey)
            elif token == _rwlock.TOKEN_READ_GRANT and rw._words[0].load() == _rwlock.READ_PHASE:
                rw._end_read_phase()  # let in first, but nobody came: writers may go
                rw._after_reader_exit(0)

        if not writer:
            rw._words[1].fetch_add(1)
        granted = False
        try:
            while True:
                if try_take(granted):
                    return True
                token = await _park(lot, key, blocked, poll, rw._words[0].load(), pass_on)
                if writer_died:
                    rw._raise_writer_died()
                granted = token == _rwlock.TOKEN_READ_GRANT
        finally:
            if not writer:
                rw._words[1].fetch_sub(1)
