"""The engine: the one interface the primitives use to reach the native core.

Every primitive (``locks``, ``condition``, ``semaphore``, ``event``, ``barrier``, ``rwlock``,
``aio``) and the placement code reach the core (``shmlot._core``, the cffi library) through the
functions of this module and nothing else; ``lot.py`` builds the lot handles these functions take
and keeps the public low-level API (``ParkingLot.park``, ``unpark_*``), which runs through the
same functions. Each function is one core call (or a short loop around one), with keyword-only
options, and says what runs under the bucket lock. A lot handle carries what the calls need: the
C handle (``_l``, ``_h()`` refusing a closed handle), the slot count, the sleep backend
(``_sleep``, ``_sleep.py``) and its code, per-thread scratch (``_local``); only this module and
``lot.py`` read them.

Sections: constants (from the core's exports), errors, deadlines, the callbacks the core calls,
lock words (``LockWord``, unlock, the C Condition wait), park, unpark, the waiter-count wait
loop, a full table, registry objects, holds, RWLock steps, asyncio task parks, placement.

Time: every wait takes one form from the public method down to the core, an absolute
CLOCK_MONOTONIC **deadline in nanoseconds**, ``NO_DEADLINE`` (0) for none. The public methods
turn the caller's ``(blocking, timeout)`` into it once, by threading's rules
(``acquire_deadline``, ``wait_deadline``); ``EXPIRED`` is a deadline that has always passed.

Callbacks (``validate``, ``timed_out``, ``callback``, ``filter``) run in the calling thread with
the bucket lock held: they must be short, and any lot operation they call raises
``RuntimeError``. An exception a callback raises propagates after the bucket is unlocked, with
the queue as it was (a raising ``validate`` enqueues nothing).
"""
import errno
import math
import random
import threading
import time

from . import _fast
from ._core import ffi, lib
from ._results import (PARK_INVALID, PARK_TIMED_OUT, DEFAULT_UNPARK_TOKEN, FilterOp,
                       ParkResult, RequeueOp, UnparkResult)
from ._sleep import FutexSleep, SemaphoreSleep
from .errors import LotCorruptError, LotFullError, LotNotFoundError, ObjectGoneError
from .keys import check_u64
from .spinwait import SpinWait

# ---- constants ----------------------------------------------------------------------------------
# The numbers the core shares with Python are defined once, in _native/api.h; the Python layer
# takes them from here.

FUTEX, SEMAPHORE = lib.SL_WAITER_FUTEX, lib.SL_WAITER_SEMAPHORE  # sleep backends (lot header)

# lot creation: limits, defaults, and how long attach waits for a creator to finish
NAME_MAX = lib.SL_NAME_MAX
DEFAULT_BUCKETS = lib.SL_DEFAULT_BUCKETS
DEFAULT_SLOTS = lib.SL_DEFAULT_SLOTS
DEFAULT_OBJECTS = lib.SL_DEFAULT_OBJECTS
DEFAULT_HOLDS = lib.SL_DEFAULT_HOLDS
ATTACH_WAIT_NS = lib.SL_ATTACH_WAIT_NS

LOCKED = _fast.LOCKED_BIT   # lock word bits (api.h)
PARKED = _fast.PARKED_BIT
LOCK_SIZE, RLOCK_SIZE = _fast.LOCK_SIZE, _fast.RLOCK_SIZE  # bytes of a Lock, an RLock
RLOCK_COUNT_OFFSET = _fast.RLOCK_COUNT_OFFSET  # an RLock's u32 count, after its word
EVENT_FLAG, EVENT_GEN_ONE = _fast.EVENT_FLAG, _fast.EVENT_GEN_ONE  # an Event's word 0
RW_READER, RW_READ_PHASE = lib.SL_RW_READER, lib.SL_RW_READ_PHASE  # an RWLock's state word
# Unpark tokens: a lock handed over (the word names the woken thread; TOKEN_NORMAL: woken, the
# lock left free); readers let in although writers wait.
TOKEN_NORMAL, TOKEN_HANDOFF = _fast.TOKEN_NORMAL, _fast.TOKEN_HANDOFF
TOKEN_READ_GRANT = lib.SL_TOKEN_READ_GRANT
OWNER_POLL_NS = _fast.OWNER_POLL_NS  # how often a parked waiter checks that an owner is alive

NO_DEADLINE = lib.SL_DEADLINE_NONE  # a deadline: none
EXPIRED = lib.SL_DEADLINE_EXPIRED   # a deadline passed before any call (a timeout of 0, <0)

# A sleeping thread wakes at least this often to re-check its slot and let signals in: 50 ms on
# the main thread (Ctrl-C must land within 0.2 s), 1 s on others (the cost of a wake-up lost to
# a death).
SLICE_MAIN_NS, SLICE_OTHER_NS = _fast.SLICE_MAIN_NS, _fast.SLICE_OTHER_NS
# How often a sleeping thread looks whether the lot's name still leads to its lot, and how often
# default_lot() does.
SPLIT_CHECK_NS = lib.SL_SPLIT_CHECK_NS
DEFAULT_CHECK_NS = lib.SL_DEFAULT_CHECK_NS

_NO_SLOT = _fast.NO_SLOT  # "no slot" in the per-thread out-parameter of the park calls
# what one sleep of a sleep backend returns
SLEEP_UNPARKED, SLEEP_INTERRUPTED = lib.SL_SLEEP_UNPARKED, lib.SL_SLEEP_INTERRUPTED

# core return codes the primitives act on
EFULL = lib.SL_EFULL
ETIMEDOUT = lib.SL_ETIMEDOUT
PARK_DONE = lib.SL_PARK_DONE
PARK_INVALID_CODE = lib.SL_PARK_INVALID

