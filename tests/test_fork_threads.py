"""os.fork() while other threads of the parent are parked or hold locks.

A helper process (so that pytest itself never forks with threads running) sets the scene: threads
parked in the lot, holding a Lock, an RLock (the forking thread holds one too) and a read share
of an RWLock, waiting on a Condition, a Semaphore and an Event. Then it forks. The child:

- has a fresh identity: the cached (pid, tid, start) of park.c and of the _fast module are the
  child's (pthread_atfork), in its only thread and in threads it starts, so what it parks or
  locks is recorded as the child's;
- does not believe it owns what the parent's threads hold (the forking thread's RLock included):
  acquire with a timeout fails, release raises RuntimeError;
- uses the lot and the primitives normally: park/unpark between its own threads, new locks under
  contention, and wakes the parent's waiters (Semaphore.release, Event.set, Condition.notify,
  unpark_one on the parent's parked thread) across the fork.

The parent then checks that each of its waiters was woken by the child, releases what it holds,
and that nothing is left parked.
"""
import json

import pytest

from helpers.processes import run_python

SCENE = r"""
import json, os, sys, threading, time
import shmlot
from shmlot import _fast

name, waiter = sys.argv[1], sys.argv[2]
lot = shmlot.ParkingLot.create(name, buckets=64, slots=64, waiter=waiter)
K_PARENT, K_CHILD = 101, 202
lock = shmlot.Lock(name="lock", lot=lot)
rlock = shmlot.RLock(name="rlock", lot=lot)
mine = shmlot.RLock(name="mine", lot=lot)       # held by the forking thread itself
cond = shmlot.Condition(name="cond", lot=lot)
sem = shmlot.Semaphore(0, name="sem", lot=lot)
event = shmlot.Event(name="event", lot=lot)
rw = shmlot.RWLock(name="rw", lot=lot)
release = threading.Event()
woken = {}


def record(what, fn):
    def run():
        try:
            woken[what] = fn()
        except BaseException as exc:
            woken[what] = f"{type(exc).__name__}: {exc}"
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def hold(prim, acquire="acquire", rel="release"):
    def run():
        getattr(prim, acquire)()
        release.wait()
        getattr(prim, rel)()
        return "held"
    return run


def cond_wait():
    with cond:
        return cond.wait(30)


def parked_pids():
    slots, _, _ = lot._snapshot()
    return sorted(s["pid"] for s in slots if s["state"] == "parked")


threads = [
    record("park", lambda: lot.park(K_PARENT, timeout=30).token),
    record("lock", hold(lock)),
    record("rlock", hold(rlock)),
    record("rw_read", hold(rw, "acquire_read", "release_read")),
    record("cond", cond_wait),
    record("sem", lambda: sem.acquire(timeout=30)),
    record("event", lambda: event.wait(30)),
]
mine.acquire()
mine.acquire()
# everything in place: 4 threads parked (park, cond, sem, event), 3 holding
deadline = time.monotonic() + 10
while len(parked_pids()) < 4 or not (lock.locked() and rlock._owner() and rw._words[0].load()):
    assert time.monotonic() < deadline, (parked_pids(), woken)
    time.sleep(0.005)
parent_ident = _fast.self_ident()

r, w = os.pipe()
pid = os.fork()
if pid == 0:
    # ---- the child: one thread, everything else of the parent is gone here ----
    out = {}
    try:
        me = os.getpid()
        out["ident_main"] = list(_fast.self_ident()[:2]) == [me, threading.get_native_id()]
        out["ident_differs"] = _fast.self_ident() != parent_ident
        out["owner_bits"] = _fast.self_owner_bits() == _fast.owner_bits(
            me, threading.get_native_id(), _fast.self_ident()[2])
        # what the parent's threads hold is not ours
        out["lock_busy"] = lock.acquire(timeout=0.1) is False
        out["rlock_busy"] = rlock.acquire(timeout=0.1) is False
        out["mine_not_owned"] = mine._is_owned() is False and mine.acquire(timeout=0.1) is False
        try:
            mine.release()
            out["mine_release"] = "released!"
        except RuntimeError:
            out["mine_release"] = "RuntimeError"
        out["rw_write_busy"] = rw.acquire_write(timeout=0.1) is False
        out["rw_read_shared"] = rw.acquire_read(timeout=1)
        rw.release_read()
        # park/unpark between the child's own threads; the slot records the child's identity
        seen = {}

        def child_parker():
            seen["tid"] = threading.get_native_id()
            seen["result"] = lot.park(K_CHILD, timeout=10).token
        t = threading.Thread(target=child_parker)
        t.start()
        deadline = time.monotonic() + 10
        while not [s for s in lot._snapshot()[0] if s["key"] == K_CHILD and s["state"] == "parked"]:
            assert time.monotonic() < deadline
            time.sleep(0.002)
        slot = [s for s in lot._snapshot()[0] if s["key"] == K_CHILD][0]
        lot.unpark_one(K_CHILD, lambda res: 77)
        t.join(10)
        out["child_thread_slot"] = [slot["pid"], slot["tid"]] == [me, seen["tid"]]
        out["child_thread_park"] = seen["result"]
        out["park_timeout"] = lot.park(K_CHILD, timeout=0.05).is_timed_out
        # a new lock, contended by two threads of the child; its word names the child
        fresh = shmlot.Lock(lot=lot)
        count = [0]

        def bump():
            for _ in range(2000):
                with fresh:
                    count[0] += 1
        ts = [threading.Thread(target=bump) for _ in range(3)]
        for x in ts:
            x.start()
        for x in ts:
            x.join(30)
        out["contended_count"] = count[0]
        with fresh:
            out["word_names_child"] = fresh._owner() == (me, threading.get_native_id())
        # wake the parent's waiters across the fork
        out["unpark_parent"] = lot.unpark_one(K_PARENT, lambda res: 55).unparked_threads
        sem.release()
        event.set()
        with cond:
            cond.notify()
    except BaseException as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
    os.write(w, json.dumps(out).encode())
    os._exit(0)

# ---- the parent ----
os.close(w)
_, status = os.waitpid(pid, 0)
child = json.loads(os.read(r, 65536).decode() or "{}")
for what in ("park", "cond", "sem", "event"):
    deadline = time.monotonic() + 10
    while what not in woken and time.monotonic() < deadline:
        time.sleep(0.005)
mine.release()
mine.release()
release.set()
for t in threads:
    t.join(10)
leftover = parked_pids()
slots_free = lot.info()["slots_free"]
lot.unlink()
print(json.dumps({"status": status, "child": child, "woken": woken, "leftover": leftover,
                  "slots_free": slots_free}))
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("waiter", ["futex", "semaphore"])
def test_fork_with_threads_parked_and_holding(lot_name, waiter):
    r = run_python(SCENE, lot_name(), waiter, timeout=50)
    res = json.loads(r.stdout.strip().splitlines()[-1])
    child = res["child"]
    assert res["status"] == 0 and "error" not in child, res
    assert child == {
        "ident_main": True, "ident_differs": True, "owner_bits": True,
        "lock_busy": True, "rlock_busy": True, "mine_not_owned": True,
        "mine_release": "RuntimeError", "rw_write_busy": True, "rw_read_shared": True,
        "child_thread_slot": True, "child_thread_park": 77, "park_timeout": True,
        "contended_count": 6000, "word_names_child": True, "unpark_parent": 1,
    }, child
    assert res["woken"] == {"park": 55, "cond": True, "sem": True, "event": True,
                            "lock": "held", "rlock": "held", "rw_read": "held"}, res
    assert res["leftover"] == [] and res["slots_free"] == 64, res
