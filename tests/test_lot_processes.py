"""A lot between processes, on both backends: children started by
multiprocessing (fork: the handle inherited; spawn and forkserver: the handle pickled, i.e.
attached by name) and unrelated interpreters (``python -c``) that attach by name. Also: ``open``
racing in 8 processes, the resource tracker never unlinking a lot, ``key_for`` agreeing across
processes, queue order and tokens across processes, and a killed parker's slot coming back."""
import multiprocessing
import os
import sys
import time

import pytest

from shmlot import FilterOp, ParkingLot, RequeueOp, key_for

from helpers import SHM_DIR
from helpers.kills import kill_and_reap
from helpers.processes import run_python, start_python
from helpers.waiting import ParkerThread, parked, wait_parked, wait_until

pytestmark = pytest.mark.timeout(120)

MP_MODES = ("fork", "spawn", "forkserver")
ALL_MODES = MP_MODES + ("popen",)

# Child code shared by multiprocessing children (defined here by exec, so that spawn can find it
# by module and name) and by ``python -c`` children (which import nothing but shmlot).
CHILD_LIB = '''
import os, sys, time

def roundtrip(lot, a, b, c):
    """Park on a (expect token 7); unpark the parent's thread on b (token 8); then, with the
    parent's two threads parked on c (park tokens 1, 2), unpark the one with token 2 by filter
    and requeue the other onto b, where the parent unparks it."""
    from shmlot import FilterOp, RequeueOp
    r = lot.park(a, park_token=os.getpid(), timeout=60)
    assert r.is_unparked and r.token == 7, r
    deadline = time.monotonic() + 60
    while lot.unpark_one(b, lambda res: 8).unparked_threads == 0:
        assert time.monotonic() < deadline, "nobody parked on b"
        time.sleep(0.001)
    seen = []
    deadline = time.monotonic() + 60
    while True:
        seen.clear()
        r = lot.unpark_filter(c, lambda tok: seen.append(tok) or (
            FilterOp.UNPARK if tok == 2 else FilterOp.SKIP), lambda res: 9)
        if r.unparked_threads:
            break
        assert time.monotonic() < deadline, "nobody parked on c"
        time.sleep(0.001)
    assert seen == [1, 2], seen
    assert (r.unparked_threads, r.have_more_threads) == (1, True)
    r = lot.unpark_requeue(c, b, lambda: RequeueOp.REQUEUE_ALL)
    assert (r.unparked_threads, r.requeued_threads) == (0, 1)
    print("child ok", flush=True)
'''
exec(CHILD_LIB)  # defines roundtrip() in this module

POPEN_ROUNDTRIP = CHILD_LIB + '''
from shmlot import ParkingLot
roundtrip(ParkingLot.attach(sys.argv[1]), *map(int, sys.argv[2:5]))
'''


def start_child(mode, target, lot, *args):
    """Start ``target(lot, *args)`` in a child: multiprocessing (fork/spawn/forkserver) gets the
    lot object, ``popen`` runs POPEN code with the lot's name (target is then the code)."""
    if mode == "popen":
        return start_python(target, lot.name, *args, stdin=None)
    ctx = multiprocessing.get_context(mode)
    p = ctx.Process(target=target, args=(lot, *args), daemon=True)
    p.start()
    return p


def finish_child(proc, timeout=60):
    """Wait for a child; fail with its output if it did not exit 0."""
    if isinstance(proc, multiprocessing.process.BaseProcess):
        proc.join(timeout)
        if proc.exitcode is None:
            proc.kill()
            proc.join(10)
            pytest.fail(f"child {proc.pid} still running after {timeout} s")
        assert proc.exitcode == 0, f"child exited with {proc.exitcode} (traceback above)"
        return ""
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"child exited with {proc.returncode}\n{out}\n{err}"
    return out


@pytest.mark.parametrize("mode", ALL_MODES)
def test_lot_usable_from_child(lot, mode):
    a, b, c = 0xA1, 0xB1, 0xC1
    proc = start_child(mode, POPEN_ROUNDTRIP if mode == "popen" else roundtrip, lot, a, b, c)
    try:
        # the child parks on a; we unpark it
        [p] = wait_parked(lot, a, 1, timeout=60)
        assert p.pid == proc.pid and p.park_token == proc.pid
        assert lot.unpark_one(a, lambda r: 7).unparked_threads == 1
        # we park on b; the child unparks us
        assert ParkerThread(lot, b).start().outcome(60).token == 8
        # two of ours on c: the child unparks one by filter and requeues the other onto b
        t1, t2 = (ParkerThread(lot, c, park_token=1).start(),)[0], None
        wait_parked(lot, c, 1)
        t2 = ParkerThread(lot, c, park_token=2).start()
        assert t2.outcome(60).token == 9
        wait_parked(lot, b, 1, timeout=60)
        assert parked(lot, c) == []
        assert lot.unpark_one(b, lambda r: 10).unparked_threads == 1
        assert t1.outcome().token == 10
    finally:
        out = finish_child(proc)
    if mode == "popen":
        assert out.strip() == "child ok"
    assert parked(lot) == []
    wait_until(lambda: lot.info()["slots_free"] == lot.slots, message="all slots free")