# counters (ParkingLot.info()["counters"])
COUNTERS = {
    "parks": lib.SL_C_PARKS, "unparks": lib.SL_C_UNPARKS, "timeouts": lib.SL_C_TIMEOUTS,
    "requeues": lib.SL_C_REQUEUES, "fair_handoffs": lib.SL_C_FAIR_HANDOFFS,
    "owner_deaths": lib.SL_C_OWNER_DEATHS, "reaped": lib.SL_C_REAPED,
    "full_waits": lib.SL_C_FULL_WAITS, "invalid_parks": lib.SL_C_INVALID,
    "bucket_repairs": lib.SL_C_BUCKET_REPAIRS, "woken_ahead": lib.SL_C_WOKEN_AHEAD,
}
OWNER_DEATHS = lib.SL_C_OWNER_DEATHS
FULL_WAITS = lib.SL_C_FULL_WAITS

HOLD_COUNTED = lib.SL_HOLD_COUNTED  # a hold mode bit: shares the primitive counts itself

# RWLock bookkeeping steps (sl_rw_step) and their outcomes
RW_READ, RW_UNREAD, RW_WAIT, RW_UNWAIT = lib.SL_RW_READ, lib.SL_RW_UNREAD, lib.SL_RW_WAIT, \
    lib.SL_RW_UNWAIT
RW_RECLAIM_READERS, RW_RECLAIM_WRITERS = lib.SL_RW_RECLAIM_READERS, lib.SL_RW_RECLAIM_WRITERS
RW_DONE, RW_BUSY, RW_NOT_HELD = lib.SL_RW_DONE, lib.SL_RW_BUSY, lib.SL_RW_NOT_HELD

NULL = ffi.NULL

FULL_BACKOFF_MIN = 0.0005  # seconds; doubles per consecutive full park, up to FULL_BACKOFF_MAX
FULL_BACKOFF_MAX = 0.05

# ---- errors ------------------------------------------------------------------------------------

_tls = threading.local()  # .pending: the exception a callback raised, .ctx per thread, .full


def _stash(exc_type, exc_value, tb):
    """cffi onerror hook: keep a callback's exception for the caller to re-raise."""
    _tls.pending = exc_value if exc_value is not None else exc_type()
    return None


def error(rc, what=""):
    """The exception for a negative return code of the core."""
    msg = ffi.string(lib.sl_last_error()).decode("utf-8", "replace")
    if what:
        msg = f"{what}: {msg}" if msg else what
    if rc == lib.SL_ECALLBACK:
        exc = getattr(_tls, "pending", None)
        _tls.pending = None
        return exc if exc is not None else RuntimeError(msg)
    if rc == lib.SL_ECORRUPT:
        return LotCorruptError(msg)
    if rc == lib.SL_EFULL:
        return LotFullError(msg)
    if rc == lib.SL_EREENTRANT:
        return RuntimeError(msg)
    if rc == lib.SL_ETIMEDOUT:
        return TimeoutError(msg)
    if rc == lib.SL_EBADVALUE:
        return ValueError(msg)
    if rc == lib.SL_EGONE:
        return ObjectGoneError(msg)
    err = -rc
    if err == errno.ENOENT:
        return LotNotFoundError(err, msg)
    if err == errno.EEXIST:
        return FileExistsError(err, msg)
    if err in (errno.EACCES, errno.EPERM):
        return PermissionError(err, msg)
    if err == errno.EINVAL:
        return ValueError(msg)
    return OSError(err, msg)


def check(rc, what=""):
    """``rc`` if it is not negative, else raise its exception (``error``)."""
    if rc < 0:
        raise error(rc, what)
    return rc


# ---- deadlines ----------------------------------------------------------------------------------

def now_ns():
    """CLOCK_MONOTONIC in ns (the clock of every deadline)."""
    return lib.sl_now_ns()


def deadline_after(seconds):
    """The deadline ``seconds`` (a number >= 0, or None: NO_DEADLINE) from now."""
    if seconds is None:
        return NO_DEADLINE
    return lib.sl_now_ns() + max(1, int(min(seconds, 1e9) * 1e9))


def park_deadline(timeout):
    """The low-level API's timeout (``ParkingLot.park``), as a deadline: seconds (int/float,
    >= 0) or None; stricter than threading's rules: a negative or NaN one is ValueError, a bool
    TypeError."""
    if timeout is None:
        return NO_DEADLINE
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number or None, not {type(timeout).__name__}")
    if math.isnan(timeout) or timeout < 0:
        raise ValueError(f"timeout must be a non-negative number, got {timeout}")
    return deadline_after(timeout)


# threading's rules for the timeout of Event.wait, Condition.wait, Semaphore.acquire and
# Barrier.wait, as a deadline: None waits for ever; any other number (a bool counts as 0 or 1)
# is seconds, and one that is not positive (or NaN) means "do not wait" (EXPIRED): the call
# returns at once as on a timeout. Anything else: TypeError. In C, so that Condition.wait's C
# path converts by the very same function.
wait_deadline = _fast.wait_deadline


def acquire_deadline(blocking, timeout):
    """threading's ``acquire(blocking=True, timeout=-1)`` rules, as a deadline: non-blocking
    (with no timeout) or 0 is EXPIRED; -1 or None waits for ever; a timeout with a
    non-blocking call, or a negative one, is ValueError; a non-number TypeError."""
    if not blocking:
        if timeout is not None and timeout != -1:
            raise ValueError("can't specify a timeout for a non-blocking call")
        return EXPIRED
    if timeout is None or timeout == -1:
        return NO_DEADLINE
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number, not {type(timeout).__name__}")
    if math.isnan(timeout) or timeout < 0:
        raise ValueError("timeout value must be a non-negative number")
    return EXPIRED if timeout == 0 else deadline_after(timeout)


