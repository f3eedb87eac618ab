"""Cross-process deadlock detection, after parking_lot's ``deadlock`` module.

``check(lot=None)`` builds a wait-for graph from a snapshot of the lot: a parked thread waits for
the threads that hold the key it is parked on; a cycle of parked threads is a deadlock. Holders
come from:

- a registry object's kind (``shmlot.kinds``): each role of the kind (the key a thread parks on)
  says where the threads it waits for are named: the lock word of ``Lock``, ``RLock`` and the
  write side of ``RWLock`` (it names the holder's pid and tid), the read shares of an ``RWLock``
  (holds on its key: a writer waits for them), the writers parked on an ``RWLock`` (a reader
  parked behind waiting writers waits for them);
- for objects placed with ``.at()`` outside the registry, the word the waiter saw when it parked
  (the slot's ``hint``), and the read-share holds on the key an RWLock's writers would wait on;
- ``acquire_resource(key)`` / ``release_resource(key)``: what custom primitives call around the
  time they hold ``key`` (the key their waiters park on).

Each cycle is a list of records (dicts), one per thread, in wait order (each waits for the next,
the last for the first): ``pid``, ``tid``, ``process`` (name), ``key`` (waited on), ``name`` and
``kind`` of the object at that key when it is a registry object, ``label`` (e.g. "Lock 'jobs'"),
``object_key`` (its key: an RWLock's writers park on object_key + 8), ``role`` (e.g. "write"),
``held`` (keys the thread holds), ``held_names`` (their object labels, or None), ``waits_for``
(the holders, in the cycle, it waits for), ``parked_seconds``, ``park_token``.

Nothing is written to the lot and no bucket lock is held longer than a copy of its queue takes.
A cycle is reported only if a second snapshot shows the same threads still parked in the same
slots and still forming it (a lock handed over between the copy of the queues and the copy of the
lock words cannot produce a false report).
"""
from . import _fast
from . import kinds
from .kinds import READ_HOLD, RESOURCE_HOLD, U64, WRITERS_OFFSET, lock_word_owner
from .lot import default_lot_name
from .snapshot import FULL_START, WORD_START, process_info, resolve_lot, snapshot

__all__ = ["check", "acquire_resource", "release_resource", "wait_for_graph", "cycles_in",
           "holders", "held_by", "MAX_CYCLES"]

MAX_CYCLES = 64        # at most this many cycles are reported (a pathological graph has more)
_MAX_STEPS = 200_000   # bound on the cycle search


# ---- custom resources ------------------------------------------------------------------------

def acquire_resource(key, lot=None):
    """Record that the calling thread holds ``key`` (a custom primitive just acquired it), so that
    ``check()`` sees who a thread parked on ``key`` waits for. Re-entrant: each call needs one
    ``release_resource``. The record is freed by the reaper if the process dies."""
    from .keys import check_u64
    check_u64(key, "key")
    lot = _lot_for_holds(lot)
    pid, tid, start = _fast.self_ident()
    lot._hold_add(key, pid, tid, start, RESOURCE_HOLD)


def release_resource(key, lot=None):
    """Forget one ``acquire_resource(key)`` of the calling thread. Returns False if the thread
    did not hold ``key``."""
    from .keys import check_u64
    check_u64(key, "key")
    lot = _lot_for_holds(lot)
    pid, tid, _ = _fast.self_ident()
    return lot._hold_remove(key, pid, tid, RESOURCE_HOLD)


def _lot_for_holds(lot):
    if lot is None:
        from .lot import default_lot
        return default_lot()
    return resolve_lot(lot)


# ---- the graph ---------------------------------------------------------------------------------

class _Holder:
    """A thread named as holding something: pid, tid and start time under ``mask``."""
    __slots__ = ("pid", "tid", "start", "mask")

    def __init__(self, pid, tid, start, mask):
        self.pid, self.tid, self.start, self.mask = pid, tid, start & mask, mask

    def is_thread(self, p):
        return p.pid == self.pid and p.tid == self.tid and p.start & self.mask == self.start


