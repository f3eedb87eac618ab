"""One descriptor per primitive kind: everything introspection knows about it.

A ``Kind`` says, for one primitive: the code its registry records carry, its name, its record
size and word layout, how its words decode into a state, the hold modes it records, and its
roles: the keys of its record that threads park on, what a thread parked there is, and whom it
waits for. ``shmlot.snapshot``, ``shmlot.deadlock`` and ``shmlot-stat`` go through these
descriptors and know no kind's bits themselves; the primitives take their kind codes and hold
modes from here.

Kind codes are stored in lots: a new kind appends a code, and no code is ever renumbered.
"""
from typing import Callable, NamedTuple, Optional, Tuple

from . import _fast
from ._core import lib

__all__ = ["Kind", "Word", "Role", "HoldMode", "KINDS", "KIND_NAMES", "HOLD_MODES",
           "HOLD_MODE_NAMES", "by_code", "by_name", "lock_word_owner", "token_text",
           "reclaim_dead", "LOCK", "RLOCK", "CONDITION", "SEMAPHORE", "BOUNDED_SEMAPHORE",
           "EVENT", "BARRIER", "RWLOCK", "READ_HOLD", "WRITE_WAIT_HOLD", "BARRIER_HOLD",
           "PERMIT_HOLD", "RESOURCE_HOLD", "HOLDS_KEY", "TOKEN_BURST", "WRITERS_OFFSET"]

U64 = 2**64 - 1
LOCKED = _fast.LOCKED_BIT
PARKED = _fast.PARKED_BIT

# Kind codes of registry records (0 is "none").
LOCK, RLOCK, CONDITION, SEMAPHORE, BOUNDED_SEMAPHORE, EVENT, BARRIER, RWLOCK = range(1, 9)

# A Barrier's state word (word 1): bits 0-31 how many have arrived, 32-62 the generation, 63
# BROKEN.
BARRIER_BROKEN = 1 << 63
BARRIER_COUNT_MASK = 0xFFFFFFFF
BARRIER_GEN_ONE = 1 << 32
BARRIER_GEN_MASK = ((1 << 31) - 1) << 32

# Hold modes (api.h). COUNTED ones are shares the primitive also counts in its own word: the
# reaper leaves them for the primitive, which takes a dead holder's share back itself.
READ_HOLD = lib.SL_HOLD_READ              # an RWLock read share, on the RWLock's key
WRITE_WAIT_HOLD = lib.SL_HOLD_WRITE_WAIT  # an RWLock writer waiting, on its writers' key
BARRIER_HOLD = lib.SL_HOLD_BARRIER        # a Barrier party waiting: a dead one breaks it
PERMIT_HOLD = lib.SL_HOLD_PERMIT          # a process's BoundedSemaphore permits (tid 0)
RESOURCE_HOLD = lib.SL_HOLD_RESOURCE      # deadlock.acquire_resource(key)

TOKEN_BURST = lib.SL_TOKEN_BURST  # a Condition waiter parked by the core's wait
WRITERS_OFFSET = 8                # an RWLock's writers park on the key of its word 1


def lock_word_owner(word):
    """(pid, tid, start18) named by a lock word that has LOCKED set, else None."""
    if not word & LOCKED:
        return None
    return _fast.word_owner(word)


class Word(NamedTuple):
    """A word of a kind's record: its byte ``offset``, ``name`` and what its bits mean."""
    offset: int
    name: str
    bits: str


class HoldMode(NamedTuple):
    """A hold mode: ``name`` as shown, and whether its holder ``holds_key`` (so that a thread
    parked on that key waits for the holder)."""
    mode: int
    name: str
    holds_key: bool


class Role(NamedTuple):
    """A key threads park on: the object's key + ``offset``.

    ``tokens`` names the park tokens a thread parked there uses; ``waits_for`` lists where the
    threads it waits for are found (see the sources below), the first that names somebody
    winning; ``access`` marks a role that is a way of holding the object (an RWLock's read and
    write), named wherever the object is."""
    offset: int
    name: str
    tokens: dict
    waits_for: Tuple[Callable, ...] = ()
    access: bool = False


# Where a parked thread's holders are found. Each source takes the object's key, its words and
# a look-up (deadlock.py's) with ``word_holders(word)``, ``hold_holders(key, mode)`` and
# ``parked_holders(key)``, and returns a list of holders.

def owner(key, data, look):
    """The thread the lock word (word 0) names."""
    return look.word_holders(data[0])


def readers(key, data, look):
    """The holders of the object's read shares."""
    return look.hold_holders(key, READ_HOLD)


def waiting_writers(key, data, look):
    """While writers wait (word 2), the threads parked on the writers' key: a new reader waits
    behind them."""
    return look.parked_holders((key + WRITERS_OFFSET) & U64) if data[2] else []