def passed(deadline):
    """Has ``deadline`` passed (never, for NO_DEADLINE)?"""
    return deadline != NO_DEADLINE and lib.sl_now_ns() >= deadline


def remaining_s(deadline):
    """Seconds left until ``deadline`` (None for NO_DEADLINE), for APIs that take seconds."""
    if deadline == NO_DEADLINE:
        return None
    return max(0.0, (deadline - lib.sl_now_ns()) / 1e9)


# ---- callbacks from C ---------------------------------------------------------------------------
# The core calls these with the bucket lock held; ctx is the calling thread's _Ctx.

class _Ctx:
    """The calling thread's callbacks for the operation under way. ``busy`` is set for the
    whole operation, so an operation started from inside a callback is refused (RuntimeError)
    before it can disturb the outer one's callbacks.

    Operations reset it in ``finally`` with plain attribute stores, not through a method: a
    signal handler's exception (Ctrl-C) can be raised on entry to any Python function, and one
    raised there would leave ``busy`` set for good, after which every lot operation of the
    thread would fail with RuntimeError."""
    __slots__ = ("validate", "timed_out", "callback", "filter", "handle", "busy",
                 "__weakref__")

    def __init__(self):
        self.validate = self.timed_out = self.callback = self.filter = None
        self.busy = False
        self.handle = ffi.new_handle(self)

    def enter(self):
        if self.busy:
            raise RuntimeError("a lot operation cannot be called from a callback that runs "
                               "under a bucket lock")
        self.busy = True
        return self


def _ctx():
    ctx = getattr(_tls, "ctx", None)
    if ctx is None:
        ctx = _tls.ctx = _Ctx()
    return ctx


def in_callback():
    """Is the calling thread inside a lot operation (its callbacks run now)?"""
    return _ctx().busy


def _token(value):
    if value is None:
        return DEFAULT_UNPARK_TOKEN
    return check_u64(value, "unpark token returned by callback")


@ffi.def_extern(error=-1, onerror=_stash)
def sl_py_validate(ctx):
    return 1 if ffi.from_handle(ctx).validate() else 0


@ffi.def_extern(error=-1, onerror=_stash)
def sl_py_timed_out(ctx, key, was_last):
    ffi.from_handle(ctx).timed_out(key, bool(was_last))
    return 0


@ffi.def_extern(error=-1, onerror=_stash)
def sl_py_callback(ctx, result, token):
    token[0] = _token(ffi.from_handle(ctx).callback(UnparkResult._from_c(result)))
    return 0


@ffi.def_extern(error=-1, onerror=_stash)
def sl_py_filter(ctx, park_token):
    op = ffi.from_handle(ctx).filter(park_token)
    if not isinstance(op, FilterOp):
        raise TypeError(f"filter must return a FilterOp, not {type(op).__name__}")
    return int(op)


@ffi.def_extern(error=-1, onerror=_stash)
def sl_py_requeue_validate(ctx):
    op = ffi.from_handle(ctx).validate()
    if not isinstance(op, RequeueOp):
        raise TypeError(f"validate must return a RequeueOp, not {type(op).__name__}")
    return int(op)


@ffi.def_extern(error=-1, onerror=_stash)
def sl_py_requeue_callback(ctx, op, result, token):
    token[0] = _token(ffi.from_handle(ctx).callback(RequeueOp(op), UnparkResult._from_c(result)))
    return 0


# ---- per-lot state ------------------------------------------------------------------------------

def make_sleep(code, handle, lot_id, mode, linked=None):
    """The sleep backend of a lot handle (``_sleep.py``), given the core and the C handle."""
    if code == FUTEX:
        return FutexSleep(lib, handle)
    return SemaphoreSleep(lib, handle, lot_id, mode, linked, sem_name=sem_name)


def sem_name(lot_id, slot):
    """The name of a slot's semaphore on the semaphore backend, as the core spells it
    (``sl_sem_name``; the core's wait opens the semaphore by the same call)."""
    buf = ffi.new("char[]", 48)
    lib.sl_sem_name(lot_id, slot, buf, len(buf))
    return ffi.string(buf).decode("ascii")


class _Scratch:
    """The out-parameters of the core calls, per thread and lot handle."""
    __slots__ = ("woken", "res", "slot", "token", "op", "reaped", "n")

    def __init__(self, nslots):
        self.woken = ffi.new("uint32_t[]", nslots)
        self.res = ffi.new("sl_unpark_result *")
        self.slot = ffi.new("uint32_t *")
        self.token = ffi.new("uint64_t *")
        self.op = ffi.new("int *")
        self.reaped = ffi.new("uint32_t[2]")
        self.n = ffi.new("int *")


def scratch(lot):
    """The calling thread's _Scratch for ``lot``. Published by one store once whole: a signal
    handler's exception (Ctrl-C) striking while it is made leaves none, never a part of one."""
    t = getattr(lot._local, "scratch", None)
    if t is None:
        t = lot._local.scratch = _Scratch(lot._slots)
    return t


def _wake(lot, t, n):
    """After an unpark (bucket lock released): wake the ``n`` slots it took off the queue (the
    futex backend's core has already woken them; the semaphore backend posts here)."""
    if n > 0:
        lot._sleep.wake(t.woken, n)


def count(lot, counter, n=1):
    """Add ``n`` to one of the lot's counters (``COUNTERS``)."""
    lib.sl_count(lot._l, counter, n)


def reap_for_slot(lot):
    """No free slot: free those of dead processes (the caller then retries once)."""
    t = scratch(lot)
    lib.sl_reap(lot._h(), t.reaped, t.reaped + 1)


# ---- lock words ---------------------------------------------------------------------------------

