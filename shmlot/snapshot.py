"""A consistent, read-only picture of a live lot.

``snapshot(lot)`` copies the lot's header, counters, every slot in use, every object of the
registry and every hold, and decodes them: who is parked on which key (with the process name,
command line and liveness from ``psutil`` and ``/proc``), which object that key belongs to, what
state each object is in and who owns it. What each kind's words mean comes from its descriptor in
``shmlot.kinds``.

It disturbs nothing: the parked slots are copied one bucket at a time, each bucket lock held just
long enough to copy that bucket's queue (``sl_snapshot_slots``); objects and holds are read with
atomic loads and no lock at all. Nothing is written to the lot.

Consistency: each bucket's queue is copied atomically; the object words and holds are read right
after the slots, so a lock that changed hands in between can disagree with a queue by one step.
``shmlot.deadlock.check`` confirms what it finds with a second snapshot for that reason.

A lot whose contents fail a check (bad slot state, an index out of range) raises
``LotCorruptError`` naming what is wrong.
"""
import errno
import os
import stat
import time

from . import _fast
from . import _placement as _pl
from . import kinds
from ._core import lib
from .errors import LotCorruptError
from .kinds import HOLD_MODE_NAMES, lock_word_owner, token_text
from .lot import ParkingLot, default_lot_name

__all__ = ["snapshot", "resolve_lot", "is_lot_file", "Snapshot", "ParkedThread", "ObjectState",
           "HoldInfo", "ProcessInfo", "process_info"]

U64 = kinds.U64
FULL_START = U64                # slots and holds store the full start time
WORD_START = _fast.START_MASK   # lock words keep its low 18 bits
SLOT_STATES = ("allocated", "parked", "unparked")  # a slot in use, as the lot's copy names it
MAGIC = lib.SL_MAGIC.to_bytes(8, "little")  # the first bytes of a lot's segment


# ---- processes -------------------------------------------------------------------------------

class ProcessInfo:
    """What psutil and /proc say about a pid: ``name``, ``cmdline`` (list or None when not
    readable), ``exists``."""
    __slots__ = ("pid", "name", "cmdline", "exists")

    def __init__(self, pid, name=None, cmdline=None, exists=False):
        self.pid, self.name, self.cmdline, self.exists = pid, name, cmdline, exists

    def __repr__(self):
        return f"<ProcessInfo {self.pid} {self.name!r} exists={self.exists}>"


def process_info(pid):
    """A ProcessInfo for ``pid`` (never raises)."""
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil is a dependency
        psutil = None
    if psutil is None:
        return ProcessInfo(pid, None, None, os.path.exists(f"/proc/{pid}"))
    try:
        p = psutil.Process(pid)
        with p.oneshot():
            name = p.name()
            try:
                cmdline = p.cmdline()
            except (psutil.AccessDenied, psutil.ZombieProcess):
                cmdline = None
        return ProcessInfo(pid, name, cmdline, True)
    except (psutil.NoSuchProcess, ValueError):
        return ProcessInfo(pid, None, None, False)
    except psutil.AccessDenied:
        return ProcessInfo(pid, None, None, True)
    except Exception:  # psutil quirks (e.g. a pid from another namespace): say nothing
        return ProcessInfo(pid, None, None, False)


class _Liveness:
    """Cached liveness and process details for one snapshot."""

    def __init__(self, with_processes):
        self._alive = {}
        self._procs = {}
        self._with = with_processes
        self._me = os.getpid()

    def alive(self, pid, start, mask):
        if pid == self._me:
            return True
        k = (pid, start & mask, mask)
        v = self._alive.get(k)
        if v is None:
            v = self._alive[k] = bool(_fast.process_alive(pid, start & mask, mask))
        return v

    def proc(self, pid):
        if not self._with:
            return None
        p = self._procs.get(pid)
        if p is None:
            p = self._procs[pid] = process_info(pid)
        return p


# ---- records ------------------------------------------------------------------------------------

