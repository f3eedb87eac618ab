"""Ctrl-C during every blocking call.

A child process blocks in its main thread in one call, on an object this test process makes
unavailable (holds the Lock, the write side...). The test waits until the child is parked in the
lot, sends SIGINT and tells the child when (CLOCK_MONOTONIC is system-wide); the child measures
how long after the signal its KeyboardInterrupt arrived: under 0.2 s. Then, with the child still
alive:
- nothing of the child's is left in the lot (no slot in any state);
- the primitive is consistent: released by this process, it can be taken by someone else (no
  wake-up or unit is absorbed by the departed waiter, no writer-waiting mark keeps readers out),
  a Condition still notifies, a Barrier still completes a round with the right number of parties.
"""
import json
import os
import signal
import threading
import time

import pytest

import shmlot

from helpers.kills import kill_all
from helpers.processes import start_python
from helpers.waiting import wait_until

pytestmark = pytest.mark.timeout(60)

LATENCY = 0.2
KEY = 0x1A7_E551

CHILD = r"""
import json, sys, time
import shmlot
name, what, key = sys.argv[1], sys.argv[2], int(sys.argv[3])
lot = shmlot.ParkingLot.attach(name)
o = {
    "lock": lambda: shmlot.Lock(name="lock", lot=lot),
    "rlock": lambda: shmlot.RLock(name="rlock", lot=lot),
    "cond": lambda: shmlot.Condition(name="cond", lot=lot),
    "sem": lambda: shmlot.Semaphore(0, name="sem", lot=lot),
    "event": lambda: shmlot.Event(name="event", lot=lot),
    "barrier": lambda: shmlot.Barrier(2, name="barrier", lot=lot),
    "rw": lambda: shmlot.RWLock(name="rw", lot=lot),
}
prim = o[what.split(".")[0]]() if what != "park" else None
if what == "cond.wait":
    prim.acquire()
block = {
    "lock.acquire": lambda: prim.acquire(),
    "rlock.acquire": lambda: prim.acquire(),
    "cond.wait": lambda: prim.wait(),
    "sem.acquire": lambda: prim.acquire(),
    "event.wait": lambda: prim.wait(),
    "barrier.wait": lambda: prim.wait(),
    "rw.acquire_read": lambda: prim.acquire_read(),
    "rw.acquire_write": lambda: prim.acquire_write(),
    "park": lambda: lot.park(key),
}[what]
print("ready", flush=True)
out = {}
try:
    out["returned"] = repr(block())
except KeyboardInterrupt:
    caught = time.monotonic()
    sent = float(sys.stdin.readline())
    out["latency"] = caught - sent
if what == "cond.wait":
    out["owns_after"] = prim._is_owned()      # as in threading: wait re-acquires, then raises
    prim.release()
print(json.dumps(out), flush=True)
sys.stdin.readline()                          # until the test has looked at the lot
"""

CALLS = ["lock.acquire", "rlock.acquire", "cond.wait", "sem.acquire", "event.wait",
         "barrier.wait", "rw.acquire_read", "rw.acquire_write", "park"]


def child_slots(lot, pid):
    return [s for s in lot._snapshot()[0] if s["pid"] == pid]