class LockWord:
    """What the core needs to park on, unlock or release a lock word (a ``Lock``, an ``RLock``):
    ``key`` (the key its waiters park on), ``word_id`` (its identity, ``Place.word``: a lock is
    handed only to a waiter parked for the same word), ``ptr`` (its address in this process)
    and ``count_ptr`` (an RLock's recursion count, NULL for a Lock). A lock makes one with
    ``lock_word`` and hands it to the engine's calls."""
    __slots__ = ("key", "word_id", "ptr", "count_ptr", "address", "count_address")

    def __init__(self, key, word_id, address, count_address):
        self.key = key
        self.word_id = word_id
        self.address = address
        self.count_address = count_address
        self.ptr = ffi.cast("uint64_t *", address)
        self.count_ptr = ffi.cast("uint32_t *", count_address) if count_address else ffi.NULL


def lock_word(place, address, counted):
    """The LockWord of a lock placed at ``place`` whose word is at ``address``; ``counted``: an
    RLock, its u32 count in the next 8 bytes."""
    return LockWord(place.key, place.word, address,
                    address + RLOCK_COUNT_OFFSET if counted else 0)


def word_unlock(lot, word, *, force_fair=False):
    """``RawMutex::unlock_slow`` in one core call (sl_word_unlock, no Python callback): under the
    bucket lock, unpark the first waiter on ``word.key`` parked for this word; on be_fair (or
    ``force_fair``) hand the lock over (the waiter's identity written into the word, token
    TOKEN_HANDOFF), else unlock it (PARKED kept while more wait). Returns how many were woken."""
    t = scratch(lot)
    n = check(lib.sl_word_unlock(lot._h(), word.key, word.word_id, word.ptr, bool(force_fair),
                                 t.woken, lot._slots), "unlock")
    _wake(lot, t, n)
    return n


def cond_notify_all(lot, cv_key, word):
    """Condition.notify_all in one core call (sl_cond_notify_all, no Python callback): with the
    lock ``word`` held, set PARKED on it and move every waiter on ``cv_key`` to its queue.
    Returns how many moved, or None if the word is not LOCKED (nothing moved)."""
    n = lib.sl_cond_notify_all(lot._h(), cv_key, word.key, word.ptr)
    return None if n == lib.SL_PARK_INVALID else check(n, "notify_all")


def cond_waiter(lot, cv_key, word, lock, slow):
    """A ``_fast.CondWaiter``: Condition.wait on ``cv_key`` releasing the lock ``word`` in one
    C call, on either backend (the semaphore backend's sleep and post are its sleep object's).
    ``slow(waiter, code, timeout)`` handles the core's error codes."""
    backend = None if lot._sleep_code == FUTEX else lot._sleep
    return _fast.CondWaiter(lot, int(ffi.cast("uintptr_t", lot._h())), cv_key, word.key,
                            word.word_id, word.address, word.count_address, lock, slow, backend)


# ---- park ---------------------------------------------------------------------------------------

def park(lot, key, *, validate=None, before_sleep=None, timed_out=None, token=0,
         deadline=NO_DEADLINE, poll=None, poll_ns=0, hint=0):
    """Park the calling thread on ``key`` (the primitives' park: never LotFullError).

    Under the key's bucket lock ``validate()`` runs (False: nothing is queued, result
    *invalid*) and the thread is queued at the tail; after the bucket is unlocked
    ``before_sleep()`` runs and the thread sleeps until unparked, ``deadline`` passes, or
    ``poll()`` (run every ``poll_ns`` while asleep) returns True. Leaving without an unpark
    (deadline, poll, an exception) takes the bucket lock again: if an unparker won the race the
    result is *unparked*, else the thread is dequeued and ``timed_out(key, was_last)`` runs under
    it. ``hint`` goes into the slot for introspection. An exception while asleep (Ctrl-C)
    propagates after that, carrying the ParkResult as ``.shmlot_park_result`` if an unpark won.

    When every slot of the lot is taken: wait a little (``full_backoff``) and return a *timed
    out* result, with nothing queued and ``before_sleep`` not run, for the caller to re-check
    its condition and park again."""
    try:
        result = _park(lot, key, validate=validate, before_sleep=before_sleep,
                       timed_out=timed_out, token=token, deadline=deadline, poll=poll,
                       poll_ns=poll_ns, hint=hint)
    except LotFullError:
        full_backoff(lot, deadline)
        return PARK_TIMED_OUT
    _tls.full = 0
    return result


def park_word(lot, word, *, timed_out=None, deadline=NO_DEADLINE, poll=None, poll_ns=0):
    """Park on a lock word (``LockWord``; the lock's slow acquire), never LotFullError (see
    ``park``). The core validates under the bucket lock, without a Python callback, that the
    word is still LOCKED|PARKED (sl_word_park), queues the thread for this word and sleeps a
    first slice inside the same call; the result's token is TOKEN_HANDOFF when the unlocker
    handed the lock over. ``timed_out`` and ``poll`` as for ``park``."""
    try:
        result = _park(lot, word.key, timed_out=timed_out, deadline=deadline, poll=poll,
                       poll_ns=poll_ns, word=word)
    except LotFullError:
        full_backoff(lot, deadline)
        return PARK_TIMED_OUT
    _tls.full = 0
    return result


def park_once(lot, key, *, validate=None, before_sleep=None, timed_out=None, token=0,
              deadline=NO_DEADLINE, poll=None, poll_ns=0, hint=0):
    """``park``, but LotFullError when every slot is taken (``ParkingLot.park``)."""
    return _park(lot, key, validate=validate, before_sleep=before_sleep, timed_out=timed_out,
                 token=token, deadline=deadline, poll=poll, poll_ns=poll_ns, hint=hint)


