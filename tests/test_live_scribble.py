"""No process can be crashed through the lot: bytes written over a *live* lot, by anyone who can
write it, never make a process that uses it die by a signal.

Nothing a process reads from the segment is used as an address: the internal locks are futex
words naming their holder, and a parked thread's liveness comes from private memory (pidfds).
So whatever is written over a lot while processes are parked in it, contending on a Lock,
waiting on a Condition and notifying it, each of them gets a clean exception, a timeout, or
carries on. Shown here, on both waiter backends:

- random bytes over everything after the header's fixed description (its free list, counters,
  registry lock, the buckets, slots, objects and holds), in bursts while the workers run, then
  over all of it at once; every worker is bounded (a timeout on every wait, an overall deadline)
  and must exit by itself, by no signal;
- the same across users: a 0666 lot, the scribbler an unprivileged process (uid nobody), the
  workers root's;
- the attack robust mutexes allowed: zeros, all-ones or random bytes written over each 16-byte
  window of a parked thread's slot (where its guard mutex kept the robust-list links its unlock
  wrote through), the thread then woken by its timeout or by an unpark.
"""
import json
import mmap
import os
import random
import signal
import time

import pytest

import shmlot

from helpers import SHM_DIR
from helpers.kills import kill_all
from helpers.processes import run_python, start_python

pytestmark = pytest.mark.timeout(120)

NOBODY = 65534
FIXED_HEADER = 128   # lot.h sl_header: magic .. creator_pid (read only at attach); then the rest
SECONDS = 2.5        # how long the workers run while the lot is scribbled on
ROLES = ("parker", "locker", "locker", "waiter", "waiter", "notifier", "unparker")

WORKER = r"""
import json, os, random, sys, threading, time
import shmlot

name, role, seconds, seed = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
rnd = random.Random(seed)
outcomes = {}

def note(what):
    outcomes[what] = outcomes.get(what, 0) + 1

lot = shmlot.ParkingLot.attach(name)
lock = shmlot.Lock(name="lock", lot=lot)
cond = shmlot.Condition(name="cond", lot=lot)
print("ready", flush=True)
sys.stdin.readline()
end = time.monotonic() + seconds


def rescue():
    # A scribbled lot can leave a lock word naming this very thread while it waits, without a
    # timeout, to re-acquire a Condition's lock (it could not leave a scribbled queue and was
    # handed the lock), as threading's re-acquire has none. Once the run is over, free the
    # words so that such a wait ends and the worker exits by itself.
    time.sleep(max(0, end - time.monotonic()) + 1)
    while True:
        for w in (lock, cond._lock):
            w._cas_word(w._word(), 0)
        time.sleep(0.05)


threading.Thread(target=rescue, daemon=True).start()
while time.monotonic() < end:
    try:
        if role == "parker":
            lot.park(rnd.randrange(1, 9), timeout=0.05)
        elif role == "locker":
            if lock.acquire(timeout=0.05):
                time.sleep(0.001)
                lock.release()
        elif role == "waiter":
            if cond.acquire(timeout=0.05):
                try:
                    cond.wait(0.05)
                finally:
                    cond.release()
        elif role == "notifier":
            if cond.acquire(timeout=0.05):
                try:
                    cond.notify_all()
                finally:
                    cond.release()
            time.sleep(0.005)
        else:
            lot.unpark_all(rnd.randrange(1, 9))
            lot.unpark_one(rnd.randrange(1, 9), lambda r: 1)
            time.sleep(0.002)
        note("ok")
    except Exception as exc:
        note(type(exc).__name__)
print(json.dumps(outcomes), flush=True)
os._exit(0)  # the lot may be in any state: its finalizers are not what is tested here
"""


def fork_scribbler(path, seconds, seed, uid=None):
    """A forked child (uid ``uid`` if given) writing random bytes over the lot file ``path``
    after its fixed header: bursts of small writes, then the whole of it at half time."""
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        if uid is not None:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
        rnd = random.Random(seed)
        with open(path, "r+b") as f:
            m = mmap.mmap(f.fileno(), 0)
        size = len(m)
        t0 = time.monotonic()
        whole = False
        while time.monotonic() < t0 + seconds:
            for _ in range(rnd.randrange(1, 6)):
                n = rnd.choice((1, 4, 8, 16, 64))
                off = rnd.randrange(FIXED_HEADER, size - n)
                m[off:off + n] = rnd.randbytes(n)
            if not whole and time.monotonic() > t0 + seconds / 2:
                m[FIXED_HEADER:] = rnd.randbytes(size - FIXED_HEADER)
                whole = True
            time.sleep(0.01)
        code = 0
    finally:
        os._exit(code)


