"""shmlot.snapshot: a read-only picture of a live lot, and reaping what dead processes left.

Covers: header and counters; parked threads (pid, native tid, process name and command line,
liveness, key, object, park token, time parked, hint); every object kind decoded; waiters and
holds; a snapshot neither disturbs parked threads nor waits on a busy bucket; a corrupt slot gives
LotCorruptError; the default lot is never created. Reaping: by lot.reap(), automatically before
park would raise LotFullError, and never waking or unqueueing a live waiter.
"""
import json
import os
import struct
import threading
import time

import pytest

from helpers.kills import kill_all, kill_and_reap
from helpers.processes import start_python
from helpers.waiting import ParkerThread, park_in_order, wait_parked, wait_until

import shmlot
from shmlot import LotCorruptError, LotFullError, LotNotFoundError
from shmlot.snapshot import ParkedThread, Snapshot, resolve_lot, snapshot


def tid():
    return threading.get_native_id()


# ---- header, counters, parked threads -----------------------------------------------------------

def test_header_and_counters(lot):
    snap = snapshot(lot)
    assert isinstance(snap, Snapshot)
    h = snap.header
    assert h["name"] == lot.name and h["buckets"] == 256 and h["slots"] == 256
    assert h["slots_used"] == 0 and h["slots_free"] == 256
    assert h["waiter"] == lot.waiter and h["size"] > 0 and h["creator_pid"] == os.getpid()
    assert abs(h["created"] - time.time()) < 60 and h["unlinked"] is False
    assert set(snap.counters) >= {"parks", "unparks", "timeouts", "requeues", "fair_handoffs",
                                  "owner_deaths", "reaped"}
    before = snap.counters["timeouts"]
    lot.park(1, timeout=0)
    assert snapshot(lot).counters["timeouts"] == before + 1
    json.dumps(snap.to_dict())


def test_lot_argument_forms(futex_lot, monkeypatch, lot_name):
    assert snapshot(futex_lot.name).lot == futex_lot.name
    assert resolve_lot(futex_lot) is futex_lot
    with pytest.raises(TypeError):
        snapshot(42)
    missing = lot_name()
    with pytest.raises(LotNotFoundError):
        snapshot(missing)
    monkeypatch.setenv("SHMLOT_LOT", missing)
    with pytest.raises(LotNotFoundError):
        snapshot()
    assert not os.path.exists(f"/dev/shm/{missing}")  # never created
    monkeypatch.setenv("SHMLOT_LOT", futex_lot.name)
    assert snapshot().lot == futex_lot.name


def test_parked_thread_fields(lot):
    key = 0xABCDEF
    t = ParkerThread(lot, key, park_token=77).start()
    try:
        wait_parked(lot, key, 1)
        snap = snapshot(lot)
        (p,) = snap.parked
        assert isinstance(p, ParkedThread)
        assert (p.pid, p.tid) == t.ident_pair
        assert p.key == key and p.park_token == 77 and p.state == "parked"
        assert p.alive is True and p.object is None and p.kind is None
        import psutil
        assert p.process == psutil.Process().name()
        assert p.cmdline == psutil.Process().cmdline()
        assert 0 <= p.parked_seconds < 60
        time.sleep(0.05)
        assert snapshot(lot).parked[0].parked_seconds >= p.parked_seconds + 0.04
        d = p.to_dict()
        for k in ("pid", "tid", "key", "park_token", "parked_seconds", "alive", "process",
                  "cmdline", "object", "kind", "hint", "slot"):
            assert k in d
        assert snap.header["slots_used"] == 1
        assert snapshot(lot, processes=False).parked[0].process is None
    finally:
        lot.unpark_all(key, 5)
    assert t.outcome().token == 5


def test_snapshot_does_not_disturb_parked_threads(lot):
    key = 0x5107
    threads = park_in_order(lot, key, 4)
    try:
        order = [p.tid for p in snapshot(lot).parked]
        parks = snapshot(lot).counters["parks"]
        for _ in range(100):
            snap = snapshot(lot)
            assert [p.tid for p in snap.parked] == order  # same queue, same order
        assert snapshot(lot).counters == snap.counters and snap.counters["parks"] == parks
        assert all(t.is_alive() for t in threads)  # nobody woken
    finally:
        n = lot.unpark_all(key, 9)
    assert n == 4
    assert [t.outcome().token for t in threads] == [9] * 4