def _park(lot, key, *, validate=None, before_sleep=None, timed_out=None, token=0,
          deadline=NO_DEADLINE, poll=None, poll_ns=0, hint=0, word=None):
    """The park itself (see ``park``): one core call queues the thread (sl_park_begin with a
    Python validate, sl_word_park for a lock ``word``), then the sleeping loop (``_sleep_slices``) and, unless unparked,
    sl_park_cancel. LotFullError when no slot is free (after one reap)."""
    h = lot._h()
    # a wait is a slow path: cheap enough to look (now and then) whether the lot was split
    lot._check_linked(gone_ok=True, every_ns=SPLIT_CHECK_NS)
    t = scratch(lot)
    # the park call writes the slot once the thread is queued: from then on, any exception
    # (a signal handler's may strike between any two bytecodes) must take it out of the
    # queue again, or it stays there as a ghost that absorbs a wake-up meant for another.
    t.slot[0] = _NO_SLOT
    slot = _NO_SLOT
    slept = 0  # ns the core already slept after queueing (sl_word_park)
    ctx = _ctx().enter()
    try:
        try:
            ctx.validate = validate
            for attempt in (0, 1):
                if word is not None:
                    slept = _first_slice(lot, poll, poll_ns)
                    rc = lib.sl_word_park(h, key, word.word_id, word.ptr, deadline, slept,
                                          t.slot, t.token)
                else:
                    rc = lib.sl_park_begin(h, key, token, hint, validate is not None,
                                           ctx.handle, deadline, t.slot)
                if rc != lib.SL_EFULL or attempt:
                    break
                reap_for_slot(lot)
        finally:
            ctx.validate = ctx.timed_out = ctx.callback = ctx.filter = None
            ctx.busy = False  # stores, not a call: see _Ctx
        if rc == lib.SL_PARK_DONE:
            return ParkResult(ParkResult._UNPARKED, t.token[0])  # the core slept and finished
        if rc == lib.SL_PARK_INVALID:
            return PARK_INVALID
        if rc == lib.SL_ETIMEDOUT:
            return PARK_TIMED_OUT  # the bucket lock itself stayed busy past the deadline
        check(rc, "park")
        slot = t.slot[0]
        if before_sleep is not None:
            before_sleep()
        result = _sleep_slices(lot, slot, deadline, poll, poll_ns, slept)
    except BaseException as exc:
        if slot == _NO_SLOT:
            slot = t.slot[0]
            if slot == _NO_SLOT:
                raise  # nothing was queued
        # Leave the queue. Inline, with no Python call before the C call: a further
        # exception must not strike before the slot is out of the queue.
        busy, ctx.busy = ctx.busy, True
        ctx.timed_out = timed_out
        try:
            rc = lib.sl_park_cancel(lot._l, slot, timed_out is not None, ctx.handle, t.token)
        finally:
            ctx.timed_out = None
            ctx.busy = busy
        result = _cancelled(rc, t)
        if result.is_unparked:
            exc.shmlot_park_result = result
        raise
    if result is None:  # timed out (or poll said so): leave the queue, inline as above
        busy, ctx.busy = ctx.busy, True
        ctx.timed_out = timed_out
        try:
            rc = lib.sl_park_cancel(lot._l, slot, timed_out is not None, ctx.handle, t.token)
        finally:
            ctx.timed_out = None
            ctx.busy = busy
        result = _cancelled(rc, t)
    return result


def _slice(poll, poll_ns):
    """How long one sleep lasts before the sleeper looks up (signals, poll)."""
    main = threading.current_thread() is threading.main_thread()
    slice_ns = SLICE_MAIN_NS if main else SLICE_OTHER_NS
    if poll is not None:
        slice_ns = min(slice_ns, poll_ns)
    return slice_ns


def _first_slice(lot, poll, poll_ns):
    """The slice the core sleeps itself right after queueing (0: it does not; the semaphore
    backend's sleep needs its semaphore opened here first)."""
    return _slice(poll, poll_ns) if lot._sleep_code == FUTEX else 0


def _sleep_slices(lot, slot, deadline, poll, poll_ns, slept=0):
    """Sleep until unparked (returns the ParkResult) or deadline/poll (returns None).
    ``slept``: the core has slept a first slice already (look up before sleeping again)."""
    slice_ns = _slice(poll, poll_ns)
    sleep = lot._sleep
    if slept and not lib.sl_park_is_unparked(lot._l, slot) and poll is not None and poll():
        return None
    while True:
        now = lib.sl_now_ns()
        if deadline and now >= deadline:
            return None
        until = now + slice_ns
        if deadline and deadline < until:
            until = deadline
        r = sleep.sleep(slot, until)
        if r == SLEEP_UNPARKED or lib.sl_park_is_unparked(lot._l, slot):
            t = scratch(lot)
            check(lib.sl_park_finish(lot._l, slot, t.token), "park")
            return ParkResult(ParkResult._UNPARKED, t.token[0])
        if r != SLEEP_INTERRUPTED:
            lot._check_linked(gone_ok=True, every_ns=SPLIT_CHECK_NS)
            if poll is not None and poll():
                return None


def _cancelled(rc, t):
    """The ParkResult of sl_park_cancel's return code."""
    if rc == lib.SL_PARK_UNPARKED:
        return ParkResult(ParkResult._UNPARKED, t.token[0])
    if rc == lib.SL_PARK_GONE:
        # the exception struck after _sleep_slices finished the park (and freed the slot, which
        # may be another thread's by now): it was unparked, with the token finish read
        return ParkResult(ParkResult._UNPARKED, t.token[0])
    check(rc, "park")
    return PARK_TIMED_OUT


# ---- unpark -------------------------------------------------------------------------------------

def unpark_one(lot, key, *, callback=None):
    """Unpark the oldest thread parked on ``key``; ``callback(result) -> token`` runs under the
    bucket lock, also when no thread was unparked (its token is then ignored). Returns the
    UnparkResult; the woken thread is woken after the bucket is unlocked."""
    return _unpark(lot, "unpark_one", lambda h, t, ctx: lib.sl_unpark_one(
        h, key, callback is not None, ctx.handle, 0, t.res, t.woken, lot._slots),
        callback=callback)