def _hex(key):
    return f"0x{key:016x}"


class ParkedThread:
    """A thread parked in the lot (a slot queued on ``key``), or, in ``Snapshot.in_transit``, a
    slot between states (``state`` "allocated" or "unparked")."""
    __slots__ = ("slot", "state", "pid", "tid", "start", "key", "park_token", "parked_seconds",
                 "parked_ns", "hint", "bucket", "alive", "process", "cmdline", "object", "role")

    def __init__(self, **kw):
        for k in self.__slots__:
            setattr(self, k, kw.get(k))

    @property
    def object_name(self):
        return self.object.name if self.object is not None else None

    @property
    def kind(self):
        return self.object.kind if self.object is not None else None

    @property
    def hint_owner(self):
        """(pid, tid) named by the lock word the thread saw when it parked, or None."""
        o = lock_word_owner(self.hint) if self.hint else None
        return o[:2] if o else None

    def to_dict(self):
        owner = self.hint_owner
        return {
            "slot": self.slot, "state": self.state, "pid": self.pid, "tid": self.tid,
            "process": self.process, "cmdline": self.cmdline, "alive": self.alive,
            "key": self.key, "key_hex": _hex(self.key),
            "object": self.object_name, "object_index": self.object.index if self.object else None,
            "kind": self.kind, "role": self.role,
            "park_token": self.park_token,
            "token_text": token_text(self.kind, self.role, self.park_token),
            "parked_seconds": round(self.parked_seconds, 6),
            "hint": self.hint, "hint_owner": {"pid": owner[0], "tid": owner[1]} if owner else None,
            "bucket": self.bucket,
        }

    def __repr__(self):
        return (f"<ParkedThread pid={self.pid} tid={self.tid} key={_hex(self.key)} "
                f"{self.state} alive={self.alive}>")


class HoldInfo:
    """A hold: thread (pid, tid) holds ``key`` ``count`` times in ``mode`` (see
    HOLD_MODE_NAMES)."""
    __slots__ = ("index", "pid", "tid", "start", "key", "count", "mode", "alive")

    def __init__(self, **kw):
        for k in self.__slots__:
            setattr(self, k, kw.get(k))

    @property
    def what(self):
        return HOLD_MODE_NAMES.get(self.mode, f"mode {self.mode}")

    @property
    def counted(self):
        return bool(self.mode & lib.SL_HOLD_COUNTED)

    def to_dict(self):
        return {"pid": self.pid, "tid": self.tid, "alive": self.alive, "key": self.key,
                "key_hex": _hex(self.key), "count": self.count, "mode": self.mode,
                "what": self.what}

    def __repr__(self):
        return f"<HoldInfo {self.what} pid={self.pid} tid={self.tid} key={_hex(self.key)}>"


class ObjectState:
    """An object of the lot's registry, decoded.

    ``name`` (None when anonymous), ``kind`` ("Lock", ...), ``key``, ``state`` (a short text),
    ``details`` (the decoded fields, a dict), ``owner`` ((pid, tid) holding it, for lock kinds),
    ``owner_alive``, ``waiters`` (threads parked on its keys), ``holds`` (HoldInfo on its key)."""
    __slots__ = ("index", "name", "kind", "kind_code", "key", "refs", "data", "state", "details",
                 "owner", "owner_start", "owner_alive", "waiters", "holds")

    def __init__(self, **kw):
        for k in self.__slots__:
            setattr(self, k, kw.get(k))

    @property
    def owner_pid(self):
        return self.owner[0] if self.owner else None

    @property
    def owner_tid(self):
        return self.owner[1] if self.owner else None

    @property
    def label(self):
        """How to name it to a person: ``Lock 'jobs'`` or ``RLock #12``."""
        return f"{self.kind} {self.name!r}" if self.name else f"{self.kind} #{self.index}"

    def keys(self):
        """(key, role) of every key threads park on for this object."""
        return [((self.key + r.offset) & U64, r.name) for r in kinds.by_code(self.kind_code).roles]

    def to_dict(self):
        return {
            "index": self.index, "name": self.name, "anonymous": self.name is None,
            "kind": self.kind, "key": self.key, "key_hex": _hex(self.key), "refs": self.refs,
            "state": self.state, "details": self.details,
            "owner_pid": self.owner_pid, "owner_tid": self.owner_tid,
            "owner_alive": self.owner_alive, "waiters": self.waiters,
            "holds": [h.to_dict() for h in self.holds],
        }

    def __repr__(self):
        return f"<ObjectState {self.label}: {self.state}>"