def test_snapshot_skips_a_busy_bucket_quickly(lot):
    """A bucket lock held by someone else (here a filter callback, which runs under it) does not
    stall the snapshot: it copies the slot without the lock after a short wait."""
    key = 0xB0B
    parker = ParkerThread(lot, key, park_token=3).start()
    wait_parked(lot, key, 1)
    inside, leave = threading.Event(), threading.Event()

    def slow_filter(token):
        inside.set()
        leave.wait(20)
        return shmlot.FilterOp.SKIP

    holder = threading.Thread(target=lot.unpark_filter, args=(key, slow_filter), daemon=True)
    holder.start()
    try:
        assert inside.wait(10)
        t0 = time.monotonic()
        snap = snapshot(lot)
        assert time.monotonic() - t0 < 2.0
        assert [(p.key, p.park_token) for p in snap.parked] == [(key, 3)]
    finally:
        leave.set()
        holder.join(10)
        lot.unpark_all(key)
    assert parker.outcome().is_unparked


def test_corrupt_slot_state(futex_lot):
    key, token = 0x0123456789ABCDEF, 0x7EDCBA9876543210
    t = ParkerThread(futex_lot, key, park_token=token).start()
    wait_parked(futex_lot, key, 1)
    buf = futex_lot._buffer
    pos = bytes(buf).find(struct.pack("<QQ", key, token))
    assert pos > 0
    state_at = pos - 4  # sl_slot: u32 wait, u32 state, u64 key, u64 park_token, ...
    assert struct.unpack_from("<I", buf, state_at)[0] == 2
    try:
        struct.pack_into("<I", buf, state_at, 9)
        with pytest.raises(LotCorruptError, match="slot .* unknown state 9"):
            snapshot(futex_lot)
    finally:
        struct.pack_into("<I", buf, state_at, 2)
    assert len(snapshot(futex_lot).parked) == 1
    futex_lot.unpark_all(key)
    assert t.outcome().is_unparked


# ---- objects ----------------------------------------------------------------------------------

def obj_of(snap, name):
    o = snap.find_object(name)
    assert o is not None, name
    return o


def test_lock_and_rlock_states(futex_lot):
    me = (os.getpid(), tid())
    lk = shmlot.Lock(name="lk", lot=futex_lot)
    rl = shmlot.RLock(name="rl", lot=futex_lot)
    anon = shmlot.Lock(lot=futex_lot)
    s = snapshot(futex_lot)
    assert obj_of(s, "lk").state == "unlocked" and obj_of(s, "lk").owner is None
    assert obj_of(s, "lk").owner_pid is None
    lk.acquire()
    rl.acquire()
    rl.acquire()
    anon.acquire()
    try:
        s = snapshot(futex_lot)
        o = obj_of(s, "lk")
        assert o.kind == "Lock" and o.owner == me and o.owner_pid == me[0]
        assert o.state == f"locked by pid {me[0]} tid {me[1]}" and o.owner_alive is True
        r = obj_of(s, "rl")
        assert r.kind == "RLock" and r.details["count"] == 2 and "(x2)" in r.state
        a = [x for x in s.objects if x.name is None]
        assert len(a) == 1 and a[0].label == f"Lock #{a[0].index}" and a[0].owner == me
        d = o.to_dict()
        for k in ("name", "kind", "state", "owner_pid", "waiters", "key", "holds"):
            assert k in d
        assert d["anonymous"] is False and a[0].to_dict()["anonymous"] is True
    finally:
        lk.release()
        rl.release()
        rl.release()
        anon.release()