def unpark_all(lot, key, *, token=DEFAULT_UNPARK_TOKEN):
    """Unpark every thread parked on ``key`` (in queue order, each with ``token``; no Python
    under the bucket lock); returns how many."""
    return _unpark(lot, "unpark_all", lambda h, t, ctx: lib.sl_unpark_all(
        h, key, token, 0, t.res, t.woken, lot._slots), count=True)


def unpark_filter(lot, key, *, filter, callback=None):
    """Under the bucket lock: ``filter(park_token) -> FilterOp`` for each thread parked on
    ``key`` in FIFO order, then ``callback(result) -> token`` once; those the filter said UNPARK
    are unparked with that token. Returns the UnparkResult."""
    return _unpark(lot, "unpark_filter", lambda h, t, ctx: lib.sl_unpark_filter(
        h, key, callback is not None, ctx.handle, 0, t.res, t.woken, lot._slots),
        filter=filter, callback=callback)


def unpark_requeue(lot, key_from, key_to, *, validate, callback=None):
    """Under both buckets' locks (taken in a fixed order): ``validate() -> RequeueOp`` decides,
    threads move in order to the tail of ``key_to``'s queue, and ``callback(op, result) ->
    token`` runs (not after ABORT). Returns the UnparkResult."""
    return _unpark(lot, "unpark_requeue", lambda h, t, ctx: lib.sl_unpark_requeue(
        h, key_from, key_to, callback is not None, ctx.handle, 0, t.res, t.op, t.woken,
        lot._slots), validate=validate, callback=callback)


def _unpark(lot, what, call, *, validate=None, callback=None, filter=None, count=False):
    """One of the core's unparks, ``call(handle, scratch, ctx)``, with the thread's callbacks
    set for it; the threads it took off the queue are woken after it returns (the bucket
    unlocked). Returns the UnparkResult, or with ``count`` how many were unparked."""
    h = lot._h()
    t = scratch(lot)
    ctx = _ctx().enter()
    try:
        ctx.validate = validate
        ctx.callback = callback
        ctx.filter = filter
        n = call(h, t, ctx)
    finally:
        ctx.validate = ctx.timed_out = ctx.callback = ctx.filter = None
        ctx.busy = False  # stores, not a call: see _Ctx
    check(n, what)
    result = n if count else UnparkResult._from_c(t.res)
    _wake(lot, t, n)
    return result


# ---- waiting with a waiter count (Semaphore, Event, Barrier, RWLock) ----------------------------
#
# Their words hold the state; a separate waiter count says whether anyone may be parked, so the
# releasing side skips the lot entirely when nobody waits. No wake-up is lost: a waiter
# increments the count *before* parking with a ``validate`` that re-checks its condition under
# the bucket lock, and a releaser changes the state *before* reading the count, so either the
# waiter's validate sees the new state, or the releaser sees the count and its unpark (which
# takes the same bucket lock) finds the waiter queued.

def wait_until(lot, key, try_take, blocked, waiters, deadline, *, poll=None,
               poll_ns=OWNER_POLL_NS, token=0):
    """Spin, then park on ``key`` until ``try_take()`` succeeds or ``deadline`` passes.

    ``try_take()`` attempts the operation (returns a true value on success), ``blocked()`` says
    whether it would still block (run under the bucket lock as park's validate), ``waiters`` is
    the AtomicU64 waiter count. ``poll()`` runs every ``poll_ns`` while parked (reclaiming what
    dead processes hold); without one, the waiter re-checks ``blocked()`` that often, so a waker
    killed between changing the state and unparking costs at most one interval. Returns
    try_take()'s value, or None when the deadline passed."""
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
    if passed(deadline):
        return None
    waiters.fetch_add(1)
    try:
        while True:
            got = try_take()
            if got:
                return got
            if passed(deadline):
                return None
            park(lot, key, validate=blocked, token=token, deadline=deadline, poll=poll,
                 poll_ns=poll_ns)
    finally:
        waiters.fetch_sub(1)


# ---- a full table -------------------------------------------------------------------------------

def full_done():
    """What was full (a slot, a hold) was found free: the next full wait starts short again."""
    _tls.full = 0


def full_backoff(lot, deadline=NO_DEADLINE):
    """No free slot (or hold): count it (counter ``full_waits``) and sleep a randomised, growing
    interval (never past ``deadline``), so that parked threads get to leave and free theirs."""
    count(lot, FULL_WAITS)
    n = getattr(_tls, "full", 0)
    _tls.full = min(n + 1, 8)
    delay = min(FULL_BACKOFF_MIN * (1 << n), FULL_BACKOFF_MAX) * (0.5 + random.random())
    if deadline != NO_DEADLINE:
        delay = min(delay, remaining_s(deadline))
    time.sleep(delay)


def full_delay(n):
    """The randomised back-off of the ``n``-th consecutive full wait (seconds; asyncio tasks
    sleep it with asyncio.sleep), counted as a full wait by ``count(lot, FULL_WAITS)``."""
    return min(FULL_BACKOFF_MIN * (1 << min(n, 8)), FULL_BACKOFF_MAX) * (0.5 + random.random())


# ---- registry objects ---------------------------------------------------------------------------

def object_create(lot, name, kind):
    """Create-or-open a record named ``name`` ("" for an anonymous one), taking one reference;
    returns (index, created, the kind it actually has)."""
    idx = ffi.new("uint32_t *")
    created = ffi.new("int *")
    check(lib.sl_object_create(lot._h(), name.encode("utf-8"), kind, idx, created),
          f"cannot create object {name!r}" if name else "cannot create object")
    return idx[0], bool(created[0]), lib.sl_object_kind(lot._l, idx[0])