def run_round(lot, seed, uid=None):
    """Workers of every role on ``lot``, scribbled on while they run. Returns their outcomes."""
    procs = [start_python(WORKER, lot.name, role, SECONDS, seed * 100 + i)
             for i, role in enumerate(ROLES)]
    scribbler = None
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "ready", p.communicate(timeout=10)
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        time.sleep(0.3)   # parked, contending, waiting, before the first write
        scribbler = fork_scribbler(os.path.join(SHM_DIR, lot.name), SECONDS - 0.5, seed, uid)
        _, status = os.waitpid(scribbler, 0)
        scribbler = None
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
        results = []
        deadline = time.monotonic() + SECONDS + 30
        for role, p in zip(ROLES, procs):
            try:
                out, err = p.communicate(timeout=max(1, deadline - time.monotonic()))
            except Exception:
                pytest.fail(f"{role} worker {p.pid} hangs on the scribbled lot")
            assert p.returncode >= 0, \
                f"{role} worker died by signal {-p.returncode}\n{err[-3000:]}"
            assert p.returncode == 0, f"{role} worker exit {p.returncode}\n{err[-3000:]}"
            results.append((role, json.loads(out.strip().splitlines()[-1])))
        return results
    finally:
        if scribbler:
            os.kill(scribbler, signal.SIGKILL)
            os.waitpid(scribbler, 0)
        kill_all(*procs)


def make_busy_lot(make_lot, mode=0o600):
    lot = make_lot(buckets=8, slots=32, objects=16, holds=32, mode=mode)
    shmlot.Lock(name="lock", lot=lot)
    shmlot.Condition(name="cond", lot=lot)
    return lot


@pytest.mark.parametrize("seed", [1, 2])
def test_scribbling_a_live_lot_kills_no_process(make_lot, seed):
    lot = make_busy_lot(make_lot)
    results = run_round(lot, seed)
    # the workers did run (and met the scribbles: most end up with errors)
    assert all(sum(counts.values()) > 0 for _role, counts in results), results


@pytest.mark.skipif(os.geteuid() != 0, reason="acting as another user needs root")
def test_another_user_scribbling_a_shared_lot_kills_no_process(make_lot):
    lot = make_busy_lot(make_lot, mode=0o666)
    results = run_round(lot, 3, uid=NOBODY)
    assert all(sum(counts.values()) > 0 for _role, counts in results), results


SLOT_WINDOWS = r"""
import json, os, struct, sys, threading, time
import shmlot
from shmlot._core import ffi, lib

prefix, waiter = sys.argv[1], sys.argv[2]
out = []
case = 0
for window in (0, 16, 32, 48, 64, 80, 96, 104, 112):   # 104: where the guard's links were
    for pattern in ("zeros", "ones", "random"):
        for wake in ("timeout", "unpark"):
            case += 1
            lot = shmlot.ParkingLot.create(f"{prefix}{case}", buckets=4, slots=4, waiter=waiter)
            try:
                box = {}

                def park():
                    try:
                        r = lot.park(7, timeout=0.1 if wake == "timeout" else 0.5)
                        box["r"] = "unparked" if r.is_unparked else "timed out"
                    except Exception as exc:
                        box["r"] = type(exc).__name__

                t = threading.Thread(target=park)
                t.start()
                slots = ffi.new("sl_slot_info[]", 4)
                while not any(s.state == 2 for s in slots[0:max(0, lib.sl_snapshot_slots(
                        lot._h(), slots, 4))]):
                    time.sleep(0.001)
                [s] = [s for s in slots[0:4] if s.state == 2]
                stride = struct.unpack_from("<I", lot._buffer, 44)[0]
                base = struct.unpack_from("<Q", lot._buffer, 64)[0] + s.index * stride + window
                data = {"zeros": bytes(16), "ones": b"\xff" * 16,
                        "random": os.urandom(16)}[pattern]
                lot._buffer[base:base + 16] = data
                if wake == "unpark":
                    try:
                        lot.unpark_one(7, lambda r: 3)
                    except Exception:
                        pass
                t.join(10)
                out.append((window, pattern, wake, box.get("r", "still parked")))
            finally:
                lot.unlink()
print(json.dumps(out))
"""


@pytest.mark.timeout(90)
def test_overwriting_a_parked_threads_slot_kills_nothing(waiter, lot_name):
    prefix = lot_name() + "-"
    r = run_python(SLOT_WINDOWS, prefix, waiter, timeout=80, check=False)
    assert r.returncode >= 0, f"died by signal {-r.returncode}\n{r.stderr[-3000:]}"
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert len(out) == 9 * 3 * 2
    assert not [o for o in out if o[3] == "still parked"], out