@pytest.mark.parametrize("what", CALLS)
def test_ctrl_c_during_a_blocking_call(make_lot, what):
    lot = make_lot()
    objs = {
        "lock": shmlot.Lock(name="lock", lot=lot),
        "rlock": shmlot.RLock(name="rlock", lot=lot),
        "cond": shmlot.Condition(name="cond", lot=lot),
        "sem": shmlot.Semaphore(0, name="sem", lot=lot),
        "event": shmlot.Event(name="event", lot=lot),
        "barrier": shmlot.Barrier(2, name="barrier", lot=lot),
        "rw": shmlot.RWLock(name="rw", lot=lot),
    }
    # make the call block: this process holds what the child wants
    held = []
    blocking_hold = {"lock.acquire": ("lock", "acquire", "release"),
                     "rlock.acquire": ("rlock", "acquire", "release"),
                     "rw.acquire_read": ("rw", "acquire_write", "release_write"),
                     "rw.acquire_write": ("rw", "acquire_read", "release_read")}
    if what in blocking_hold:
        obj, take, give = blocking_hold[what]
        getattr(objs[obj], take)()
        held.append(getattr(objs[obj], give))

    proc = start_python(CHILD, lot.name, what, KEY)
    try:
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        wait_until(lambda: any(s["state"] == "parked" for s in child_slots(lot, proc.pid)),
                   message=f"child parked in {what}")
        sent = time.monotonic()
        os.kill(proc.pid, signal.SIGINT)
        proc.stdin.write(f"{sent!r}\n")
        proc.stdin.flush()
        line = proc.stdout.readline()
        assert line, proc.stderr.read()
        out = json.loads(line)
        assert "latency" in out, out
        assert out["latency"] < LATENCY, out
        if what == "cond.wait":
            assert out["owns_after"] is True
        # the child is alive, and has nothing left in the lot
        assert proc.poll() is None
        assert child_slots(lot, proc.pid) == []
        for release in held:
            release()
        check_consistent(lot, objs, what)
        assert child_slots(lot, proc.pid) == []
        proc.stdin.write("done\n")
        proc.stdin.flush()
        assert proc.wait(10) == 0, proc.stderr.read()
    finally:
        kill_all(proc)
    assert lot.info()["slots_free"] == lot.slots


def in_thread(fn):
    box = {}

    def run():
        try:
            box["result"] = fn()
        except BaseException as exc:  # noqa: B902 - reported below
            box["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, box


def check_consistent(lot, objs, what):
    """Someone else can use the primitive the child was interrupted in."""
    if what == "lock.acquire":
        assert objs["lock"].acquire(timeout=1)
        objs["lock"].release()
        assert objs["lock"]._word() == 0   # no PARKED bit left for a waiter that is gone
    elif what == "rlock.acquire":
        assert objs["rlock"].acquire(timeout=1)
        objs["rlock"].release()
    elif what == "cond.wait":
        cond = objs["cond"]
        t, box = in_thread(lambda: cond.acquire() and (cond.wait(5), cond.release())[0])
        wait_until(lambda: any(s["state"] == "parked" for s in lot._snapshot()[0]),
                   message="a new Condition waiter")
        with cond:
            cond.notify()
        t.join(5)
        assert box.get("result") is True, box
    elif what == "sem.acquire":
        objs["sem"].release()
        assert objs["sem"].acquire(timeout=1)      # the unit was not given to the gone waiter
    elif what == "event.wait":
        t, box = in_thread(lambda: objs["event"].wait(5))
        wait_until(lambda: any(s["state"] == "parked" for s in lot._snapshot()[0]),
                   message="a new Event waiter")
        objs["event"].set()
        t.join(5)
        assert box.get("result") is True, box
    elif what == "barrier.wait":
        bar = objs["barrier"]
        assert not bar.broken and bar.n_waiting == 0, (bar.broken, bar.n_waiting)
        t1, b1 = in_thread(lambda: bar.wait(5))
        t2, b2 = in_thread(lambda: bar.wait(5))
        t1.join(6)
        t2.join(6)
        assert sorted([b1.get("result"), b2.get("result")]) == [0, 1], (b1, b2)
    elif what == "rw.acquire_read":
        assert objs["rw"].acquire_write(timeout=1)
        objs["rw"].release_write()
    elif what == "rw.acquire_write":
        # a writer that left must not keep new readers out (writers are preferred while waiting)
        rw = objs["rw"]
        t, box = in_thread(lambda: (rw.acquire_read(timeout=1), rw.release_read())[0])
        t.join(5)
        assert box.get("result") is True, box
        assert objs["rw"].acquire_write(timeout=1)
        objs["rw"].release_write()
    elif what == "park":
        assert lot.unpark_one(KEY).unparked_threads == 0