def object_offset(lot, index):
    """Where record ``index``'s words are in the segment."""
    return lib.sl_object_offset(lot._l, index)


def object_kind(lot, index):
    return lib.sl_object_kind(lot._l, index)


def object_gen(lot, index):
    """The record's generation: which object of that index a handle names."""
    return lib.sl_object_gen(lot._l, index)


def object_acquire(lot, index, gen):
    """One more reference to record ``index`` if it still holds generation ``gen``
    (ObjectGoneError if that object was freed)."""
    return check(lib.sl_object_acquire(lot._l, index, gen))


def object_adopt(lot, index, gen, parent_pid, n):
    """In a fork child: take over the parent's pin on record ``index`` as ``n`` references of
    this process (see _placement)."""
    return check(lib.sl_object_adopt(lot._l, index, gen, parent_pid, n), f"object {index}")


def object_ref(lot, index, delta):
    """Add ``delta`` references of this process to record ``index`` (freed at 0)."""
    return check(lib.sl_object_ref(lot._l, index, delta), "object reference")


# ---- holds: who holds which key -----------------------------------------------------------------

def hold_add(lot, key, pid, tid, start, mode):
    """Record (or count once more) a hold of ``mode`` on ``key``; LotFullError if the hold
    table has no room."""
    check(lib.sl_hold_add(lot._h(), key, pid, tid, start, mode), "hold")


def hold_remove(lot, key, pid, tid, mode):
    """Count one hold off; False if there was none."""
    return lib.sl_hold_remove(lot._h(), key, pid, tid, mode) == 0


def hold_take_dead(lot, key):
    """Clear the counted holds of dead processes on ``key``; return the count taken."""
    return check(lib.sl_hold_take_dead(lot._h(), key), "hold")


def holds(lot):
    """Every hold in the lot, as dicts (index, pid, tid, start, key, count, mode)."""
    info = ffi.new("sl_lot_info *")
    lib.sl_info(lot._h(), info)
    out = ffi.new("sl_hold_info[]", max(1, info.nholds))
    k = check(lib.sl_snapshot_holds(lot._l, out, info.nholds), "snapshot")
    return [{"index": e.index, "pid": e.pid, "tid": e.tid, "start": e.start, "key": e.key,
             "count": e.count, "mode": e.mode} for e in out[0:k]]


def holds_on(lot, key):
    """(pid, tid, start, count, mode) of every hold on ``key``."""
    return [(h["pid"], h["tid"], h["start"], h["count"], h["mode"])
            for h in holds(lot) if h["key"] == key]


# ---- RWLock bookkeeping -------------------------------------------------------------------------

def new_cell():
    """A u32 the core counts in (an RWLock's per-thread share count or waiting mark)."""
    return ffi.new("uint32_t[1]")


def rw_step(lot, words, key, wkey, op, granted, cell):
    """One RWLock bookkeeping step (sl_rw_step: count, hold and ``cell`` change together under
    the readers' mutex, word 3 of ``words``, a pointer from ``words_at``). Returns (code, out):
    RW_BUSY (out: the mutex word) when another thread is inside a step, EFULL when the hold
    table has no room; other errors raise."""
    out = ffi.new("uint64_t *")
    rc = lib.sl_rw_step(lot._h(), words, key, wkey, op, granted, cell, out)
    if rc < 0 and rc != lib.SL_EFULL:
        check(rc, "RWLock")
    return rc, out[0]


def words_at(address):
    """The core's pointer to u64 words at ``address`` in this process."""
    return ffi.cast("uint64_t *", address)


# ---- asyncio tasks: parks whose sleep is awaited ------------------------------------------------
#
# A task queues its slot exactly as a thread does, but the sleep is the event loop's: aio.py
# awaits the slot's unpark (watched by the C watch's helper threads, or a thread of its own)
# and then finishes or cancels the park with these calls.

AIO_SUPPORTED = bool(lib.sl_aio_supported())  # futex_waitv (Linux 5.16+)


def task_park(lot, key, *, validate=None, hint=0):
    """Queue the calling task's slot on ``key`` (``validate()`` under the bucket lock; token
    TOKEN_AIO). Returns (code, slot): 0 queued, PARK_INVALID_CODE, or EFULL (no free slot, after
    one reap)."""
    h = lot._h()
    t = scratch(lot)
    ctx = _ctx().enter()
    try:
        ctx.validate = validate
        for attempt in (0, 1):
            rc = lib.sl_park_begin(h, key, lib.SL_TOKEN_AIO, hint, validate is not None,
                                   ctx.handle, 0, t.slot)
            if rc != lib.SL_EFULL or attempt:
                break
            reap_for_slot(lot)
    finally:
        ctx.validate = None
        ctx.busy = False  # stores, not a call: see _Ctx
    if rc not in (0, lib.SL_PARK_INVALID, lib.SL_EFULL):
        check(rc, "park")
    return rc, t.slot[0]


def task_finish(lot, slot):
    """The task's slot was unparked: free it; returns the unpark token."""
    t = scratch(lot)
    check(lib.sl_park_finish(lot._h(), slot, t.token), "park")
    return t.token[0]


def task_cancel(lot, slot):
    """Leave the queue (under the bucket lock): the unpark token if an unparker got there
    first, else None."""
    t = scratch(lot)
    rc = lib.sl_park_cancel(lot._h(), slot, 0, ffi.NULL, t.token)
    if rc in (lib.SL_PARK_UNPARKED, lib.SL_PARK_GONE):
        return t.token[0]
    check(rc, "park")
    return None