def test_waiters_and_roles(futex_lot):
    lk = shmlot.Lock(name="w-lock", lot=futex_lot)
    lk.acquire()
    waiter = threading.Thread(target=lambda: (lk.acquire(), lk.release()), daemon=True)
    waiter.start()
    cond = shmlot.Condition(name="w-cond", lot=futex_lot)
    ready = threading.Event()

    def cond_wait():
        with cond:
            ready.set()
            cond.wait(20)

    cw = threading.Thread(target=cond_wait, daemon=True)
    cw.start()
    try:
        wait_until(lambda: len(snapshot(futex_lot).parked) == 2, 10, "two waiters")
        s = snapshot(futex_lot)
        assert obj_of(s, "w-lock").waiters == 1 and obj_of(s, "w-cond").waiters == 1
        roles = {(p.object.name, p.role) for p in s.parked}
        assert roles == {("w-lock", "acquire"), ("w-cond", "wait")}
        p = [p for p in s.parked if p.object.name == "w-lock"][0]
        assert p.hint_owner == (os.getpid(), threading.get_native_id())  # the holder it saw
        assert p.to_dict()["hint_owner"] == {"pid": os.getpid(), "tid": tid()}
    finally:
        lk.release()
        with cond:
            cond.notify_all()
        waiter.join(10)
        cw.join(10)


def test_semaphore_event_barrier_states(futex_lot):
    sem = shmlot.Semaphore(3, name="sem", lot=futex_lot)
    bs = shmlot.BoundedSemaphore(3, name="bs", lot=futex_lot)
    ev = shmlot.Event(name="ev", lot=futex_lot)
    bar = shmlot.Barrier(3, name="bar", lot=futex_lot)
    sem.acquire()
    bs.acquire()
    s = snapshot(futex_lot)
    assert obj_of(s, "sem").state == "value 2" and obj_of(s, "sem").details["value"] == 2
    assert obj_of(s, "bs").state == "value 2/3" and obj_of(s, "bs").details["bound"] == 3
    assert obj_of(s, "ev").state == "unset" and obj_of(s, "ev").owner_pid is None
    assert obj_of(s, "bar").state == "0/3 waiting"
    ev.set()
    errors = []

    def party():
        try:
            bar.wait()
        except threading.BrokenBarrierError:
            errors.append("broken")

    t = threading.Thread(target=party, daemon=True)
    t.start()
    try:
        wait_until(lambda: obj_of(snapshot(futex_lot), "bar").waiters == 1, 10, "a barrier party")
        s = snapshot(futex_lot)
        b = obj_of(s, "bar")
        assert b.state == "1/3 waiting" and b.details["parties"] == 3
        assert [h.what for h in b.holds] == ["barrier-wait"]
        assert obj_of(s, "ev").state == "set"
    finally:
        bar.abort()
        t.join(10)
    assert errors == ["broken"]
    b = obj_of(snapshot(futex_lot), "bar")
    assert b.details["broken"] and b.state.startswith("broken")


def test_rwlock_states(futex_lot):
    rw = shmlot.RWLock(name="rw", lot=futex_lot)
    me = os.getpid()
    assert obj_of(snapshot(futex_lot), "rw").state == "unlocked"
    rw.acquire_read()
    got = threading.Event()
    done = threading.Event()

    def reader():
        rw.acquire_read()
        got.set()
        done.wait(20)
        rw.release_read()

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    assert got.wait(10)
    s = snapshot(futex_lot)
    o = obj_of(s, "rw")
    assert o.details["readers"] == 2 and o.details["reader_pids"] == [me]
    assert o.state == f"2 readers (pid {me})" and o.owner is None
    assert sorted(h.tid for h in o.holds) == sorted([tid(), t.native_id])
    done.set()
    t.join(10)
    rw.release_read()
    rw.acquire_write()
    try:
        # a writer waiting parks on key + 8, a reader on the key
        w = threading.Thread(target=lambda: (rw.acquire_write(), rw.release_write()),
                             daemon=True)
        w.start()
        wait_until(lambda: obj_of(snapshot(futex_lot), "rw").waiters == 1, 10, "a writer parked")
        s = snapshot(futex_lot)
        o = obj_of(s, "rw")
        assert o.state == f"write-locked by pid {me} tid {tid()}" and o.owner == (me, tid())
        assert s.parked[0].role == "write" and s.parked[0].key == (o.key + 8)
    finally:
        rw.release_write()
    w.join(10)


# ---- other processes; reaping --------------------------------------------------------------------