class Snapshot:
    """What ``snapshot()`` returns.

    ``lot`` (its name), ``taken_at`` (time.time()), ``header`` (dict), ``counters`` (dict),
    ``parked`` (ParkedThread, bucket by bucket in queue order), ``in_transit`` (slots between
    states), ``objects`` (ObjectState), ``holds`` (HoldInfo)."""

    def __init__(self, lot, taken_at, header, counters, parked, in_transit, objects, holds):
        self.lot = lot
        self.taken_at = taken_at
        self.header = header
        self.counters = counters
        self.parked = parked
        self.in_transit = in_transit
        self.objects = objects
        self.holds = holds
        self._by_key = {}
        for o in objects:
            for key, role in o.keys():
                self._by_key.setdefault(key, (o, role))
        self._parked_by_key = None
        self._holds_by_key = None

    def object_at(self, key):
        """(ObjectState, role) of the registry object threads park on at ``key``, or None."""
        return self._by_key.get(key)

    def parked_on(self, key):
        """The threads parked on ``key``, in queue order."""
        if self._parked_by_key is None:
            index = {}
            for p in self.parked:
                index.setdefault(p.key, []).append(p)
            self._parked_by_key = index
        return list(self._parked_by_key.get(key, ()))

    def holds_on(self, key, mode=None):
        """The holds on ``key`` (of ``mode``, if given)."""
        if self._holds_by_key is None:
            index = {}
            for h in self.holds:
                index.setdefault(h.key, []).append(h)
            self._holds_by_key = index
        return [h for h in self._holds_by_key.get(key, ()) if mode is None or h.mode == mode]

    def find_object(self, name):
        for o in self.objects:
            if o.name == name:
                return o
        return None

    def to_dict(self):
        return {
            "lot": dict(self.header),
            "time": self.taken_at,
            "counters": dict(self.counters),
            "parked": [p.to_dict() for p in self.parked],
            "in_transit": [p.to_dict() for p in self.in_transit],
            "objects": [o.to_dict() for o in self.objects],
            "holds": [h.to_dict() for h in self.holds],
        }

    def __repr__(self):
        return (f"<Snapshot {self.lot!r}: {len(self.parked)} parked, {len(self.objects)} "
                f"objects, {len(self.holds)} holds>")


# ---- taking a snapshot ------------------------------------------------------------------------

def resolve_lot(lot=None):
    """A ParkingLot for ``lot``: a ParkingLot (returned as is), a lot name, or None for the default
    lot. Never creates a lot: LotNotFoundError if it does not exist."""
    if lot is None:
        lot = default_lot_name()
    if isinstance(lot, ParkingLot):
        return lot
    if isinstance(lot, str):
        return _pl.lot_by_name(lot)
    raise TypeError(f"lot must be a ParkingLot, a lot name or None, not {type(lot).__name__}")


