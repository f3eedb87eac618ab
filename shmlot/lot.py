"""The parking lot: a table of wait queues in a shared-memory segment.

Every operation locks the bucket of its key (a futex lock in the segment, see ilock.c), runs
the caller's callbacks under that lock, and wakes threads after unlocking. The C core
(``shmlot._core``) does the table work; this module turns its return codes into exceptions and
runs the sleeping loop (in slices, so that signals and dead unparkers cannot strand a sleeper).

Callbacks run in the calling thread with the bucket lock held: they must be short, and any lot
operation they call raises ``RuntimeError``. An exception raised by a callback propagates after the
bucket is unlocked, with the queue as it was (a raising ``validate`` enqueues nothing).
"""
import errno
import math
import os
import stat
import threading
import warnings
import weakref

from . import _fast
from ._core import ffi, lib
from ._results import (PARK_INVALID, PARK_TIMED_OUT, DEFAULT_PARK_TOKEN, DEFAULT_UNPARK_TOKEN,
                       FilterOp, ParkResult, RequeueOp, UnparkResult)
from ._waiters import (FUTEX, INTERRUPTED, UNPARKED, make_waiter, waiter_code, waiter_name)
from .errors import (LotCorruptError, LotFullError, LotNotFoundError, LotUnlinkedError,
                     ObjectGoneError)
from .keys import check_u64, file_key

__all__ = ["ParkingLot", "default_lot", "default_lot_name", "check_timeout", "deadline_after",
           "ParkResult", "UnparkResult", "FilterOp", "RequeueOp",
           "DEFAULT_PARK_TOKEN", "DEFAULT_UNPARK_TOKEN"]

NAME_MAX = 200
DEFAULT_BUCKETS = 4096
DEFAULT_SLOTS = 4096
DEFAULT_OBJECTS = 4096
DEFAULT_HOLDS = 8192
ATTACH_WAIT_NS = 2_000_000_000  # how long attach waits for a creator to finish initialising

_NO_SLOT = 0xFFFFFFFF            # "no slot" in the per-thread out-parameter of sl_park_begin

# How often the slow paths (a park, each sleep slice) look whether the lot's name still leads
# to this lot, and how often default_lot() does.
SPLIT_CHECK_NS = 1_000_000_000
DEFAULT_CHECK_NS = 100_000_000

# A sleeping thread wakes at least this often to re-check its slot and let signals in.
SLICE_MAIN_NS = 50_000_000      # the main thread: Ctrl-C must land within 0.2 s
SLICE_OTHER_NS = 1_000_000_000  # other threads: bounds the cost of a wake-up lost to a death


# ---- errors ------------------------------------------------------------------------------------

_tls = threading.local()  # .pending: the exception a callback raised, .ctx per thread


def _stash(exc_type, exc_value, tb):
    """cffi onerror hook: keep a callback's exception for the caller to re-raise."""
    _tls.pending = exc_value if exc_value is not None else exc_type()
    return None


def _error(rc, what=""):
    """The exception for a negative return code of the C core."""
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


def _check(rc, what=""):
    if rc < 0:
        raise _error(rc, what)
    return rc


# ---- callbacks from C ---------------------------------------------------------------------------
# The C core calls these with the bucket lock held; ctx is the calling thread's _Ctx.

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


# ---- argument checks -------------------------------------------------------------------------

def check_timeout(timeout):
    """Seconds (int/float, >= 0) or None."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number or None, not {type(timeout).__name__}")
    if math.isnan(timeout) or timeout < 0:
        raise ValueError(f"timeout must be a non-negative number, got {timeout}")
    return timeout


def deadline_after(timeout):
    """Absolute CLOCK_MONOTONIC deadline in ns for a checked timeout (None: 0, no deadline)."""
    if timeout is None:
        return 0
    return lib.sl_now_ns() + max(1, int(min(timeout, 1e9) * 1e9))


def _check_name(name):
    if not isinstance(name, str):
        raise TypeError(f"lot name must be a str, not {type(name).__name__}")
    raw = name.encode("utf-8")
    if not raw or "/" in name or "\0" in name or len(raw) > NAME_MAX or name in (".", ".."):
        raise ValueError(f"lot name must be 1 to {NAME_MAX} bytes with no '/' or NUL, and not "
                         f"'.' or '..': {name!r}")
    return raw


def _pid_namespace():
    """Inode of this process's PID namespace (0 if /proc does not say)."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