def task_word_park(lot, word):
    """Queue the task on a lock word (core validation, as ``park_word``; no sleep). Returns
    (code, slot): 0, PARK_INVALID_CODE, or EFULL (the caller reaps and backs off)."""
    t = scratch(lot)
    rc = lib.sl_aio_word_park(lot._h(), word.key, word.word_id, word.ptr, t.slot)
    if rc == lib.SL_EFULL:
        reap_for_slot(lot)
    elif rc != lib.SL_PARK_INVALID:
        check(rc, "park")
    return rc, t.slot[0]


def task_word_finish(lot, slot, word):
    """The task's slot on a lock word (or a Condition's) was unparked: finish (sl_word_finish:
    with token 0, try to take the free word). Returns (code, token): PARK_DONE when finished."""
    t = scratch(lot)
    t.slot[0] = slot
    rc = check(lib.sl_word_finish(lot._h(), t.slot, word.ptr, t.token), "park")
    return rc, t.token[0]


def task_word_cancel(lot, slot, word):
    """Leave a lock word's queue, settling the race with an unlocker: the token if one got
    there first (TOKEN_HANDOFF: the lock is ours), else None."""
    t = scratch(lot)
    rc = lib.sl_aio_word_cancel(lot._h(), slot, word.ptr, t.token)
    if rc in (lib.SL_PARK_UNPARKED, lib.SL_PARK_GONE):
        return t.token[0]
    check(rc, "park")
    return None


def task_cond_park(lot, cv_key, word):
    """Condition.wait for a task: queue on ``cv_key`` and release the lock ``word`` in one core
    call (as the C CondWaiter does; no sleep). Returns (code, slot): 0, or EFULL (nothing queued,
    the lock still held; a reap was done)."""
    h, t = lot._h(), scratch(lot)
    rc = lib.sl_cond_park(h, cv_key, word.key, word.word_id, word.ptr, word.count_ptr, 0, 0,
                          t.slot, t.token, t.woken, lot._slots, t.n)
    if rc >= 0:
        _wake(lot, t, t.n[0])
    if rc == lib.SL_EFULL:
        reap_for_slot(lot)
        return rc, _NO_SLOT
    check(rc, "wait")
    return rc, t.slot[0]


def task_cond_cancel(lot, slot, cv_key, word):
    """Leave a Condition wait's queue (the condition's, or the lock's after a requeue).
    Returns (notified, token): token TOKEN_HANDOFF if the lock was handed over meanwhile."""
    t = scratch(lot)
    requeued = ffi.new("int *")
    rc = lib.sl_cond_cancel(lot._h(), slot, cv_key, word.ptr, t.token, requeued)
    if rc in (lib.SL_PARK_UNPARKED, lib.SL_PARK_GONE):
        return True, t.token[0]
    check(rc, "wait")
    return bool(requeued[0]), 0


def slot_unparked(lot, slot):
    """Has the slot been unparked (its wait word 0)?"""
    return bool(lib.sl_park_is_unparked(lot._l, slot))


def slot_sleep(lot, slot, until):
    """One sleep of a task's own thread on its slot, at most until ``until`` (ns)."""
    if lot._sleep_code == FUTEX:
        lib.sl_aio_wait_once(lot._l, slot, until)
    else:
        lot._sleep.sleep(slot, until)


def slot_wake_sleeper(lot, slot, *, exiting=False):
    """Wake a task's own thread asleep on ``slot`` so that it exits (``exiting``: the thread
    itself, passing on a futex wake it may have taken from whoever parks on the slot now)."""
    if lot._sleep_code == FUTEX:
        lib.sl_aio_wake(lot._l, slot, 1 if exiting else 1 << 30)
    elif not exiting:
        lot._sleep._sem(slot).release()


def watched_by_watch(lot):
    """Can the C watch (futex_waitv) watch this lot's slots? (Else a thread per wait.)"""
    return AIO_SUPPORTED and lot._sleep_code == FUTEX


class Watch:
    """The C watch of one event loop (``_native/waitv.c``): helper threads asleep in
    futex_waitv on the slots added, reporting unparked ones through an eventfd."""
    __slots__ = ("_a", "_buf")

    def __init__(self, drain_size):
        out = ffi.new("sl_aio **")
        check(lib.sl_aio_new(out), "asyncio watch")
        self._a = out[0]
        self._buf = ffi.new("uint64_t[]", drain_size)

    def fd(self):
        return lib.sl_aio_fd(self._a)

    def add(self, lot, slot, cookie):
        check(lib.sl_aio_add(self._a, lot._l, slot, cookie), "asyncio watch")

    def remove(self, cookie):
        lib.sl_aio_remove(self._a, cookie)

    def age(self, cookie):
        """The wait has lasted a while: its slot moves to a packed helper group."""
        lib.sl_aio_age(self._a, cookie)

    def drain(self):
        """The cookies of slots seen unparked since the last drain (at most drain_size)."""
        n = lib.sl_aio_drain(self._a, self._buf, len(self._buf))
        return self._buf[0:n]

    def stats(self):
        """(slots watched, helper threads)."""
        n = ffi.new("uint32_t[2]")
        lib.sl_aio_stats(self._a, n, n + 1)
        return n[0], n[1]

    def close(self):
        a, self._a = self._a, None
        if a is not None:
            lib.sl_aio_close(a)


# ---- the lot handle, for placement --------------------------------------------------------------

def bound(lot):
    """The handle primitives bind to (``ParkingLot._bound``: never closed)."""
    return lot._bound()


def check_linked(lot, *, gone_ok=False):
    """LotUnlinkedError if the lot's name no longer leads to it (``gone_ok``: only if it leads to
    another lot)."""
    lot._check_linked(gone_ok=gone_ok)


def same_lot(a, b):
    """Are two handles on the same lot?"""
    return a._lot_id == b._lot_id


def segment(lot):
    """A writable view of the lot's whole segment (registry records live in it)."""
    return lot._buffer