class Kind(NamedTuple):
    """A primitive kind (see the module doc). ``decode(data, holds)`` gives (state text, details
    dict, owner (pid, tid, start18) or None) from the record's words and the holds on its key;
    ``lock_word``: the index of the word that names an owner, if it has one; ``reclaim``: the
    class and method that give a dead holder's share back, as (module, class, method)."""
    code: int
    name: str
    size: int
    words: Tuple[Word, ...]
    decode: Callable
    roles: Tuple[Role, ...]
    holds: Tuple[int, ...] = ()
    lock_word: Optional[int] = None
    reclaim: Optional[Tuple[str, str, str]] = None

    def role(self, name):
        for r in self.roles:
            if r.name == name:
                return r
        return None


# ---- decoding ----------------------------------------------------------------------------------

def _decode_lock(data, holds, recursive=False, condition=False):
    word = data[0]
    owner_ = lock_word_owner(word)
    details = {"locked": owner_ is not None, "parked_bit": bool(word & PARKED)}
    if recursive:
        details["count"] = (data[1] & 0xFFFFFFFF) if owner_ else 0  # a u32 at byte 8
    if owner_:
        state = f"locked by pid {owner_[0]} tid {owner_[1]}"
        if recursive and details["count"] > 1:
            state += f" (x{details['count']})"
        if condition:
            state = "lock " + state
    else:
        state = "lock unlocked" if condition else "unlocked"
    return state, details, owner_


def _decode_rlock(data, holds):
    return _decode_lock(data, holds, recursive=True)


def _decode_condition(data, holds):
    return _decode_lock(data, holds, recursive=True, condition=True)


def _decode_semaphore(data, holds):
    return f"value {data[0]}", {"value": data[0]}, None


def _decode_bounded_semaphore(data, holds):
    return f"value {data[0]}/{data[2]}", {"value": data[0], "bound": data[2]}, None


def _decode_event(data, holds):
    is_set = bool(data[0] & lib.SL_EVENT_FLAG)
    return ("set" if is_set else "unset"), {"set": is_set}, None