def _warn_other_pid_namespace(lot):
    """Liveness (a dead lock owner, a dead waiter, reaping) is decided by pid and process start
    time, so it is only sound between processes of one PID namespace: a pid from another one
    names another process here, or none. Attaching still works (the lot is shared memory), but
    say so, once per attach, when the creator's namespace (recorded in the header) is not ours."""
    info = ffi.new("sl_lot_info *")
    lib.sl_info(lot._l, info)
    ours = _pid_namespace()
    if info.pidns and ours and info.pidns != ours:
        warnings.warn(
            f"lot {lot.name!r} was created in another PID namespace (pid:[{info.pidns}], this "
            f"process is in pid:[{ours}]): owner-death detection, dead-waiter removal and "
            "reaping compare pids, which are only meaningful within one PID namespace; share a "
            "lot only between processes of the same namespace (e.g. the same container)",
            RuntimeWarning, stacklevel=3)


def _check_count(value, what):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    if not 1 <= value <= 1 << 20:
        raise ValueError(f"{what} must be in [1, 1048576], got {value}")
    return value


# ---- the lot ------------------------------------------------------------------------------------

class ParkingLot:
    """A handle on a lot. ``create``, ``attach`` or ``open`` one; ``close`` drops this process's
    handle (the lot stays until ``unlink``, like a named semaphore)."""

    def __init__(self, _handle, name):
        # use create/attach/open
        self._l = _handle
        self._name = name
        info = ffi.new("sl_lot_info *")
        lib.sl_info(_handle, info)
        self._buckets = info.nbuckets
        self._slots = info.nslots
        self._lot_id = info.lot_id
        self._waiter_code = info.waiter
        self._closed = False
        self._owner = None   # for a handle made by _bound(): the handle that owns the mapping
        self._inner = None   # weak reference to this handle's _bound() twin
        # keys of the lot's own words: named by the segment's file, as key_for names any
        # mapping's (key_for(lot.name, offset) == key_at(offset) while the name leads here)
        self._key_base = (file_key(os.major(info.dev), os.minor(info.dev), info.ino)
                          if info.ino else info.lot_id)
        self._pid = os.getpid()
        self._mode = self._segment_mode(name)
        self._file = (info.dev, info.ino)  # the segment this handle mapped
        self._checked_ns = lib.sl_now_ns()  # when the name was last seen leading to it
        self._waiter = make_waiter(info.waiter, _handle, info.lot_id, self._mode,
                                   lambda: self._name_leads_here() == _HERE)
        self._local = threading.local()
        # A writable view of the whole segment, for primitives that bind to words in it.
        self._buffer = memoryview(ffi.buffer(ffi.cast("char *", lib.sl_base_address(_handle)),
                                             lib.sl_size(_handle)))
        # The mapping is released when this object is collected, not by close(): primitives and
        # atomics hold references into it, and unmapping under them would crash the process.
        self._finalizer = weakref.finalize(self, lib.sl_close, _handle)
        # Not at interpreter exit: daemon threads may still be parked in (or working on) the
        # lot then, and unmapping it under them crashes the exiting process (SIGSEGV). The
        # mapping goes with the process.
        self._finalizer.atexit = False

    def _name_leads_here(self):
        """Where the lot's name leads now: _HERE (this lot), _GONE (nowhere) or _ELSEWHERE
        (another segment: the lot was unlinked and a new one made under its name). A stat of
        /dev/shm/NAME compared with the segment this handle mapped."""
        try:
            st = os.stat(f"/dev/shm/{self._name}")
        except OSError:
            return _GONE
        if not self._file[1] or (st.st_dev, st.st_ino) == self._file:
            return _HERE
        return _ELSEWHERE

    def _check_linked(self, gone_ok=False, every_ns=0):
        """Raise LotUnlinkedError if the name no longer leads to this lot (or, with
        ``gone_ok``, only if it leads to another one). With ``every_ns``, look only if the last
        look that found it here is older than that (a clock read otherwise)."""
        if every_ns and lib.sl_now_ns() - self._checked_ns < every_ns:
            return
        where = self._name_leads_here()
        if where == _HERE:
            self._checked_ns = lib.sl_now_ns()
        elif where == _ELSEWHERE or not gone_ok:
            raise LotUnlinkedError(
                errno.ENOENT,
                f"lot {self._name!r} was unlinked while in use"
                f"{' and a new lot made under its name' if where == _ELSEWHERE else ''}: "
                "processes that open the name now get another lot, so this handle no longer "
                "reaches them (unlinked by shmlot-stat --unlink, a /dev/shm cleaner, or "
                "systemd-logind's RemoveIPC=yes; see the README)")

    @staticmethod
    def _segment_mode(name):
        try:
            return stat.S_IMODE(os.stat(f"/dev/shm/{name}").st_mode)
        except OSError:
            return 0o600

    # -- construction --

    @classmethod
    def create(cls, name, buckets=DEFAULT_BUCKETS, slots=DEFAULT_SLOTS, mode=0o600,
               waiter=None, objects=DEFAULT_OBJECTS, holds=DEFAULT_HOLDS):
        """Create a new lot; ``FileExistsError`` if one of that name exists. ``waiter`` is
        "futex" or "semaphore" (default: $SHMLOT_WAITER, else "futex")."""
        raw = _check_name(name)
        _check_count(buckets, "buckets")
        _check_count(slots, "slots")
        _check_count(objects, "objects")
        _check_count(holds, "holds")
        if isinstance(mode, bool) or not isinstance(mode, int):
            raise TypeError("mode must be an int")
        if not 0 <= mode <= 0o777:
            raise ValueError(f"mode must be in [0, 0o777], got {oct(mode)}")
        code = waiter_code(waiter)
        out = ffi.new("sl_lot **")
        _check(lib.sl_create(raw, buckets, slots, objects, holds, mode, code, out),
               f"cannot create lot {name!r}")
        return cls(out[0], name)

    @classmethod
    def attach(cls, name):
        """Attach to an existing lot: ``LotNotFoundError`` if absent, ``LotCorruptError`` if it
        is not a valid lot, ``PermissionError`` if not ours to open. A ``RuntimeWarning`` says
        so when the lot was created in another PID namespace (see ``_warn_other_pid_namespace``)."""
        raw = _check_name(name)
        out = ffi.new("sl_lot **")
        _check(lib.sl_attach(raw, ATTACH_WAIT_NS, out), f"cannot attach lot {name!r}")
        lot = cls(out[0], name)
        _warn_other_pid_namespace(lot)
        return lot

    @classmethod
    def open(cls, name, **create_kwargs):
        """Attach, or create if absent. Race-free: of several processes opening at once, one
        creates and the others attach to what it made."""
        while True:
            try:
                return cls.attach(name)
            except LotNotFoundError:
                pass
            try:
                return cls.create(name, **create_kwargs)
            except FileExistsError:
                continue

    # -- properties --

    name = property(lambda self: self._name)
    buckets = property(lambda self: self._buckets)
    slots = property(lambda self: self._slots)
    waiter = property(lambda self: waiter_name(self._waiter_code))
    closed = property(lambda self: self._closed)

    def close(self):
        """Stop using this handle. The lot itself persists until ``unlink()``; primitives
        bound to it keep working (they hold their own handle on the mapping, see ``_bound``)."""
        self._closed = True

    def _bound(self):
        """The handle primitives bind to: the same mapping as this one, but never closed, so
        that closing the user's handle (``with ParkingLot.open(...) as lot:``) cannot strand a
        primitive made with ``lot=lot`` half-way through a lock hand-off. It keeps this handle
        (the mapping's owner) alive, so the lot stays mapped while any primitive on it lives."""
        if self._owner is not None:
            return self
        inner = self._inner() if self._inner is not None else None
        if inner is None:
            inner = object.__new__(type(self))
            inner.__dict__.update(self.__dict__)
            inner._closed = False
            inner._owner = self
            inner._inner = None
            inner._local = threading.local()
            self._inner = weakref.ref(inner)
        return inner

    def unlink(self):
        """Remove the lot's name (and its semaphores); processes still attached keep working."""
        lib.sl_unlink(self._name.encode())
        self._waiter.unlink(self._lot_id, self._slots)
        _default_lots.pop(self._name, None)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        state = "closed" if self._closed else f"{self.waiter}"
        return (f"<ParkingLot {self._name!r} buckets={self._buckets} slots={self._slots} "
                f"{state}>")

    def __reduce__(self):
        return (ParkingLot.attach, (self._name,))

    # -- internals shared with primitives --

    def _h(self):
        if self._closed:
            raise ValueError(f"lot {self._name!r} is closed")
        return self._l

    def _tl(self):
        """Per-thread scratch: the out-parameters of the C calls."""
        t = self._local
        if not hasattr(t, "woken"):
            t.woken = ffi.new("uint32_t[]", self._slots)
            t.res = ffi.new("sl_unpark_result *")
            t.slot = ffi.new("uint32_t *")
            t.token = ffi.new("uint64_t *")
            t.op = ffi.new("int *")
            t.reaped = ffi.new("uint32_t[2]")
            t.n = ffi.new("int *")
        return t

    def _wake(self, t, n):
        if n > 0:
            self._waiter.wake(t.woken, n)

    def key_at(self, offset):
        """The key of byte ``offset`` of this lot's segment."""
        return (self._key_base + offset) & 0xFFFFFFFFFFFFFFFF

    def _count(self, counter, n=1):
        lib.sl_count(self._l, counter, n)

    # -- park --

    def park(self, key, validate=None, before_sleep=None, timed_out=None,
             park_token=DEFAULT_PARK_TOKEN, timeout=None):
        """Park the calling thread on ``key``.

        Under the key's bucket lock, ``validate()`` runs (returning False: nothing is enqueued,
        result *invalid*); the thread is enqueued at the tail; after unlocking, ``before_sleep()``
        runs; the thread sleeps until unparked or ``timeout`` seconds pass. On timeout, under the
        bucket lock: if an unparker won the race the result is *unparked*; else the thread is
        dequeued, ``timed_out(key, was_last_thread)`` runs (key as it is after any requeue) and
        the result is *timed out*. An exception while sleeping (Ctrl-C) dequeues the thread the
        same way (timed_out included) and propagates; if an unpark had already won, the exception
        carries the ParkResult as ``.shmlot_park_result``.
        """
        return self._park(key, validate, before_sleep, timed_out, park_token, timeout)

    def _park(self, key, validate, before_sleep, timed_out, park_token, timeout,
              poll=None, poll_ns=0, hint=0, word_ptr=None, release=None, word_id=0):
        """park() plus what primitives need: ``poll()`` is called every ``poll_ns`` while asleep;
        if it returns True the thread leaves the queue as on a timeout (TimedOut result, unless an
        unpark won), which is how a lock waiter notices a dead owner. ``hint`` is stored in the
        slot for introspection (the lock word it waits on). With ``word_ptr`` (a lock word's
        address) and no ``validate``, the core validates LOCKED|PARKED itself (sl_word_park): no
        Python callback under the bucket lock, and the hint is the word. With ``release`` (a
        lock's ``(key, word_id, word_ptr, count_ptr)``, Condition.wait), the core parks and then
        releases that lock, which the caller holds (sl_cond_park), in place of validate and
        before_sleep. ``word_id`` is the identity of the word at ``word_ptr`` (Place.word): an
        unlock hands the lock only to a waiter parked for the same word."""
        check_u64(key, "key")
        check_u64(park_token, "park token")
        check_u64(hint, "hint")
        deadline = deadline_after(check_timeout(timeout))
        h = self._h()
        # a wait is a slow path: cheap enough to look (now and then) whether the lot was split
        self._check_linked(gone_ok=True, every_ns=SPLIT_CHECK_NS)
        t = self._tl()
        # sl_park_begin writes the slot once the thread is queued: from then on, any exception
        # (a signal handler's may strike between any two bytecodes) must take it out of the
        # queue again, or it stays there as a ghost that absorbs a wake-up meant for another.
        t.slot[0] = _NO_SLOT
        slot = _NO_SLOT
        slept = 0  # ns the core already slept after queueing (sl_word_park, sl_cond_park)
        ctx = _ctx().enter()
        try:
            try:
                ctx.validate = validate
                for attempt in (0, 1):
                    if release is not None:
                        slept = self._first_slice(poll, poll_ns)
                        rc = lib.sl_cond_park(h, key, release[0], release[1], release[2],
                                              release[3], deadline, slept, t.slot, t.token,
                                              t.woken, self._slots, t.n)
                        if rc >= 0:
                            self._wake(t, t.n[0])
                    elif word_ptr is not None and validate is None:
                        slept = self._first_slice(poll, poll_ns)
                        rc = lib.sl_word_park(h, key, word_id, word_ptr, deadline, slept, t.slot,
                                              t.token)
                    else:
                        rc = lib.sl_park_begin(h, key, park_token, hint, validate is not None,
                                               ctx.handle, deadline, t.slot)
                    if rc != lib.SL_EFULL or attempt:
                        break
                    self._reap_for_slot()
            finally:
                ctx.validate = ctx.timed_out = ctx.callback = ctx.filter = None
                ctx.busy = False  # stores, not a call: see _Ctx
            if rc == lib.SL_PARK_DONE:
                return ParkResult(ParkResult._UNPARKED, t.token[0])  # the core slept and finished
            if rc == lib.SL_PARK_INVALID:
                return PARK_INVALID
            if rc == lib.SL_ETIMEDOUT:
                return PARK_TIMED_OUT  # the bucket lock itself stayed busy past the deadline
            _check(rc, "park")
            slot = t.slot[0]
            if before_sleep is not None:
                before_sleep()
            result = self._sleep(slot, deadline, poll, poll_ns, slept)
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
                rc = lib.sl_park_cancel(self._l, slot, timed_out is not None, ctx.handle,
                                        t.token)
            finally:
                ctx.timed_out = None
                ctx.busy = busy
            result = self._cancelled(rc, t)
            if result.is_unparked:
                exc.shmlot_park_result = result
            raise
        if result is None:  # timed out (or poll said so): leave the queue, inline as above
            busy, ctx.busy = ctx.busy, True
            ctx.timed_out = timed_out
            try:
                rc = lib.sl_park_cancel(self._l, slot, timed_out is not None, ctx.handle,
                                        t.token)
            finally:
                ctx.timed_out = None
                ctx.busy = busy
            result = self._cancelled(rc, t)
        return result

    def _reap_for_slot(self):
        """No free slot: free those of dead processes (the caller then retries once)."""
        t = self._tl()
        lib.sl_reap(self._h(), t.reaped, t.reaped + 1)

    def _cond_waiter(self, cv_key, lock, slow):
        """A _fast.CondWaiter: Condition.wait on this lot in one C call, on either backend (the
        semaphore backend's sleep and post are its waiter's). ``slow(waiter, code, timeout)``
        handles the core's error codes."""
        count = int(ffi.cast("uintptr_t", lock._release_args[3]))
        backend = None if self._waiter_code == FUTEX else self._waiter
        return _fast.CondWaiter(self, int(ffi.cast("uintptr_t", self._h())), cv_key,
                                lock._place.key, lock._place.word, lock._address, count, lock,
                                slow, backend)

    @staticmethod
    def _slice(poll, poll_ns):
        """How long one sleep lasts before the sleeper looks up (signals, poll)."""
        main = threading.current_thread() is threading.main_thread()
        slice_ns = SLICE_MAIN_NS if main else SLICE_OTHER_NS
        if poll is not None:
            slice_ns = min(slice_ns, poll_ns)
        return slice_ns

    def _first_slice(self, poll, poll_ns):
        """The slice the core sleeps itself right after queueing (0: it does not; the
        semaphore backend's sleep needs its semaphore opened here first)."""
        return self._slice(poll, poll_ns) if self._waiter_code == FUTEX else 0

    def _sleep(self, slot, deadline, poll, poll_ns, slept=0):
        """Sleep until unparked (returns the ParkResult) or deadline/poll (returns None).
        ``slept``: the core has slept a first slice already (look up before sleeping again)."""
        slice_ns = self._slice(poll, poll_ns)
        waiter = self._waiter
        if slept and not lib.sl_park_is_unparked(self._l, slot) and poll is not None and poll():
            return None
        while True:
            now = lib.sl_now_ns()
            if deadline and now >= deadline:
                return None
            until = now + slice_ns
            if deadline and deadline < until:
                until = deadline
            r = waiter.sleep(slot, until)
            if r == UNPARKED or lib.sl_park_is_unparked(self._l, slot):
                t = self._tl()
                _check(lib.sl_park_finish(self._l, slot, t.token), "park")
                return ParkResult(ParkResult._UNPARKED, t.token[0])
            if r != INTERRUPTED:
                self._check_linked(gone_ok=True, every_ns=SPLIT_CHECK_NS)
                if poll is not None and poll():
                    return None

    @staticmethod
    def _cancelled(rc, t):
        """The ParkResult of sl_park_cancel's return code."""
        if rc == lib.SL_PARK_UNPARKED:
            return ParkResult(ParkResult._UNPARKED, t.token[0])
        if rc == lib.SL_PARK_GONE:
            # the exception struck after _sleep finished the park (and freed the slot, which
            # may be another thread's by now): it was unparked, with the token finish read
            return ParkResult(ParkResult._UNPARKED, t.token[0])
        _check(rc, "park")
        return PARK_TIMED_OUT

    # -- unpark --

    def unpark_one(self, key, callback=None):
        """Unpark the oldest thread parked on ``key``. ``callback(result) -> token`` runs under
        the bucket lock, also when no thread was unparked (its token is then ignored)."""
        check_u64(key, "key")
        h = self._h()
        t = self._tl()
        ctx = _ctx().enter()
        try:
            ctx.callback = callback
            n = lib.sl_unpark_one(h, key, callback is not None, ctx.handle, 0, t.res, t.woken,
                                  self._slots)
        finally:
            ctx.validate = ctx.timed_out = ctx.callback = ctx.filter = None
            ctx.busy = False  # stores, not a call: see _Ctx
        _check(n, "unpark_one")
        result = UnparkResult._from_c(t.res)
        self._wake(t, n)
        return result

    def unpark_all(self, key, unpark_token=DEFAULT_UNPARK_TOKEN):
        """Unpark every thread parked on ``key`` (in queue order); return how many."""
        check_u64(key, "key")
        check_u64(unpark_token, "unpark token")
        h = self._h()
        t = self._tl()
        ctx = _ctx().enter()
        try:
            n = lib.sl_unpark_all(h, key, unpark_token, 0, t.res, t.woken, self._slots)
        finally:
            ctx.validate = ctx.timed_out = ctx.callback = ctx.filter = None
            ctx.busy = False  # stores, not a call: see _Ctx
        _check(n, "unpark_all")
        self._wake(t, n)
        return n

    def unpark_filter(self, key, filter, callback=None):
        """Call ``filter(park_token) -> FilterOp`` for each thread parked on ``key`` in FIFO
        order (under the bucket lock); unpark those it says UNPARK, all with the one token
        ``callback(result)`` returns."""
        check_u64(key, "key")
        if not callable(filter):
            raise TypeError("filter must be callable")
        h = self._h()
        t = self._tl()
        ctx = _ctx().enter()
        try:
            ctx.filter = filter
            ctx.callback = callback
            n = lib.sl_unpark_filter(h, key, callback is not None, ctx.handle, 0, t.res, t.woken,
                                     self._slots)
        finally:
            ctx.validate = ctx.timed_out = ctx.callback = ctx.filter = None
            ctx.busy = False  # stores, not a call: see _Ctx
        _check(n, "unpark_filter")
        result = UnparkResult._from_c(t.res)
        self._wake(t, n)
        return result

    def unpark_requeue(self, key_from, key_to, validate, callback=None):
        """Lock both buckets (fixed order); ``validate() -> RequeueOp`` decides; threads move to
        the tail of ``key_to``'s queue in order; ``callback(op, result) -> token`` runs under both
        locks (not after ABORT)."""
        check_u64(key_from, "key_from")
        check_u64(key_to, "key_to")
        if not callable(validate):
            raise TypeError("validate must be callable")
        h = self._h()
        t = self._tl()
        ctx = _ctx().enter()
        try:
            ctx.validate = validate
            ctx.callback = callback
            n = lib.sl_unpark_requeue(h, key_from, key_to, callback is not None, ctx.handle, 0,
                                      t.res, t.op, t.woken, self._slots)
        finally:
            ctx.validate = ctx.timed_out = ctx.callback = ctx.filter = None
            ctx.busy = False  # stores, not a call: see _Ctx
        _check(n, "unpark_requeue")
        result = UnparkResult._from_c(t.res)
        self._wake(t, n)
        return result

    # -- lock words (Lock, RLock): the core's unlock_slow --

    def _word_unlock(self, key, word_id, word_ptr, force_fair=False):
        """Unlock a LOCKED|PARKED lock word (see sl_word_unlock) named ``word_id``; returns how
        many were woken."""
        h = self._h()
        t = self._tl()
        n = _check(lib.sl_word_unlock(h, key, word_id, word_ptr, bool(force_fair), t.woken,
                                      self._slots),
                   "unlock")
        self._wake(t, n)
        return n

    # -- objects (the registry primitives live in) --

    def _object_create(self, name, kind):
        """Create-or-open a record; returns (index, created, kind it actually has)."""
        idx = ffi.new("uint32_t *")
        created = ffi.new("int *")
        _check(lib.sl_object_create(self._h(), name.encode("utf-8"), kind, idx, created),
               f"cannot create object {name!r}" if name else "cannot create object")
        return idx[0], bool(created[0]), lib.sl_object_kind(self._l, idx[0])

    def _object_offset(self, index):
        return lib.sl_object_offset(self._l, index)

    def _object_kind(self, index):
        return lib.sl_object_kind(self._l, index)

    def _object_gen(self, index):
        return lib.sl_object_gen(self._l, index)

    def _object_acquire(self, index, gen):
        """One more reference to record ``index`` if it still holds generation ``gen``
        (ObjectGoneError if that object was freed)."""
        return _check(lib.sl_object_acquire(self._l, index, gen))

    def _object_adopt(self, index, gen, parent_pid, n):
        """In a fork child: take over the parent's pin on record ``index`` as ``n`` references
        of this process (see _placement)."""
        return _check(lib.sl_object_adopt(self._l, index, gen, parent_pid, n), f"object {index}")

    def _object_ref(self, index, delta):
        return _check(lib.sl_object_ref(self._l, index, delta), "object reference")

    def unlink_object(self, name):
        """Remove the name of a named object (handles already open keep working)."""
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, not {type(name).__name__}")
        rc = lib.sl_object_unlink(self._h(), name.encode("utf-8"))
        if rc == -errno.ENOENT:
            raise KeyError(name)
        _check(rc, f"cannot unlink object {name!r}")

    # -- holds: who holds which key (RWLock readers, deadlock.acquire_resource) --

    def _hold_add(self, key, pid, tid, start, mode):
        _check(lib.sl_hold_add(self._h(), key, pid, tid, start, mode), "hold")

    def _hold_remove(self, key, pid, tid, mode):
        return lib.sl_hold_remove(self._h(), key, pid, tid, mode) == 0

    def _hold_take_dead(self, key):
        """Clear the counted holds of dead processes on ``key``; return the count taken."""
        return _check(lib.sl_hold_take_dead(self._h(), key), "hold")

    def _holds_on(self, key):
        """(pid, tid, start, count, mode) of every hold on ``key``."""
        return [(h["pid"], h["tid"], h["start"], h["count"], h["mode"])
                for h in self._snapshot_holds() if h["key"] == key]

    def _snapshot_holds(self):
        info = ffi.new("sl_lot_info *")
        lib.sl_info(self._h(), info)
        holds = ffi.new("sl_hold_info[]", max(1, info.nholds))
        k = _check(lib.sl_snapshot_holds(self._l, holds, info.nholds), "snapshot")
        return [{"index": e.index, "pid": e.pid, "tid": e.tid, "start": e.start, "key": e.key,
                 "count": e.count, "mode": e.mode} for e in holds[0:k]]

    # -- snapshots (for shmlot.stat and shmlot.deadlock) --

    def _snapshot(self):
        """Raw copies of the non-free slots, live objects and holds: three lists of dicts."""
        h = self._h()
        slots = ffi.new("sl_slot_info[]", self._slots)
        n = _check(lib.sl_snapshot_slots(h, slots, self._slots), "snapshot")
        info = ffi.new("sl_lot_info *")
        lib.sl_info(h, info)
        objects = ffi.new("sl_object_info[]", max(1, info.nobjects))
        m = _check(lib.sl_snapshot_objects(h, objects, info.nobjects), "snapshot")
        slot_list = [{
            "index": s.index, "state": _SLOT_STATES.get(s.state, str(s.state)), "pid": s.pid,
            "tid": s.tid, "start": s.start, "key": s.key, "park_token": s.park_token,
            "parked_ns": s.parked_ns, "hint": s.hint, "bucket": s.bucket,
        } for s in slots[0:n]]
        object_list = [{
            "index": o.index, "kind": o.kind, "refs": o.refs, "named": bool(o.flags & 1),
            "data": list(o.data), "name": ffi.string(o.name).decode("utf-8", "replace"),
            "offset": lib.sl_object_offset(h, o.index),
        } for o in objects[0:m]]
        for o in object_list:
            o["key"] = self.key_at(o["offset"])
        return slot_list, object_list, self._snapshot_holds()

    # -- housekeeping --

    def reap(self):
        """Free the slots and holds of dead processes; returns (slots, holds) freed."""
        a = ffi.new("uint32_t *")
        b = ffi.new("uint32_t *")
        if _ctx().busy:
            raise RuntimeError("reap cannot be called from a callback")
        _check(lib.sl_reap(self._h(), a, b), "reap")
        # and the half-made semaphore files of dead processes (semaphore backend)
        self._waiter.reap_stale(self._lot_id)
        return a[0], b[0]

    def info(self):
        """Header and counters, as a dict."""
        i = ffi.new("sl_lot_info *")
        _check(lib.sl_info(self._h(), i), "info")
        return {
            "name": self._name, "version": i.version, "size": i.total_size,
            "buckets": i.nbuckets, "slots": i.nslots, "slots_free": i.slots_free,
            "objects": i.nobjects, "objects_used": i.objects_used, "holds": i.nholds,
            "waiter": waiter_name(i.waiter), "created_ns": i.created_ns,
            "creator_pid": i.creator_pid, "pidns": i.pidns, "lot_id": i.lot_id,
            "counters": {name: i.counters[idx] for name, idx in COUNTERS.items()},
        }


