"""The parking lot: a table of wait queues in a shared-memory segment.

``ParkingLot`` is a handle on one lot: it creates, attaches and unlinks it, and carries the
public low-level API (parking_lot_core's ``park``, ``unpark_one``, ``unpark_all``,
``unpark_filter``, ``unpark_requeue``). Every operation goes through the engine
(``_engine.py``), which makes the core calls: it locks the bucket of the key (a futex lock in the
segment, see ilock.c), runs the caller's callbacks under that lock, and wakes threads after
unlocking. The sleep itself is in slices, so that signals and dead unparkers cannot strand a
sleeper.

Callbacks run in the calling thread with the bucket lock held: they must be short, and any lot
operation they call raises ``RuntimeError``. An exception raised by a callback propagates after the
bucket is unlocked, with the queue as it was (a raising ``validate`` enqueues nothing).
"""
import errno
import os
import stat
import threading
import warnings
import weakref

from . import _engine as _e
from ._core import ffi, lib
from ._engine import COUNTERS, FUTEX, SEMAPHORE, check as _check
from ._results import (DEFAULT_PARK_TOKEN, DEFAULT_UNPARK_TOKEN, FilterOp, ParkResult,
                       RequeueOp, UnparkResult)
from .errors import LotNotFoundError, LotUnlinkedError
from .keys import check_u64, file_key

__all__ = ["ParkingLot", "default_lot", "default_lot_name", "lot_by_name",
           "ParkResult", "UnparkResult", "FilterOp", "RequeueOp",
           "DEFAULT_PARK_TOKEN", "DEFAULT_UNPARK_TOKEN"]

NAME_MAX = 200
DEFAULT_BUCKETS = 4096
DEFAULT_SLOTS = 4096
DEFAULT_OBJECTS = 4096
DEFAULT_HOLDS = 8192
ATTACH_WAIT_NS = 2_000_000_000  # how long attach waits for a creator to finish initialising

# How often default_lot() looks whether the lot's name still leads to this lot.
DEFAULT_CHECK_NS = 100_000_000

SLEEP_NAMES = {"futex": FUTEX, "semaphore": SEMAPHORE}


def waiter_code(name):
    """The sleep backend's code for ``waiter=`` (None: $SHMLOT_WAITER, else "futex")."""
    if name is None:
        name = os.environ.get("SHMLOT_WAITER") or "futex"
    if not isinstance(name, str):
        raise TypeError(f"waiter must be a str, not {type(name).__name__}")
    try:
        return SLEEP_NAMES[name]
    except KeyError:
        raise ValueError(f"waiter must be 'futex' or 'semaphore', not {name!r}") from None


def waiter_name(code):
    return "futex" if code == FUTEX else "semaphore"


# ---- argument checks -------------------------------------------------------------------------

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
        self._sleep_code = info.waiter
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
        self._sleep = _e.make_sleep(info.waiter, _handle, info.lot_id, self._mode,
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
    waiter = property(lambda self: waiter_name(self._sleep_code))
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
        self._sleep.unlink(self._lot_id, self._slots)
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

    # -- the engine's view of the handle --

    def _h(self):
        """The C handle, for a call that needs an open handle (ValueError once closed)."""
        if self._closed:
            raise ValueError(f"lot {self._name!r} is closed")
        return self._l

    def key_at(self, offset):
        """The key of byte ``offset`` of this lot's segment."""
        return (self._key_base + offset) & 0xFFFFFFFFFFFFFFFF

    # -- park and unpark: the public low-level API, through the engine --

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
        carries the ParkResult as ``.shmlot_park_result``. ``LotFullError`` when every slot of
        the lot is taken.
        """
        check_u64(key, "key")
        check_u64(park_token, "park token")
        return _e.park_once(self, key, validate=validate, before_sleep=before_sleep,
                            timed_out=timed_out, token=park_token,
                            deadline=_e.park_deadline(timeout))

    def unpark_one(self, key, callback=None):
        """Unpark the oldest thread parked on ``key``. ``callback(result) -> token`` runs under
        the bucket lock, also when no thread was unparked (its token is then ignored)."""
        check_u64(key, "key")
        return _e.unpark_one(self, key, callback=callback)

    def unpark_all(self, key, unpark_token=DEFAULT_UNPARK_TOKEN):
        """Unpark every thread parked on ``key`` (in queue order); return how many."""
        check_u64(key, "key")
        check_u64(unpark_token, "unpark token")
        return _e.unpark_all(self, key, token=unpark_token)

    def unpark_filter(self, key, filter, callback=None):
        """Call ``filter(park_token) -> FilterOp`` for each thread parked on ``key`` in FIFO
        order (under the bucket lock); unpark those it says UNPARK, all with the one token
        ``callback(result)`` returns."""
        check_u64(key, "key")
        if not callable(filter):
            raise TypeError("filter must be callable")
        return _e.unpark_filter(self, key, filter=filter, callback=callback)

    def unpark_requeue(self, key_from, key_to, validate, callback=None):
        """Lock both buckets (fixed order); ``validate() -> RequeueOp`` decides; threads move to
        the tail of ``key_to``'s queue in order; ``callback(op, result) -> token`` runs under both
        locks (not after ABORT)."""
        check_u64(key_from, "key_from")
        check_u64(key_to, "key_to")
        if not callable(validate):
            raise TypeError("validate must be callable")
        return _e.unpark_requeue(self, key_from, key_to, validate=validate, callback=callback)

    # -- objects and holds (the inspection modules read these) --

    def unlink_object(self, name):
        """Remove the name of a named object (handles already open keep working)."""
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, not {type(name).__name__}")
        rc = lib.sl_object_unlink(self._h(), name.encode("utf-8"))
        if rc == -errno.ENOENT:
            raise KeyError(name)
        _check(rc, f"cannot unlink object {name!r}")

    def _hold_add(self, key, pid, tid, start, mode):
        _e.hold_add(self, key, pid, tid, start, mode)

    def _hold_remove(self, key, pid, tid, mode):
        return _e.hold_remove(self, key, pid, tid, mode)

    def _object_gen(self, index):
        return _e.object_gen(self, index)

    def _holds_on(self, key):
        """(pid, tid, start, count, mode) of every hold on ``key``."""
        return _e.holds_on(self, key)

    def _snapshot_holds(self):
        return _e.holds(self)

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
        if _e.in_callback():
            raise RuntimeError("reap cannot be called from a callback")
        _check(lib.sl_reap(self._h(), a, b), "reap")
        # and the half-made semaphore files of dead processes (semaphore backend)
        self._sleep.reap_stale(self._lot_id)
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


def lot_by_name(name):
    """This process's handle on lot ``name`` (shared with default_lot's cache), attached on
    first use: how an unpickled primitive finds its lot."""
    lot = _default_lots.get(name)
    if lot is None or lot.closed:
        with _default_lock:
            lot = _default_lots.get(name)
            if lot is None or lot.closed:
                lot = _default_lots[name] = ParkingLot.attach(name)
                return lot
    # a handle from a process of the old lot still means the old lot (whose name is gone); once
    # the name leads to another lot, it is ambiguous: LotUnlinkedError
    lot._check_linked(gone_ok=True)
    return lot