# ---- FIFO order and tokens across processes -----------------------------------------------

POPEN_PARKER = '''
import sys
from shmlot import ParkingLot
lot = ParkingLot.attach(sys.argv[1])
r = lot.park(int(sys.argv[2]), park_token=int(sys.argv[3]), timeout=60)
print(r.is_unparked, r.token, flush=True)
'''


@pytest.mark.timeout(180)
def test_filter_and_requeue_of_parkers_in_unrelated_processes(lot):
    a, b = 0xA2, 0xB2
    procs = []
    for i in range(5):
        procs.append(start_python(POPEN_PARKER, lot.name, a, 100 + i, stdin=None))
        wait_parked(lot, a, i + 1, timeout=60)
    assert [p.pid for p in parked(lot, a)] == [p.pid for p in procs]
    assert [p.park_token for p in parked(lot, a)] == [100, 101, 102, 103, 104]
    seen = []
    r = lot.unpark_filter(a, lambda tok: seen.append(tok) or (
        FilterOp.UNPARK if tok % 2 == 0 else FilterOp.SKIP), lambda res: 55)
    assert seen == [100, 101, 102, 103, 104]
    assert (r.unparked_threads, r.have_more_threads) == (3, True)
    for i in (0, 2, 4):
        assert finish_child(procs[i]).split() == ["True", "55"]
    r = lot.unpark_requeue(a, b, lambda: RequeueOp.UNPARK_ONE_REQUEUE_REST, lambda op, res: 66)
    assert (r.unparked_threads, r.requeued_threads, r.have_more_threads) == (1, 1, False)
    assert finish_child(procs[1]).split() == ["True", "66"]
    [p] = parked(lot, b)
    assert p.pid == procs[3].pid and p.park_token == 103
    assert lot.unpark_all(b, 77) == 1
    assert finish_child(procs[3]).split() == ["True", "77"]


@pytest.mark.parametrize("mode", ["fork", "popen"])
def test_timeout_in_child_leaves_nothing(lot, mode):
    code = '''
import sys, time
from shmlot import ParkingLot
lot = ParkingLot.attach(sys.argv[1])
calls = []
t0 = time.monotonic()
r = lot.park(5, timed_out=lambda k, last: calls.append((k, last)), timeout=0.05)
assert r.is_timed_out and calls == [(5, True)] and time.monotonic() - t0 >= 0.05
print("ok")
'''
    if mode == "popen":
        assert run_python(code, lot.name).stdout.strip() == "ok"
    else:
        p = start_child("fork", _timeout_child, lot)
        finish_child(p)
    assert parked(lot) == [] and lot.info()["slots_free"] == lot.slots
    assert lot.info()["counters"]["timeouts"] == 1


def _timeout_child(lot):
    r = lot.park(5, timeout=0.05)
    assert r.is_timed_out


def test_killed_parker_slot_comes_back(lot):
    proc = start_python(POPEN_PARKER, lot.name, 0xD1, 1, stdin=None)
    wait_parked(lot, 0xD1, 1, timeout=60)
    assert lot.info()["slots_free"] == lot.slots - 1
    kill_and_reap(proc, timeout=30)
    # nobody to wake: the dead parker is dropped, not counted as unparked
    assert lot.unpark_one(0xD1).unparked_threads == 0
    assert parked(lot) == []
    assert lot.info()["slots_free"] == lot.slots
    assert lot.reap() == (0, 0)


def test_reap_frees_a_killed_parkers_slot(lot):
    proc = start_python(POPEN_PARKER, lot.name, 0xD2, 1, stdin=None)
    wait_parked(lot, 0xD2, 1, timeout=60)
    kill_and_reap(proc, timeout=30)
    assert lot.reap() == (1, 0)
    assert parked(lot) == [] and lot.info()["slots_free"] == lot.slots


# ---- open is race-free ------------------------------------------------------------------------

def _open_racer(name, waiter, barrier, queue):
    barrier.wait(30)
    try:
        lot = ParkingLot.open(name, buckets=16, slots=16, waiter=waiter)
        info = lot.info()
        queue.put((os.getpid(), info["lot_id"], info["creator_pid"], lot.waiter, lot.slots))
    except BaseException as exc:
        queue.put((os.getpid(), repr(exc), None, None, None))


