"""shmlot.deadlock: wait-for cycles across processes.

Mirrors parking_lot's deadlock-detection tests (three-thread cycle, self-deadlock on a mutex,
reentrant-mutex cycle, RwLock cycles), with every thread in its own process; plus the two-process
ABBA deadlock through both the API and ``shmlot-stat --deadlocks``, custom resources, locks placed
outside the registry, and the cases that must *not* be reported.

Every child is killed (SIGKILL) and reaped in a ``finally`` block: deadlocked children never
finish on their own.
"""
import json
import os
import subprocess
import sys
import threading

import pytest

from helpers import REPO_ROOT
from helpers.kills import kill_and_reap
from helpers.processes import python_env, run_python, start_python
from helpers.waiting import wait_until

import shmlot
from shmlot import deadlock
from shmlot.snapshot import snapshot

# A child runs the steps given on its command line, in order:
#   lock:NAME rlock:NAME read:NAME write:NAME   acquire a named object (blocking)
#   atlock:SEGMENT:OFFSET                       acquire a Lock placed with .at() in a segment
#   res:KEY  unres:KEY                          deadlock.acquire_resource / release_resource
#   park:KEY                                    lot.park(KEY) (a custom primitive's wait)
#   sync                                        print "ready", wait for a line on stdin
# then prints "done" and waits for stdin to close.
CHILD = r"""
import mmap, os, sys
import shmlot
from shmlot import deadlock
lot = shmlot.ParkingLot.attach(sys.argv[1])
KINDS = {"lock": shmlot.Lock, "rlock": shmlot.RLock, "read": shmlot.RWLock,
         "write": shmlot.RWLock}
objs = {}
def obj(kind, name):
    cls = KINDS[kind]
    if (cls, name) not in objs:
        objs[cls, name] = cls(name=name, lot=lot)
    return objs[cls, name]
maps = []
for step in sys.argv[2:]:
    what, _, arg = step.partition(":")
    if what == "sync":
        print("ready", flush=True)
        sys.stdin.readline()
    elif what in ("lock", "rlock"):
        obj(what, arg).acquire()
    elif what == "read":
        obj(what, arg).acquire_read()
    elif what == "write":
        obj(what, arg).acquire_write()
    elif what == "atlock":
        seg, off = arg.split(":")
        fd = os.open("/dev/shm/" + seg, os.O_RDWR)
        mm = mmap.mmap(fd, 4096)
        os.close(fd)
        maps.append(mm)
        shmlot.Lock.at(mm, int(off), lot=lot, key=shmlot.key_for(seg, int(off))).acquire()
    elif what == "res":
        deadlock.acquire_resource(int(arg), lot=lot)
    elif what == "unres":
        assert deadlock.release_resource(int(arg), lot=lot)
    elif what == "park":
        lot.park(int(arg))
    else:
        raise SystemExit("bad step " + step)
print("done", flush=True)
sys.stdin.readline()
"""