def _word_holder(word):
    o = lock_word_owner(word)
    return _Holder(o[0], o[1], o[2], WORD_START) if o else None


def _full_holder(t):
    """A thread known by its full start time: a parked slot's or a hold's."""
    return _Holder(t.pid, t.tid, t.start, FULL_START)


class _Look:
    """What a kind's role sources (shmlot.kinds) look holders up in: one snapshot."""

    def __init__(self, snap):
        self.snap = snap

    def word_holders(self, word):
        h = _word_holder(word)
        return [h] if h else []

    def hold_holders(self, key, mode):
        return [_full_holder(h) for h in self.snap.holds_on(key, mode)]

    def parked_holders(self, key):
        return [_full_holder(w) for w in self.snap.parked_on(key)]


def holders(snap, p):
    """The threads the parked thread ``p`` (a ParkedThread of Snapshot ``snap``) waits for, each
    with ``pid``, ``tid``, ``start`` and ``mask`` (the bits of the start time it is known by);
    the list may include ``p`` itself."""
    key = p.key
    look = _Look(snap)
    out = []
    found = snap.object_at(key)
    if found is not None:
        obj, role = found
        for source in kinds.by_code(obj.kind_code).role(role).waits_for:
            out = source(obj.key, obj.data, look)
            if out:
                break
    elif p.hint:
        # outside the registry: the lock word the waiter saw names a Lock / RLock / RWLock
        # writer; else it is an RWLock's: a writer (on its key + WRITERS_OFFSET) waits for the
        # readers, a reader for the writers parked on key + WRITERS_OFFSET
        out = look.word_holders(p.hint) or \
            look.hold_holders((key - WRITERS_OFFSET) & U64, READ_HOLD)
        if not out and snap.holds_on(key, READ_HOLD):
            out = look.parked_holders((key + WRITERS_OFFSET) & U64)
    return out + look.hold_holders(key, RESOURCE_HOLD)


def held_by(snap, p):
    """Who holds what the parked thread ``p`` waits for, as ``shmlot-stat`` shows it: a list of
    {"pid", "tid", "alive"}, each thread once, ``p`` left out (empty: nobody, or a kind that has
    no holders)."""
    out, seen = [], set()
    for h in holders(snap, p):
        if (h.pid, h.tid) in seen or (h.pid, h.tid) == (p.pid, p.tid):
            continue
        seen.add((h.pid, h.tid))
        out.append({"pid": h.pid, "tid": h.tid,
                    "alive": bool(_fast.process_alive(h.pid, h.start, h.mask))})
    return out


def _node(p):
    return (p.pid, p.tid, p.start)


def wait_for_graph(snap):
    """{node: [nodes it waits for]} over the parked threads of a Snapshot; a node is
    (pid, tid, start). Holders that are not parked (running, or dead) are left out: a thread
    waiting for them is not part of a cycle. The slots of dead processes are left out too (they
    wait for nothing; the reaper frees them, and a lock a dead thread held goes to the next
    acquirer with OwnerDiedError)."""
    parked = {}
    by_thread = {}
    for p in snap.parked:
        if p.alive and _node(p) not in parked:
            parked[_node(p)] = p
            by_thread.setdefault((p.pid, p.tid), []).append(p)
    graph = {}
    for node, p in parked.items():
        succ = []
        for h in holders(snap, p):
            for q in by_thread.get((h.pid, h.tid), ()):
                if h.is_thread(q) and _node(q) not in succ:
                    succ.append(_node(q))
        graph[node] = succ
    return graph, parked