PARK_CHILD = r"""
import sys, threading, shmlot
lot = shmlot.ParkingLot.attach(sys.argv[1])
key, n, token = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
def park(i):
    r = lot.park(key + i * int(sys.argv[5]), park_token=token + i)
    print("woke", r.is_unparked, r.token, flush=True)
threads = [threading.Thread(target=park, args=(i,)) for i in range(n)]
for t in threads:
    t.start()
print("started", flush=True)
for t in threads:
    t.join()
"""


def start_parker(lot, key, n=1, token=0, stride=1):
    """A child process with ``n`` threads parked on key, key + stride, ..."""
    return start_python(PARK_CHILD, lot.name, key, n, token, stride)


@pytest.mark.timeout(60)
def test_other_process_shown_alive_then_dead(lot):
    key = 0x7777
    p = start_parker(lot, key, token=41)
    try:
        wait_parked(lot, key, 1)
        (x,) = snapshot(lot).parked
        import psutil
        assert x.pid == p.pid and x.alive is True and x.park_token == 41
        assert x.process == psutil.Process(p.pid).name() and "-c" in x.cmdline
        kill_and_reap(p)
        (x,) = snapshot(lot).parked  # still queued until reaped, but shown dead
        assert x.pid == p.pid and x.alive is False and x.process is None
        assert lot.reap() == (1, 0)
        assert snapshot(lot).parked == []
    finally:
        kill_all(p)


@pytest.mark.timeout(60)
def test_reap_never_wakes_or_unqueues_a_live_waiter(lot):
    key = 0x4EA9
    dead = live = None
    try:
        dead = start_parker(lot, key, token=1)
        wait_parked(lot, key, 1)
        live = start_parker(lot, key, token=2)
        assert live.stdout.readline().strip() == "started"
        wait_parked(lot, key, 2)
        me = ParkerThread(lot, key, park_token=3).start()
        wait_parked(lot, key, 3)
        kill_and_reap(dead)
        assert lot.reap() == (1, 0)
        assert lot.reap() == (0, 0)
        after = [(p.pid, p.park_token) for p in snapshot(lot).parked_on(key)]
        assert after == [(live.pid, 2), (os.getpid(), 3)]  # order kept
        assert live.poll() is None and me.is_alive()
        assert snapshot(lot).counters["reaped"] >= 1
        # the live ones are still really asleep and wake in FIFO order
        assert lot.unpark_one(key).unparked_threads == 1
        assert live.stdout.readline().split() == ["woke", "True", "0"]
        assert me.is_alive()
        assert lot.unpark_one(key).unparked_threads == 1
        assert me.outcome().is_unparked
    finally:
        kill_all(dead, live)


@pytest.mark.timeout(60)
def test_park_reaps_dead_slots_before_lot_full(make_lot):
    small = make_lot(slots=4, buckets=16)
    child = start_parker(small, 0x1000, n=4, stride=8)
    try:
        wait_until(lambda: len(snapshot(small).parked) == 4, 20, "4 threads parked in the child")
        assert snapshot(small).header["slots_free"] == 0
        with pytest.raises(LotFullError):  # all four are alive: nothing to reap
            small.park(0x2000, timeout=0.01)
        kill_and_reap(child)
        before = snapshot(small).counters["reaped"]
        r = small.park(0x2000, timeout=0.05)  # reaps the dead child's slots, then parks
        assert r.is_timed_out
        s = snapshot(small)
        assert s.parked == [] and s.header["slots_free"] == 4
        assert s.counters["reaped"] == before + 4
    finally:
        kill_all(child)


@pytest.mark.timeout(60)
def test_reap_python_call_frees_dead_slots_only(futex_lot):
    k = 0x3000
    a = start_parker(futex_lot, k, n=2, stride=8)
    b = start_parker(futex_lot, k + 100, n=1)
    try:
        wait_until(lambda: len(snapshot(futex_lot).parked) == 3, 20, "three parked")
        assert futex_lot.reap() == (0, 0)
        kill_and_reap(a)
        dead = [p for p in snapshot(futex_lot).parked if not p.alive]
        assert sorted(p.pid for p in dead) == [a.pid, a.pid]
        assert futex_lot.reap() == (2, 0)
        left = snapshot(futex_lot).parked
        assert [(p.pid, p.alive) for p in left] == [(b.pid, True)]
    finally:
        kill_all(a, b)