class Children:
    """Child processes running CHILD; all SIGKILLed and reaped by close()."""

    def __init__(self, lot):
        self.lot = lot
        self.procs = []

    def start(self, *steps):
        p = start_python(CHILD, self.lot.name, *steps)
        self.procs.append(p)
        return p

    def expect(self, p, word):
        line = p.stdout.readline().strip()
        if line != word:
            p.kill()
            _, err = p.communicate(timeout=10)
            pytest.fail(f"child said {line!r}, expected {word!r}; stderr:\n{err}")

    def sync_all(self):
        """Wait for every child's "ready", then let them all go."""
        for p in self.procs:
            self.expect(p, "ready")
        for p in self.procs:
            p.stdin.write("go\n")
            p.stdin.flush()

    def close(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
        for p in self.procs:
            try:
                p.communicate(timeout=10)
            except (subprocess.TimeoutExpired, ValueError, OSError):
                pass


@pytest.fixture
def children(futex_lot):
    c = Children(futex_lot)
    try:
        yield c
    finally:
        c.close()


def wait_cycles(lot, n_threads=None, timeout=20):
    """Poll check() until it reports a cycle (of n_threads threads, if given)."""
    box = []

    def found():
        box[:] = deadlock.check(lot)
        return box and (n_threads is None or any(len(c) == n_threads for c in box))

    wait_until(found, timeout, f"a deadlock cycle of {n_threads} threads (have {box})")
    return box


def members(cycle):
    return {(r["pid"], r["tid"]) for r in cycle}


def rotate_to(cycle, pid):
    """The cycle's records starting with process pid's."""
    i = [r["pid"] for r in cycle].index(pid)
    return cycle[i:] + cycle[:i]


RECORD_KEYS = {"pid", "tid", "process", "key", "key_hex", "name", "kind", "label", "object_key",
               "role",
               "held", "held_names", "waits_for", "parked_seconds", "park_token", "slot"}


def check_record_shape(cycle):
    for i, r in enumerate(cycle):
        assert RECORD_KEYS <= set(r), set(r) ^ RECORD_KEYS
        assert isinstance(r["held"], list) and len(r["held"]) == len(r["held_names"])
        nxt = cycle[(i + 1) % len(cycle)]
        assert r["waits_for"] == [{"pid": nxt["pid"], "tid": nxt["tid"]}]
        # what a thread waits on is held by the next one
        assert (r["object_key"] if r["object_key"] is not None else r["key"]) in nxt["held"]
    json.dumps(cycle)  # JSON-ready


# ---- parking_lot's tests, one process per thread ------------------------------------------------

@pytest.mark.timeout(90)
def test_three_process_lock_cycle(futex_lot, children):
    names = ["m1", "m2", "m3"]
    procs = [children.start(f"lock:{names[i]}", "sync", f"lock:{names[(i + 1) % 3]}")
             for i in range(3)]
    children.sync_all()
    cycles = wait_cycles(futex_lot, 3)
    assert len(cycles) == 1
    cyc = cycles[0]
    check_record_shape(cyc)
    assert members(cyc) == {(p.pid, p.pid) for p in procs}  # each child's main thread
    for i, p in enumerate(procs):
        r = rotate_to(cyc, p.pid)[0]
        assert r["name"] == names[(i + 1) % 3] and r["kind"] == "Lock"
        assert r["held_names"] == [f"Lock {names[i]!r}"]
        assert r["waits_for"] == [{"pid": procs[(i + 1) % 3].pid, "tid": procs[(i + 1) % 3].pid}]


@pytest.mark.timeout(60)
def test_self_deadlock_on_lock(futex_lot, children):
    p = children.start("lock:solo", "lock:solo")
    cycles = wait_cycles(futex_lot, 1)
    assert len(cycles) == 1
    (r,) = cycles[0]
    assert (r["pid"], r["tid"]) == (p.pid, p.pid)
    assert r["name"] == "solo" and r["held_names"] == ["Lock 'solo'"]
    assert r["waits_for"] == [{"pid": p.pid, "tid": p.pid}]


@pytest.mark.timeout(90)
def test_rlock_cycle(futex_lot, children):
    # each takes its RLock twice (re-entrant, no deadlock there), then the next one
    procs = [children.start(f"rlock:r{i}", f"rlock:r{i}", "sync", f"rlock:r{(i + 1) % 3}")
             for i in range(3)]
    children.sync_all()
    cycles = wait_cycles(futex_lot, 3)
    assert len(cycles) == 1
    check_record_shape(cycles[0])
    assert members(cycles[0]) == {(p.pid, p.pid) for p in procs}
    assert {r["kind"] for r in cycles[0]} == {"RLock"}
    snap = snapshot(futex_lot)
    for i in range(3):
        o = snap.find_object(f"r{i}")
        assert o.details["count"] == 2 and o.owner == (procs[i].pid, procs[i].pid)


@pytest.mark.timeout(90)
def test_rwlock_read_write_cycle(futex_lot, children):
    # parking_lot's test_rwlock_deadlock: each read-locks its RWLock, then write-locks the next
    procs = [children.start(f"read:rw{i}", "sync", f"write:rw{(i + 1) % 3}") for i in range(3)]
    children.sync_all()
    cycles = wait_cycles(futex_lot, 3)
    assert len(cycles) == 1
    check_record_shape(cycles[0])
    assert members(cycles[0]) == {(p.pid, p.pid) for p in procs}
    for i, p in enumerate(procs):
        r = rotate_to(cycles[0], p.pid)[0]
        assert r["kind"] == "RWLock" and r["role"] == "write" and r["name"] == f"rw{(i + 1) % 3}"
        assert f"RWLock 'rw{i}'" in r["held_names"]


@pytest.mark.timeout(90)
def test_rwlock_write_read_cycle(futex_lot, children):
    # the other way round: writers hold, readers wait (readers park on the RWLock's own key)
    procs = [children.start(f"write:w{i}", "sync", f"read:w{(i + 1) % 2}") for i in range(2)]
    children.sync_all()
    cycles = wait_cycles(futex_lot, 2)
    check_record_shape(cycles[0])
    assert members(cycles[0]) == {(p.pid, p.pid) for p in procs}
    assert {r["role"] for r in cycles[0]} == {"read"}


# ---- ABBA: API and CLI ---------------------------------------------------------------------------

@pytest.mark.timeout(90)
def test_abba_reported_by_api_and_cli(futex_lot, children):
    a = children.start("lock:A", "sync", "lock:B")
    b = children.start("lock:B", "sync", "lock:A")
    children.sync_all()
    cycles = wait_cycles(futex_lot, 2)
    assert len(cycles) == 1
    check_record_shape(cycles[0])
    ra = rotate_to(cycles[0], a.pid)
    assert [r["name"] for r in ra] == ["B", "A"]
    assert [r["held_names"] for r in ra] == [["Lock 'A'"], ["Lock 'B'"]]

    cli = [sys.executable, "-m", "shmlot.stat", futex_lot.name]
    text = subprocess.run(cli + ["--deadlocks"], capture_output=True, text=True, timeout=60,
                          env=python_env(), cwd=REPO_ROOT)
    assert text.returncode == 3, text.stderr
    assert "DEADLOCKS: 1 cycle" in text.stdout
    assert f"pid {a.pid} tid {a.pid}" in text.stdout and f"pid {b.pid} tid {b.pid}" in text.stdout
    assert "Lock 'A'" in text.stdout and "Lock 'B'" in text.stdout
    assert all(len(line) <= 100 for line in text.stdout.splitlines())

    js = subprocess.run(cli + ["--deadlocks", "--json"], capture_output=True, text=True,
                        timeout=60, env=python_env(), cwd=REPO_ROOT)
    assert js.returncode == 3, js.stderr
    doc = json.loads(js.stdout)
    assert len(doc["deadlocks"]) == 1
    assert members(doc["deadlocks"][0]) == {(a.pid, a.pid), (b.pid, b.pid)}

    # without --deadlocks the exit status stays 0 (the cycle is still in the JSON)
    plain = subprocess.run(cli + ["--json"], capture_output=True, text=True, timeout=60,
                           env=python_env(), cwd=REPO_ROOT)
    assert plain.returncode == 0 and len(json.loads(plain.stdout)["deadlocks"]) == 1


@pytest.mark.timeout(60)
def test_dead_member_breaks_the_cycle(futex_lot, children):
    a = children.start("lock:A", "sync", "lock:B")
    children.start("lock:B", "sync", "lock:A")
    children.sync_all()
    wait_cycles(futex_lot, 2)
    kill_and_reap(a)
    # a dead process's slot is garbage, not a waiter: no cycle any more
    assert deadlock.check(futex_lot) == []


# ---- custom resources and locks outside the registry ----------------------------------------------

@pytest.mark.timeout(60)
def test_custom_resource_cycle(futex_lot, children):
    k1, k2 = 0x5EED0001, 0x5EED0002
    p1 = children.start(f"res:{k1}", "sync", f"park:{k2}")
    p2 = children.start(f"res:{k2}", "sync", f"park:{k1}")
    children.sync_all()
    cycles = wait_cycles(futex_lot, 2)
    r1 = rotate_to(cycles[0], p1.pid)
    assert [r["key"] for r in r1] == [k2, k1]
    assert [r["held"] for r in r1] == [[k1], [k2]]
    assert r1[0]["name"] is None and r1[0]["held_names"] == [None]
    assert (p2.pid, p2.pid) in members(cycles[0])


def test_acquire_release_resource_in_process(futex_lot):
    key = 0xC0FFEE
    pid, tid = os.getpid(), threading.get_native_id()
    deadlock.acquire_resource(key, lot=futex_lot)
    deadlock.acquire_resource(key, lot=futex_lot)  # re-entrant
    holds = [h for h in snapshot(futex_lot).holds if h.key == key]
    assert [(h.pid, h.tid, h.count, h.what) for h in holds] == [(pid, tid, 2, "resource")]
    assert deadlock.release_resource(key, lot=futex_lot)
    assert deadlock.release_resource(key, lot=futex_lot)
    assert not deadlock.release_resource(key, lot=futex_lot)
    assert [h for h in snapshot(futex_lot).holds if h.key == key] == []
    with pytest.raises(ValueError):
        deadlock.acquire_resource(-1, lot=futex_lot)
    with pytest.raises(TypeError):
        deadlock.acquire_resource("k", lot=futex_lot)


@pytest.mark.timeout(60)
def test_dead_resource_holder_reaped(futex_lot, children):
    key = 0xDEAD0001
    p = children.start(f"res:{key}")
    children.expect(p, "done")
    assert snapshot(futex_lot).holds_on(key)
    kill_and_reap(p)
    slots, holds = futex_lot.reap()
    assert holds == 1 and not snapshot(futex_lot).holds_on(key)


@pytest.mark.timeout(60)
def test_cycle_on_locks_placed_with_at(futex_lot, children, shm_segment):
    seg = shm_segment(4096)
    p1 = children.start(f"atlock:{seg.name}:0", "sync", f"atlock:{seg.name}:64")
    p2 = children.start(f"atlock:{seg.name}:64", "sync", f"atlock:{seg.name}:0")
    children.sync_all()
    cycles = wait_cycles(futex_lot, 2)
    r1 = rotate_to(cycles[0], p1.pid)
    k0, k64 = shmlot.key_for(seg.name, 0), shmlot.key_for(seg.name, 64)
    assert [r["key"] for r in r1] == [k64, k0]
    # the holders come from the lock words the waiters saw (hints)
    assert r1[0]["held"] == [k0] and r1[1]["held"] == [k64]
    assert r1[0]["name"] is None and r1[0]["kind"] is None
    assert (p2.pid, p2.pid) in members(cycles[0])


# ---- what is not a deadlock -----------------------------------------------------------------

@pytest.mark.timeout(60)
def test_waiting_on_a_running_holder_is_not_a_deadlock(futex_lot, children):
    holder = children.start("lock:H", "write:RW")
    children.expect(holder, "done")   # holds H and RW, and is not parked
    children.start("lock:H")
    children.start("read:RW")
    children.start("write:RW")
    wait_until(lambda: len(snapshot(futex_lot).parked) == 3, 20, "three waiters parked")
    assert deadlock.check(futex_lot) == []


def test_no_cycle_in_an_idle_lot(futex_lot):
    assert deadlock.check(futex_lot) == []
    assert deadlock.check(futex_lot.name) == []


def test_check_default_lot_never_creates(monkeypatch, lot_name):
    name = lot_name()
    monkeypatch.setenv("SHMLOT_LOT", name)
    with pytest.raises(shmlot.LotNotFoundError):
        deadlock.check()
    assert not os.path.exists(f"/dev/shm/{name}")


def test_cycles_in_graph_search():
    g = {1: [2], 2: [3], 3: [1], 4: [4], 5: [1], 6: [7], 7: [6, 8], 8: [6]}
    assert deadlock.cycles_in(g) == [[1, 2, 3], [4], [6, 7], [6, 7, 8]]
    assert deadlock.cycles_in({1: [2], 2: []}) == []
    # a complete graph has very many cycles: the search stops at the limit
    big = {i: [j for j in range(12) if j != i] for i in range(12)}
    assert len(deadlock.cycles_in(big, limit=10)) == 10


def test_check_without_importing_the_module(futex_lot):
    r = run_python("import sys, shmlot; print(shmlot.deadlock.check(sys.argv[1]))", futex_lot.name)
    assert r.stdout.strip() == "[]"