def is_lot_file(path):
    """Whether the file at ``path`` (a segment in /dev/shm) is a regular file that holds at
    least a lot's header and begins with its magic: a cheap look before attaching, which checks
    the whole header."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode) or st.st_size < lib.SL_HEADER_SIZE:
            return False  # (and never open a FIFO or a device, which could block)
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def _check_slot(s, info):
    if s["state"] not in SLOT_STATES:
        raise LotCorruptError(errno.EINVAL, f"lot {info['name']!r} is corrupt: slot "
                              f"{s['index']} has an unknown state {s['state']}")
    if s["state"] == "parked" and not 0 <= s["bucket"] < info["buckets"]:
        raise LotCorruptError(errno.EINVAL, f"lot {info['name']!r} is corrupt: slot "
                              f"{s['index']} is queued in bucket {s['bucket']} of "
                              f"{info['buckets']}")


def snapshot(lot=None, *, processes=True):
    """Read a snapshot of ``lot`` (a ParkingLot, a lot name, or None: the default lot, which must
    exist). ``processes=False`` skips the psutil look-ups (names, command lines).

    Raises LotNotFoundError, LotCorruptError, PermissionError as attach does."""
    lot = resolve_lot(lot)
    raw_slots, raw_objects, raw_holds = lot._snapshot()
    now_ns = lib.sl_now_ns()
    taken_at = time.time()
    info = lot.info()
    live = _Liveness(processes)

    used = info["slots"] - info["slots_free"]
    header = {
        "name": info["name"], "version": info["version"], "size": info["size"],
        "buckets": info["buckets"], "slots": info["slots"], "slots_used": used,
        "slots_free": info["slots_free"], "objects": info["objects"],
        "objects_used": info["objects_used"], "holds": info["holds"],
        "waiter": info["waiter"], "lot_id": info["lot_id"],
        "created": info["created_ns"] / 1e9, "creator_pid": info["creator_pid"],
        "unlinked": not os.path.exists(f"/dev/shm/{info['name']}"),
    }
    if info["slots_free"] > info["slots"] or info["objects_used"] > info["objects"]:
        raise LotCorruptError(errno.EINVAL, f"lot {info['name']!r} is corrupt: impossible counts")

    holds = []
    for h in raw_holds:
        holds.append(HoldInfo(index=h["index"], pid=h["pid"], tid=h["tid"], start=h["start"],
                              key=h["key"], count=h["count"], mode=h["mode"],
                              alive=live.alive(h["pid"], h["start"], FULL_START)))

    holds_by_key = {}
    for h in holds:
        holds_by_key.setdefault(h.key, []).append(h)
    objects = []
    for o in raw_objects:
        kind = kinds.by_code(o["kind"])
        if not 0 <= o["index"] < info["objects"]:
            raise LotCorruptError(errno.EINVAL, f"lot {info['name']!r} is corrupt: object index "
                                  f"{o['index']} out of range")
        key = o["key"]
        oholds = holds_by_key.get(key, [])
        state, details, owner = kind.decode(o["data"], oholds)
        objects.append(ObjectState(
            index=o["index"], name=o["name"] if o["named"] else None,
            kind=kind.name, kind_code=kind.code, key=key,
            refs=o["refs"], data=list(o["data"]), state=state, details=details,
            owner=owner[:2] if owner else None, owner_start=owner[2] if owner else None,
            owner_alive=live.alive(owner[0], owner[2], WORD_START) if owner else None,
            waiters=0, holds=oholds))

    snap = Snapshot(info["name"], taken_at, header,
                    dict(info["counters"]), [], [], objects, holds)

    for s in raw_slots:
        _check_slot(s, info)
        found = snap.object_at(s["key"])
        proc = live.proc(s["pid"])
        p = ParkedThread(
            slot=s["index"], state=s["state"], pid=s["pid"], tid=s["tid"], start=s["start"],
            key=s["key"], park_token=s["park_token"],
            parked_seconds=max(0, now_ns - s["parked_ns"]) / 1e9 if s["parked_ns"] else 0.0,
            parked_ns=s["parked_ns"],
            hint=s["hint"], bucket=s["bucket"],
            alive=live.alive(s["pid"], s["start"], FULL_START),
            process=proc.name if proc else None, cmdline=proc.cmdline if proc else None,
            object=found[0] if found else None, role=found[1] if found else None)
        if s["state"] == "parked":
            snap.parked.append(p)
            if found:
                found[0].waiters += 1
        else:
            snap.in_transit.append(p)
    return snap