_SLOT_STATES = {0: "free", 1: "allocated", 2: "parked", 3: "unparked"}
_HERE, _GONE, _ELSEWHERE = "here", "gone", "elsewhere"

COUNTERS = {
    "parks": lib.SL_C_PARKS, "unparks": lib.SL_C_UNPARKS, "timeouts": lib.SL_C_TIMEOUTS,
    "requeues": lib.SL_C_REQUEUES, "fair_handoffs": lib.SL_C_FAIR_HANDOFFS,
    "owner_deaths": lib.SL_C_OWNER_DEATHS, "reaped": lib.SL_C_REAPED,
    "full_waits": lib.SL_C_FULL_WAITS, "invalid_parks": lib.SL_C_INVALID,
    "bucket_repairs": lib.SL_C_BUCKET_REPAIRS, "woken_ahead": lib.SL_C_WOKEN_AHEAD,
}


# ---- the default lot ---------------------------------------------------------------------------

_default_lots = {}
_default_lock = threading.Lock()


def default_lot_name():
    return os.environ.get("SHMLOT_LOT") or f"shmlot-{os.getuid()}"


def default_lot():
    """This process's handle on the default lot ($SHMLOT_LOT, else "shmlot-<uid>"), opened (or
    created) on first use. ``LotUnlinkedError`` if that lot was unlinked since (its name no longer
    leads to it)."""
    name = default_lot_name()
    lot = _default_lots.get(name)
    if lot is None or lot._closed:
        with _default_lock:
            lot = _default_lots.get(name)
            if lot is None or lot._closed:
                lot = _default_lots[name] = ParkingLot.open(name)
                return lot
    # LotUnlinkedError rather than use (or re-create) a lot that other processes no longer find
    lot._check_linked(every_ns=DEFAULT_CHECK_NS)
    return lot