def cycles_in(graph, limit=MAX_CYCLES):
    """The elementary cycles of ``graph`` (each a list of nodes starting at its smallest), at most
    ``limit``, in a stable order."""
    nodes = sorted(graph)
    order = {n: i for i, n in enumerate(nodes)}
    cycles = []
    steps = 0
    for s in nodes:
        # cycles whose smallest node is s: a DFS over nodes >= s
        stack = [(s, iter(graph[s]))]
        path = [s]
        on_path = {s}
        while stack and len(cycles) < limit and steps < _MAX_STEPS:
            steps += 1
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                stack.pop()
                on_path.discard(path.pop())
                continue
            if nxt == s:
                cycles.append(list(path))
            elif order[nxt] > order[s] and nxt not in on_path:
                stack.append((nxt, iter(graph[nxt])))
                path.append(nxt)
                on_path.add(nxt)
        if len(cycles) >= limit or steps >= _MAX_STEPS:
            break
    return cycles


# ---- what a thread holds, for the report -------------------------------------------------------

def _held_keys(snap, p):
    """Keys thread ``p`` holds: registry lock words naming it, its read shares and resources, and
    keys of locks outside the registry that a waiter saw it holding."""
    keys = []

    def add(key):
        if key not in keys:
            keys.append(key)

    for o in snap.objects:
        word = kinds.by_code(o.kind_code).lock_word
        if word is not None:
            h = _word_holder(o.data[word])
            if h and h.is_thread(p):
                add(o.key)
    for h in snap.holds:
        if h.mode in kinds.HOLDS_KEY and h.pid == p.pid and h.tid == p.tid and \
                h.start == p.start:
            add(h.key)
    for q in snap.parked:
        if q.hint and snap.object_at(q.key) is None:
            h = _word_holder(q.hint)
            if h and h.is_thread(p):
                add(q.key)
    return keys


def _label(snap, key):
    found = snap.object_at(key)
    if found is None:
        return None
    obj, _role = found
    return obj.label


def _records(snap, cycle, parked, procs):
    out = []
    for i, node in enumerate(cycle):
        p = parked[node]
        nxt = parked[cycle[(i + 1) % len(cycle)]]
        held = _held_keys(snap, p)
        if p.pid not in procs:
            procs[p.pid] = process_info(p.pid)
        found = snap.object_at(p.key)
        out.append({
            "pid": p.pid, "tid": p.tid, "process": procs[p.pid].name,
            "key": p.key, "key_hex": f"0x{p.key:016x}",
            "name": found[0].name if found else None,
            "kind": found[0].kind if found else None,
            "label": found[0].label if found else None,
            "object_key": found[0].key if found else None,
            "role": found[1] if found else None,
            "held": held, "held_names": [_label(snap, k) for k in held],
            "waits_for": [{"pid": nxt.pid, "tid": nxt.tid}],
            "parked_seconds": round(p.parked_seconds, 6), "park_token": p.park_token,
            "slot": p.slot,
        })
    return out


def _slot_ids(parked, cycle):
    return [(n, parked[n].slot, parked[n].key, parked[n].parked_ns) for n in cycle]


def check(lot=None, *, confirm=True, snap=None):
    """The wait-for cycles that exist now among the threads parked in ``lot`` (a ParkingLot, a lot
    name, or None: the default lot, which must exist): a list of cycles, each a list of records
    (see the module doc). An empty list means no deadlock.

    ``snap``: use this Snapshot as the first look. ``confirm``: report only cycles that a second
    snapshot still shows with the same threads in the same slots."""
    if lot is None and snap is None:
        lot = default_lot_name()
    if snap is None:
        snap = snapshot(lot, processes=False)
    graph, parked = wait_for_graph(snap)
    found = cycles_in(graph)
    if not found:
        return []
    if confirm:
        again = snapshot(resolve_lot(lot if lot is not None else snap.lot), processes=False)
        graph2, parked2 = wait_for_graph(again)
        found2 = {tuple(_slot_ids(parked2, c)) for c in cycles_in(graph2)}
        found = [c for c in found if tuple(_slot_ids(parked, c)) in found2]
        # describe them as the second snapshot shows them (the latest state)
        snap, parked = again, parked2
    procs = {}
    return [_records(snap, c, parked, procs) for c in found]