def _decode_barrier(data, holds):
    parties, s = data[0], data[1]
    broken = bool(s & BARRIER_BROKEN)
    details = {"parties": parties, "broken": broken,
               "waiting": 0 if broken else s & BARRIER_COUNT_MASK,
               "generation": (s & BARRIER_GEN_MASK) // BARRIER_GEN_ONE}
    if broken:
        return f"broken ({parties} parties)", details, None
    return f"{details['waiting']}/{parties} waiting", details, None


def _decode_rwlock(data, holds):
    word = data[0]
    owner_ = lock_word_owner(word)
    n = 0 if owner_ else word // lib.SL_RW_READER
    pids = sorted({h.pid for h in holds if h.mode == READ_HOLD})
    details = {"writer": {"pid": owner_[0], "tid": owner_[1]} if owner_ else None,
               "readers": n, "reader_pids": pids, "readers_waiting": data[1],
               "writers_waiting": data[2]}
    if owner_:
        state = f"write-locked by pid {owner_[0]} tid {owner_[1]}"
    elif n:
        state = f"{n} reader{'s' if n != 1 else ''}"
        if pids:
            state += f" (pid {','.join(map(str, pids[:3]))}{',...' if len(pids) > 3 else ''})"
    else:
        state = "unlocked"
    return state, details, owner_


def _decode_unknown(data, holds):
    return "?", {"words": list(data)}, None


# ---- the kinds ---------------------------------------------------------------------------------

_LOCK_WORD = Word(0, "lock word", "bit 0 LOCKED, bit 1 PARKED, bits 2-23 owner pid, 24-45 "
                                  "owner tid, 46-63 low 18 bits of its start time")
_WAITERS = "how many threads may be parked"
_ACQUIRE = Role(0, "acquire", {0: "acquirer"}, (owner,))

KINDS = (
    Kind(LOCK, "Lock", lib.SL_LOCK_SIZE, (_LOCK_WORD,), _decode_lock, (_ACQUIRE,), lock_word=0),
    Kind(RLOCK, "RLock", lib.SL_RLOCK_SIZE,
         (_LOCK_WORD, Word(lib.SL_RLOCK_COUNT_OFFSET, "count",
                           "bits 0-31 the holder's recursion count")),
         _decode_rlock, (_ACQUIRE,), lock_word=0),
    Kind(CONDITION, "Condition", 24,
         (_LOCK_WORD, Word(lib.SL_RLOCK_COUNT_OFFSET, "count",
                           "bits 0-31 the recursion count of its RLock"),
          Word(16, "condition", "names the key its waiters park on")),
         _decode_condition,
         (Role(0, "lock", {0: "acquirer", TOKEN_BURST: "notified"}, (owner,)),
          Role(16, "wait", {0: "waiter", TOKEN_BURST: "waiter"})), lock_word=0),
    Kind(SEMAPHORE, "Semaphore", 24,
         (Word(0, "value", "the units free"), Word(8, "waiters", _WAITERS),
          Word(16, "initial", "the initial value")),
         _decode_semaphore, (Role(0, "acquire", {0: "acquirer"}),)),
    Kind(BOUNDED_SEMAPHORE, "BoundedSemaphore", 24,
         (Word(0, "value", "the units free"), Word(8, "waiters", _WAITERS),
          Word(16, "bound", "the initial value, which release() may not exceed")),
         _decode_bounded_semaphore, (Role(0, "acquire", {0: "acquirer"}),),
         holds=(PERMIT_HOLD,), reclaim=("semaphore", "BoundedSemaphore", "_reclaim")),
    Kind(EVENT, "Event", lib.SL_EVENT_SIZE,
         (Word(0, "flag", "bit 0 set, bits 1-63 a generation every set() advances"),
          Word(8, "waiters", _WAITERS)),
         _decode_event, (Role(0, "wait", {0: "waiter"}),)),
    Kind(BARRIER, "Barrier", 24,
         (Word(0, "parties", "the number of parties"),
          Word(8, "state", "bits 0-31 arrived, bits 32-62 generation, bit 63 BROKEN"),
          Word(16, "waiters", _WAITERS)),
         _decode_barrier, (Role(0, "wait", {0: "party"}),), holds=(BARRIER_HOLD,)),
    Kind(RWLOCK, "RWLock", 32,
         (Word(0, "state", "0 free; a writer's lock word; or readers << 2, bit 1 READ_PHASE"),
          Word(8, "readers parked", "readers that may be parked"),
          Word(16, "writers waiting", "writers waiting"),
          Word(24, "mutex", "the readers' mutex, a lock word")),
         _decode_rwlock,
         (Role(0, "read", {0: "reader"}, (owner, waiting_writers), access=True),
          Role(WRITERS_OFFSET, "write", {0: "writer"}, (owner, readers), access=True)),
         holds=(READ_HOLD, WRITE_WAIT_HOLD), lock_word=0,
         reclaim=("rwlock", "RWLock", "_reclaim_readers")),
)

_BY_CODE = {k.code: k for k in KINDS}
_BY_NAME = {k.name: k for k in KINDS}
KIND_NAMES = {k.code: k.name for k in KINDS}

HOLD_MODES = (HoldMode(READ_HOLD, "read", True), HoldMode(BARRIER_HOLD, "barrier-wait", False),
              HoldMode(RESOURCE_HOLD, "resource", True), HoldMode(PERMIT_HOLD, "permit", False))
HOLD_MODE_NAMES = {h.mode: h.name for h in HOLD_MODES}
HOLDS_KEY = frozenset(h.mode for h in HOLD_MODES if h.holds_key)


def by_code(code):
    """The Kind of a registry code; for a code no kind has, one that decodes to "?" and has no
    roles (named "kind N")."""
    k = _BY_CODE.get(code)
    if k is None:
        k = Kind(code, f"kind {code}", 0, (), _decode_unknown, ())
    return k


def by_name(name):
    """The Kind called ``name`` ("Lock", ...), or None."""
    return _BY_NAME.get(name)


def token_text(kind, role, token):
    """A parked thread's park token in words where its object's kind (its name) and role say what
    it means ("reader", "writer", "waiter", "notified": a Condition waiter moved onto the lock's
    queue, ...), else the number (hex when large)."""
    if token == lib.SL_TOKEN_AIO:
        return "asyncio"  # a task of an event loop (shmlot.aio), parked like a thread
    k = _BY_NAME.get(kind)
    r = k.role(role) if k is not None else None
    if r is not None and token in r.tokens:
        return r.tokens[token]
    return str(token) if token < 10**10 else f"0x{token:x}"


def reclaim_dead(lot, obj):
    """Give back what dead processes hold of registry object ``obj`` (a snapshot's
    ObjectState), as its next waiter would: an RWLock's read shares, a BoundedSemaphore's
    permits. Returns how many units were given back: 0 for a kind with nothing to give back, or
    an object freed since the snapshot. Lock words of dead owners are left alone (the next
    acquirer gets OwnerDiedError)."""
    kind = by_code(obj.kind_code)
    if kind.reclaim is None:
        return 0
    import importlib
    from ._base import _rebuild
    from .errors import ObjectGoneError
    module, cls_name, method = kind.reclaim
    cls = getattr(importlib.import_module(f"{__package__}.{module}"), cls_name)
    try:  # a handle as unpickling one makes it (the record's current generation)
        handle = _rebuild(cls, ("record", lot.name, obj.index, kind.code,
                                lot._object_gen(obj.index)), None)
    except ObjectGoneError:
        return 0
    return getattr(handle, method)()