@pytest.mark.timeout(120)
def test_open_race_8_forked_processes(lot_name, waiter):
    ctx = multiprocessing.get_context("fork")
    for _ in range(10):
        name = lot_name()
        barrier, queue = ctx.Barrier(8), ctx.Queue()
        procs = [ctx.Process(target=_open_racer, args=(name, waiter, barrier, queue))
                 for _ in range(8)]
        for p in procs:
            p.start()
        results = [queue.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(30)
            assert p.exitcode == 0
        pids = {p.pid for p in procs}
        ids = {r[1] for r in results}
        assert len(ids) == 1 and isinstance(next(iter(ids)), int), results
        assert {r[2] for r in results} <= pids  # one of them created it
        assert {(r[3], r[4]) for r in results} == {(waiter, 16)}
        lot = ParkingLot.attach(name)
        assert lot.info()["lot_id"] == results[0][1]
        lot.unlink()


POPEN_OPENER = '''
import os, sys, time
from shmlot import ParkingLot
name, waiter, gate = sys.argv[1:4]
print("ready", flush=True)
while not os.path.exists(gate):
    time.sleep(0.0002)
lot = ParkingLot.open(name, buckets=16, slots=16, waiter=waiter)
i = lot.info()
print(i["lot_id"], i["creator_pid"], lot.waiter, flush=True)
'''


@pytest.mark.timeout(180)
def test_open_race_8_unrelated_processes(lot_name, waiter, tmp_path):
    for round_ in range(3):
        name = lot_name()
        gate = tmp_path / f"gate{round_}"
        procs = [start_python(POPEN_OPENER, name, waiter, gate, stdin=None) for _ in range(8)]
        for p in procs:
            assert p.stdout.readline().strip() == "ready"
        gate.touch()
        outs = [finish_child(p).split() for p in procs]
        assert len({o[0] for o in outs}) == 1, outs
        assert {int(o[1]) for o in outs} <= {p.pid for p in procs}
        assert {o[2] for o in outs} == {waiter}
        ParkingLot.attach(name).unlink()


# ---- the resource tracker never unlinks a lot -----------------------------------------------

def tracker_child(name, what, waiter):
    if what == "create":
        lot = ParkingLot.create(name, slots=8, waiter=waiter)
    else:
        lot = ParkingLot.attach(name)
    assert lot.park(1, timeout=0.001).is_timed_out
    lot.close()


TRACKER_PARENT = '''
import multiprocessing as mp, sys
from multiprocessing import resource_tracker
from test_lot_processes import tracker_child
if __name__ == "__main__":
    attach_name, create_name, waiter = sys.argv[1:4]
    ctx = mp.get_context("spawn")
    for name, what in ((attach_name, "attach"), (create_name, "create")):
        p = ctx.Process(target=tracker_child, args=(name, what, waiter))
        p.start()
        p.join(60)
        assert p.exitcode == 0, p.exitcode
    # make the tracker finish now (it would unlink what it thinks leaked, and warn)
    resource_tracker._resource_tracker._stop()
    print("done", flush=True)
'''


@pytest.mark.timeout(120)
def test_resource_tracker_never_unlinks_a_lot(make_lot, lot_name, waiter):
    """Spawned children attach to one lot and create another, and exit; then their parent (an
    unrelated interpreter) exits too, with its resource tracker. Both lots survive, and nobody
    complains about leaked shared memory."""
    lot = make_lot(slots=8)
    created = lot_name()
    result = run_python(TRACKER_PARENT, lot.name, created, waiter)
    assert result.stdout.strip() == "done"
    assert "resource_tracker" not in result.stderr and "leaked" not in result.stderr, \
        result.stderr
    assert os.path.exists(os.path.join(SHM_DIR, lot.name))
    assert ParkingLot.attach(lot.name).info()["lot_id"] == lot.info()["lot_id"]
    assert os.path.exists(os.path.join(SHM_DIR, created))
    other = ParkingLot.attach(created)
    assert other.waiter == waiter
    other.unlink()


@pytest.mark.parametrize("mode", MP_MODES)
def test_child_exit_keeps_the_lot(make_lot, mode):
    lot = make_lot(slots=8)
    ctx = multiprocessing.get_context(mode)
    p = ctx.Process(target=tracker_child, args=(lot.name, "attach", lot.waiter))
    p.start()
    p.join(60)
    assert p.exitcode == 0
    assert os.path.exists(os.path.join(SHM_DIR, lot.name))
    assert lot.park(1, timeout=0).is_timed_out


# ---- key_for agrees across processes ------------------------------------------------------

KEYS_CHILD = '''
import sys
from multiprocessing import shared_memory, resource_tracker
from shmlot import key_for
name = sys.argv[1]
shm = shared_memory.SharedMemory(name)
resource_tracker.unregister(shm._name, "shared_memory")  # we only borrow it
class Obj:
    key = key_for(shm, 64)
print(key_for(shm), key_for(shm, 8), key_for(name, 8), key_for("/" + name, 8), key_for(Obj, 8),
      key_for(Obj), shm.buf.tobytes()[:1] and 0, flush=True)
import ctypes
print(ctypes.addressof(ctypes.c_char.from_buffer(shm.buf)), flush=True)
'''


def _keys_here(shm):
    class Obj:
        key = key_for(shm, 64)
    return [key_for(shm), key_for(shm, 8), key_for(shm.name, 8), key_for("/" + shm.name, 8),
            key_for(Obj, 8), key_for(Obj), 0]


@pytest.fixture
def shared_memory(lot_name):
    from multiprocessing import shared_memory as sm
    shm = sm.SharedMemory(lot_name("keys-"), create=True, size=4096)
    yield shm
    shm.close()
    shm.unlink()


def test_key_for_is_equal_across_processes(shared_memory):
    shm = shared_memory
    here = _keys_here(shm)
    assert here[1] == here[2] == here[3] == (here[0] + 8) % 2**64
    assert here[4] == (here[5] + 8) % 2**64
    outs = [run_python(KEYS_CHILD, shm.name).stdout.splitlines() for _ in range(2)]
    for out in outs:
        assert [int(x) for x in out[0].split()] == here
    # (and the children mapped it at their own addresses; the keys do not depend on that)


PARK_ON_SHM_KEY = '''
import sys
from shmlot import ParkingLot, key_for
lot = ParkingLot.attach(sys.argv[1])
r = lot.park(key_for(sys.argv[2], 8), timeout=60)
print(r.token, flush=True)
'''


def test_park_on_key_for_a_segment_across_processes(lot, shared_memory):
    proc = start_python(PARK_ON_SHM_KEY, lot.name, shared_memory.name, stdin=None)
    key = key_for(shared_memory, 8)
    wait_parked(lot, key, 1, timeout=60)
    assert lot.unpark_one(key, lambda r: 31).unparked_threads == 1
    assert finish_child(proc).strip() == "31"


# ---- many processes at once ------------------------------------------------------------------

def _many_parker(lot, key, n):
    for _ in range(n):
        r = lot.park(key, timeout=60)
        assert r.is_unparked and r.token == 1, r


@pytest.mark.timeout(180)
def test_processes_park_and_get_unparked_repeatedly(make_lot):
    """6 forked processes park 100 times each on one key; the parent unparks one at a time until
    all are done. Nobody is lost, nobody is woken twice."""
    lot = make_lot(slots=64)
    key, nprocs, rounds = 0xE1, 6, 100
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_many_parker, args=(lot, key, rounds), daemon=True)
             for _ in range(nprocs)]
    for p in procs:
        p.start()
    woken = 0
    deadline = time.monotonic() + 150
    while woken < nprocs * rounds:
        r = lot.unpark_one(key, lambda res: 1)
        if r.unparked_threads:
            woken += 1
        else:
            assert time.monotonic() < deadline, f"only {woken} unparks"
            time.sleep(0.0002)
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert lot.unpark_one(key).unparked_threads == 0
    c = lot.info()["counters"]
    assert c["parks"] == c["unparks"] == nprocs * rounds
    assert lot.info()["slots_free"] == lot.slots


EXIT_WITH_DAEMONS = '''
import sys, threading, time
from shmlot import ParkingLot
lot = ParkingLot.attach(sys.argv[1])
def loop(key):
    while True:
        lot.park(key, timeout=0.0001 if key == 1 else None)
for key in (1, 2):
    threading.Thread(target=loop, args=(key,), daemon=True).start()
deadline = time.monotonic() + 30
while lot.info()["counters"]["parks"] < 200 and time.monotonic() < deadline:
    time.sleep(0.001)
print("exiting", flush=True)
'''


def test_exit_with_daemon_threads_parked(lot):
    """A process may exit while daemon threads are parked in the lot or busy parking: it exits
    cleanly (no crash from the lot being unmapped under them), and its dead parker is dropped."""
    for _ in range(5):
        r = run_python(EXIT_WITH_DAEMONS, lot.name, check=False, timeout=60)
        assert r.returncode == 0 and r.stdout.strip() == "exiting", (r.returncode, r.stderr)
    assert lot.unpark_one(2).unparked_threads == 0  # the dead parkers are dropped, not woken
    assert lot.unpark_all(1) == 0
    wait_until(lambda: lot.reap() is not None and lot.info()["slots_free"] == lot.slots,
               message="the dead processes' slots back")
