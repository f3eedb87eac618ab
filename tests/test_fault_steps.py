"""Death inside the parking lot, made deterministic.

A child process attaches to the lot, arms the C core's test hook
(``lib.sl_test_set_die_at(step)``, see ``sl_maybe_die`` in park.c) or kills itself from a callback
that runs under a bucket lock, and performs the operation: it SIGKILLs itself at that exact point,
most of the time while holding one or two bucket locks. The test process had threads parked on the
same key and bucket before the death; afterwards:

- the next operation on the bucket finds the bucket lock's holder dead, takes the lock over and
  repairs the queue (``info()['counters']['bucket_repairs']`` grows by one per dead-held bucket);
- every thread parked before the death is unparked exactly once, in FIFO order, with the token of
  the unpark that took it (no thread lost, none woken twice);
- nothing is left parked and, after ``reap()``, every slot is free again.
"""
import os
import signal
import threading

import pytest

from shmlot import FilterOp, RequeueOp
from shmlot._core import ffi, lib

from helpers.processes import run_python, start_python
from helpers.waiting import ParkerThread, parked, wait_parked, wait_until

pytestmark = pytest.mark.timeout(60)

KEY = 0x5EED_F001

# where sl_maybe_die is called, and whether the bucket lock is held there
LOCKED_STEPS = ("park_before_enqueue", "park_after_enqueue", "unpark_locked", "requeue_mid",
                "cancel_locked")
UNLOCKED_STEPS = ("unpark_before_wake",)


def bucket_of(lot, key):
    """lot.c sl_bucket_of: Fibonacci hashing on the high half."""
    return (((key * 0x9E3779B97F4A7C15) & (2**64 - 1)) >> 32) % lot.buckets


def key_in_bucket(lot, bucket, avoid=()):
    """A key other than those in ``avoid`` that hashes to ``bucket``."""
    k = 1
    while bucket_of(lot, k) != bucket or k in avoid:
        k += 1
    return k


def key_not_in_bucket(lot, bucket, start):
    k = start
    while bucket_of(lot, k) == bucket:
        k += 1
    return k


def bucket_lock_futex_offset(lot, bucket):
    """Offset of the futex word sleepers on bucket ``bucket``'s lock wait on (lot.h: 4096-byte
    header, 64-byte bucket records with the lock first: its u64 word, then its u32 wake
    counter)."""
    return 4096 + 64 * bucket + 8


def futex_addr(tid):
    """The address a thread of this process is blocked on in futex(2), else None
    (/proc/self/task/TID/syscall: number, then the arguments)."""
    try:
        with open(f"/proc/self/task/{tid}/syscall") as f:
            fields = f.read().split()
    except OSError:
        return None
    futex_nr = {"x86_64": "202", "aarch64": "98"}.get(os.uname().machine)
    if len(fields) < 2 or fields[0] != futex_nr:
        return None
    return int(fields[1], 16)


def repairs(lot):
    return lot.info()["counters"]["bucket_repairs"]


def parked_beside_a_neighbour(lot, n):
    """``n`` threads parked on KEY (tokens 0..) and one on another key of its bucket (token 10).
    Returns (the other key, the n threads, the neighbour thread, the bucket repairs so far)."""
    other = key_in_bucket(lot, bucket_of(lot, KEY), avoid={KEY})
    mine = park_threads(lot, KEY, n)
    neighbour = park_threads(lot, other, 1, first=10)
    return other, mine, neighbour, repairs(lot)


def die_in_child(lot, op, step=None):
    """Run ``op`` (Python source using ``lot``, ``KEY`` names etc. bound below) in a fresh process
    attached to ``lot``; it must die by SIGKILL (at ``step`` if given). Returns once the child is
    reaped, so its pid no longer exists."""
    code = f"""
import os, signal, sys
import shmlot
from shmlot import FilterOp, RequeueOp
from shmlot._core import ffi, lib
from shmlot import FilterOp, RequeueOp
lot = shmlot.ParkingLot.attach({lot.name!r})
def die(*args):
    os.kill(os.getpid(), signal.SIGKILL)
step = {step!r}
if step:
    lib.sl_test_set_die_at(step.encode())
{op}
print("survived", flush=True)
sys.exit(3)
"""
    proc = start_python(code)
    try:
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == -signal.SIGKILL, f"child exit {proc.returncode}\n{out}\n{err}"


def unpark_each(lot, key, threads, first_token):
    """Unpark ``threads`` (queued on ``key`` in this order) one by one with distinct tokens and
    check each got exactly its own; then nothing is left on ``key``."""
    for i, t in enumerate(threads):
        token = first_token + i
        r = lot.unpark_one(key, lambda res, token=token: token)
        assert r.unparked_threads == 1, f"thread {i} on {key:#x} was lost"
        out = t.outcome()
        assert out.is_unparked and out.token == token, (i, out)
    r = lot.unpark_one(key)
    assert r.unparked_threads == 0 and not r.have_more_threads


def park_threads(lot, key, n, first=0):
    threads = []
    for i in range(n):
        before = len(parked(lot, key))
        threads.append(ParkerThread(lot, key, park_token=first + i).start())
        wait_parked(lot, key, before + 1)
    return threads


def assert_clean(lot, expect_reaped_slot):
    """Nothing parked; every slot free once dead processes are reaped."""
    assert parked(lot) == []
    slots, _holds = lot.reap()
    assert slots == (1 if expect_reaped_slot else 0)
    info = lot.info()
    assert info["slots_free"] == lot.slots, info


# ---- the test hook: every step ------------------------------------------------------------------

@pytest.mark.parametrize("step", ["park_before_enqueue", "park_after_enqueue"])
def test_death_while_parking(make_lot, step):
    lot = make_lot()
    other, mine, neighbour, before = parked_beside_a_neighbour(lot, 2)

    die_in_child(lot, "lot.park(%d, validate=lambda: True, timeout=30)" % KEY, step)

    # the bucket's lock was held by the dead child: the next operation repairs it
    unpark_each(lot, KEY, mine, 100)
    assert repairs(lot) == before + 1
    unpark_each(lot, other, neighbour, 200)
    assert repairs(lot) == before + 1
    # before the enqueue the child's slot was only allocated (the reaper frees it); after it, the
    # slot was queued behind ours and the last unpark_one above dropped it as dead
    assert_clean(lot, expect_reaped_slot=step == "park_before_enqueue")


@pytest.mark.parametrize("step", ["unpark_locked", "unpark_before_wake"])
def test_death_while_unparking(make_lot, step):
    lot = make_lot()
    other, mine, neighbour, before = parked_beside_a_neighbour(lot, 3)

    die_in_child(lot, "lot.unpark_one(%d, lambda r: 77)" % KEY, step)

    # the first thread was dequeued with token 77 before the death; the wake-up never came, so it
    # notices at the end of its sleep slice (no unpark from us may take it a second time)
    out = mine[0].outcome(timeout=10)
    assert out.is_unparked and out.token == 77
    assert [p.park_token for p in parked(lot, KEY)] == [1, 2]
    unpark_each(lot, KEY, mine[1:], 100)
    unpark_each(lot, other, neighbour, 200)
    # unpark_before_wake dies after unlocking: nothing to repair
    assert repairs(lot) == before + (step == "unpark_locked")
    assert_clean(lot, expect_reaped_slot=False)


@pytest.mark.parametrize("same_bucket", [False, True], ids=["two-buckets", "one-bucket"])
def test_death_mid_requeue(make_lot, same_bucket):
    lot = make_lot()
    b_from = bucket_of(lot, KEY)
    if same_bucket:
        key_to = key_in_bucket(lot, b_from, avoid={KEY})
    else:
        key_to = key_not_in_bucket(lot, b_from, KEY + 1)
    waiters = park_threads(lot, KEY, 3)
    already = park_threads(lot, key_to, 1, first=10)
    before = repairs(lot)

    die_in_child(lot, "lot.unpark_requeue(%d, %d, lambda: RequeueOp.REQUEUE_ALL)"
                 % (KEY, key_to), "requeue_mid")

    # the first waiter had moved to key_to's tail when the child died; the others are still on KEY
    assert [p.park_token for p in parked(lot, key_to)] == [10, 0]
    assert [p.park_token for p in parked(lot, KEY)] == [1, 2]
    unpark_each(lot, key_to, [already[0], waiters[0]], 100)
    unpark_each(lot, KEY, waiters[1:], 200)
    assert repairs(lot) == before + (1 if same_bucket else 2)
    assert_clean(lot, expect_reaped_slot=False)


def test_death_while_cancelling_a_timed_out_park(make_lot):
    lot = make_lot()
    mine = park_threads(lot, KEY, 2)
    before = repairs(lot)

    die_in_child(lot, "lot.park(%d, timed_out=lambda key, last: None, timeout=0.05)" % KEY,
                 "cancel_locked")

    unpark_each(lot, KEY, mine, 100)
    assert repairs(lot) == before + 1
    # the child had dequeued its slot (allocated, owned by a dead process): the reaper frees it
    assert_clean(lot, expect_reaped_slot=True)


NATIVE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "shmlot", "_native")

# Every place the C sources offer to die at (file, step) and the test that kills a process there:
# (test module, test function, the parameter value that selects the step, or None). A step name
# may mark the same moment in two functions (sl_unpark_one in park.c, sl_word_unlock in
# wordlock.c), so a place is its file and its step.
STEP_TESTS = {
    ("park.c", "park_before_enqueue"): ("test_fault_steps", "test_death_while_parking",
                                        "park_before_enqueue"),
    ("park.c", "park_after_enqueue"): ("test_fault_steps", "test_death_while_parking",
                                       "park_after_enqueue"),
    ("park.c", "unpark_locked"): ("test_fault_steps", "test_death_while_unparking",
                                  "unpark_locked"),
    ("park.c", "unpark_before_wake"): ("test_fault_steps", "test_death_while_unparking",
                                       "unpark_before_wake"),
    ("park.c", "requeue_mid"): ("test_fault_steps", "test_death_mid_requeue", None),
    ("park.c", "cancel_locked"): ("test_fault_steps",
                                  "test_death_while_cancelling_a_timed_out_park", None),
    # Lock/RLock.release: _release_slow -> ParkingLot._word_unlock -> sl_word_unlock
    ("wordlock.c", "word_unlock_locked"): ("test_owner_death", "test_holder_killed_while_releasing",
                                           "in_callback"),
    ("wordlock.c", "unpark_locked"): ("test_owner_death", "test_holder_killed_while_releasing",
                                      "unpark_locked"),
    ("wordlock.c", "unpark_before_wake"): ("test_owner_death",
                                           "test_holder_killed_while_releasing",
                                           "unpark_before_wake"),
    # a process killed holding the registry lock (stopped there first, then SIGKILLed)
    ("lot.c", "registry_locked"): ("test_internal_locks",
                                   "test_registry_lock_of_a_killed_stopped_process_is_taken_over",
                                   None),
    # a reader killed between its hold and the share count, either way (rwstep.c)
    ("rwstep.c", "rw_read_mid"): (
        "test_reclaim_dead", "test_reap_takes_back_a_dead_readers_hold_whatever_the_count_says",
        "rw_read_mid"),
    ("rwstep.c", "rw_unread_mid"): (
        "test_reclaim_dead", "test_reap_takes_back_a_dead_readers_hold_whatever_the_count_says",
        "rw_unread_mid"),
    # a creator killed mid-create: the next open() replaces the segment
    ("lot.c", "create_opened"): ("test_vanished_lots", "test_open_replaces_a_dead_creators_segment",
                                 "create_opened"),
    ("lot.c", "create_before_magic"): ("test_vanished_lots", "test_open_replaces_a_dead_creators_segment",
                                       "create_before_magic"),
}


def fault_steps():
    """Every ``sl_maybe_die("step")`` in the C sources: {(file name, step)}."""
    import re
    found = set()
    for name in sorted(os.listdir(NATIVE)):
        if name.endswith((".c", ".h")):
            with open(os.path.join(NATIVE, name)) as f:
                found |= {(name, step)
                          for step in re.findall(r'sl_maybe_die\("([a-z_]+)"\)', f.read())}
    return found


def test_every_step_is_covered():
    """Every step any C source offers to die at is one a test kills at (a new step, in any file,
    fails here until a test kills a process at it and is listed in STEP_TESTS)."""
    import importlib
    found = fault_steps()
    assert ("wordlock.c", "word_unlock_locked") in found  # the scan reaches past park.c
    assert found == set(STEP_TESTS)
    for (source, step), (module, function, param) in STEP_TESTS.items():
        test = getattr(importlib.import_module(module), function, None)
        assert callable(test), f"{source} {step}: no test {module}.{function}"
        if param is not None:
            values = [v for mark in getattr(test, "pytestmark", []) if mark.name == "parametrize"
                      for v in mark.args[1]]
            assert param in values, f"{source} {step}: {function} never runs with {param!r}"
    assert {step for source, step in found if source == "park.c"} == \
        set(LOCKED_STEPS) | set(UNLOCKED_STEPS)


# ---- death inside a callback that runs under the bucket lock ------------------------------------

CALLBACK_DEATHS = {
    # name: (child op, dies holding the lock of the bucket of these keys)
    "validate": "lot.park(KEY, validate=die, timeout=30)",
    "unpark_callback": "lot.unpark_one(KEY, die)",
    "filter": "lot.unpark_filter(KEY, die)",
    "filter_after_unpark_choice":
        "lot.unpark_filter(KEY, lambda tok: FilterOp.UNPARK if tok == 0 else die())",
    "filter_callback": "lot.unpark_filter(KEY, lambda tok: FilterOp.UNPARK, die)",
    "requeue_validate": "lot.unpark_requeue(KEY, KEY2, die)",
    "requeue_callback": "lot.unpark_requeue(KEY, KEY2, lambda: RequeueOp.UNPARK_ONE_REQUEUE_REST, "
                        "die)",
    "timed_out": "lot.park(KEY, timed_out=die, timeout=0.05)",
}


@pytest.mark.parametrize("where", sorted(CALLBACK_DEATHS))
def test_death_inside_a_callback(make_lot, where):
    """Callbacks choose before anything is dequeued: a death inside one leaves every waiter
    queued, and the lock is repaired."""
    lot = make_lot()
    key2 = key_not_in_bucket(lot, bucket_of(lot, KEY), KEY + 1)
    mine = park_threads(lot, KEY, 2)
    before = repairs(lot)

    op = CALLBACK_DEATHS[where].replace("KEY2", str(key2)).replace("KEY", str(KEY))
    die_in_child(lot, op)

    assert [p.park_token for p in parked(lot, KEY)] == [0, 1]
    unpark_each(lot, KEY, mine, 100)
    assert parked(lot, key2) == []
    expected = 2 if where.startswith("requeue") else 1
    assert repairs(lot) - before >= 1
    # requeue locks both buckets; only the one we touched afterwards has been repaired so far
    lot.unpark_one(key2)
    assert repairs(lot) == before + expected
    assert_clean(lot, expect_reaped_slot=where in ("validate", "timed_out"))


# ---- other processes keep going while the dead bucket is contended -----------------------------

def test_waiters_blocked_on_the_dead_bucket_lock_recover(make_lot):
    """Threads already *waiting for the bucket lock* when its holder dies (not only later
    callers) get it: one finds the holder dead at the end of a sleep slice, takes the lock over
    and repairs, the others follow."""
    lot = make_lot()
    mine = park_threads(lot, KEY, 2)
    before = repairs(lot)
    # The child takes the bucket lock and sits in validate until told to die, so our threads can
    # queue up on the mutex itself first.
    code = f"""
import os, signal, sys
import shmlot
lot = shmlot.ParkingLot.attach({lot.name!r})
def validate():
    print("holding", flush=True)
    sys.stdin.readline()
    os.kill(os.getpid(), signal.SIGKILL)
lot.park({KEY}, validate=validate, timeout=30)
"""
    proc = start_python(code)
    try:
        assert proc.stdout.readline().strip() == "holding"
        results, tids = [], []

        def unparker(token):
            tids.append(threading.get_native_id())
            results.append(lot.unpark_one(KEY, lambda r: token).unparked_threads)

        blocked = [threading.Thread(target=unparker, args=(100 + i,)) for i in range(2)]
        for t in blocked:
            t.start()
        # both are asleep in the kernel on the bucket lock's futex word
        word = lib.sl_base_address(lot._l) + bucket_lock_futex_offset(lot, bucket_of(lot, KEY))
        wait_until(lambda: len(tids) == 2 and all(futex_addr(tid) == word for tid in tids),
                   message="unparkers blocked on the bucket lock")
        proc.stdin.write("die\n")
        proc.stdin.flush()
        proc.wait(10)
        assert proc.returncode == -signal.SIGKILL
        for t in blocked:
            t.join(10)
            assert not t.is_alive()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert sorted(results) == [1, 1]
    tokens = sorted(t.outcome().token for t in mine)
    assert tokens == [100, 101]
    assert repairs(lot) == before + 1
    assert_clean(lot, expect_reaped_slot=True)


# ---- a killed waiter that its parent has not reaped yet ----------------------------------------

def zombie_parked_on(lot, key, main_thread=True):
    """A child parked on ``key`` (in its main thread, or in a second thread), then SIGKILLed and
    left unreaped: a zombie, for which kill(pid, 0) still succeeds. Returns the Popen."""
    park = f"lot.park({key})"
    if not main_thread:
        park = (f"import threading; t = threading.Thread(target=lambda: lot.park({key})); "
                "t.start(); t.join()")
    proc = start_python(f"import shmlot\nlot = shmlot.ParkingLot.attach({lot.name!r})\n{park}\n")
    wait_until(lambda: any(p.pid == proc.pid for p in parked(lot, key)),
               message="child parked")
    os.kill(proc.pid, signal.SIGKILL)

    def zombie():
        # the main thread a zombie and every other thread gone: a killed process's other
        # threads finish exiting after its main thread turned zombie, and until they have, its
        # pidfd does not report the exit yet (see alive.c)
        with open(f"/proc/{proc.pid}/stat") as f:
            state = f.read().rpartition(")")[2].split()[0]
        return state == "Z" and os.listdir(f"/proc/{proc.pid}/task") == [str(proc.pid)]

    wait_until(zombie, message="child is a zombie")
    return proc


@pytest.mark.parametrize("main_thread", [True, False], ids=["main-thread", "other-thread"])
def test_unreaped_dead_waiter_does_not_absorb_unpark_one(make_lot, main_thread):
    """A dead waiter ahead of a live one: unpark_one must wake the live one (a zombie must not
    take the wake-up, leaving the live thread asleep with nobody to wake it)."""
    lot = make_lot()
    proc = zombie_parked_on(lot, KEY, main_thread)
    live = park_threads(lot, KEY, 1)
    r = lot.unpark_one(KEY, lambda res: 5)
    assert (r.unparked_threads, r.have_more_threads) == (1, False)
    assert live[0].outcome().token == 5
    assert parked(lot) == []
    proc.wait(10)
    assert_clean(lot, expect_reaped_slot=False)


def test_unreaped_dead_waiter_does_not_absorb_a_lone_requeue(make_lot):
    """Condition.notify() moves one waiter onto the lock (REQUEUE_ONE): not a dead one."""
    lot = make_lot()
    key_to = key_not_in_bucket(lot, bucket_of(lot, KEY), KEY + 1)
    proc = zombie_parked_on(lot, KEY)
    live = park_threads(lot, KEY, 1)
    r = lot.unpark_requeue(KEY, key_to, lambda: RequeueOp.REQUEUE_ONE)
    assert (r.requeued_threads, r.have_more_threads) == (1, False)
    assert [p.pid for p in parked(lot, key_to)] == [os.getpid()]
    unpark_each(lot, key_to, live, 100)
    proc.wait(10)
    assert_clean(lot, expect_reaped_slot=False)


def test_liveness_check_tells_a_killed_waiter_from_a_live_one(make_lot):
    """The cheap liveness check (a pidfd per peer process) says 1 for a live waiter, 0 for a
    killed one that is still a zombie (kill(pid, 0) succeeds), and the unpark goes to the live
    one."""
    lot = make_lot()
    proc = zombie_parked_on(lot, KEY)
    live = park_threads(lot, KEY, 1)
    assert {p.pid: p.guard for p in parked(lot, KEY)} == {proc.pid: 0, os.getpid(): 1}
    assert lot.unpark_one(KEY, lambda res: 5).unparked_threads == 1
    assert live[0].outcome().token == 5
    proc.wait(10)
    assert_clean(lot, expect_reaped_slot=False)


def test_waiter_liveness_without_the_cheap_check_falls_back_to_proc(make_lot):
    """Where the cheap check cannot tell (no pidfds, or turned off by the test hook), the
    unparker asks /proc instead, and a zombie still does not absorb the wake-up."""
    lot = make_lot()
    proc = zombie_parked_on(lot, KEY)
    lib.sl_test_liveness_cache(0)
    try:
        assert parked(lot, KEY)[0].guard == -1
        live = park_threads(lot, KEY, 1)
        assert lot.unpark_one(KEY, lambda res: 6).unparked_threads == 1
        assert live[0].outcome().token == 6
    finally:
        lib.sl_test_liveness_cache(1)
    proc.wait(10)
    assert_clean(lot, expect_reaped_slot=False)


def test_liveness_check_survives_its_descriptors_closed_behind_its_back(make_lot):
    """A process that closes every descriptor (as a daemon does) and reuses the numbers for
    files: the cached pidfds are gone, and their numbers now poll as readable files. The check
    must notice (the descriptor is no longer the pidfd it opened) and still tell a zombie from a
    live waiter, and hand the unpark to the live one."""
    lot = make_lot()
    proc = zombie_parked_on(lot, KEY)
    code = f"""
import os, sys, threading, time
import shmlot
from shmlot._core import ffi, lib
lot = shmlot.ParkingLot.attach({lot.name!r})
live_pid = int(sys.argv[1])
def guards():
    slots = ffi.new("sl_slot_info[]", lot.slots)
    n = lib.sl_snapshot_slots(lot._h(), slots, lot.slots)
    return sorted((s.pid == live_pid, s.guard_alive) for s in slots[0:n] if s.state == 2)
first = guards()
os.closerange(3, 4096)          # every descriptor, the lot's own included (the mapping stays)
files = [open("/dev/null", "rb") for _ in range(64)]   # numbers reused by files
second = guards()
r = lot.unpark_one({KEY}, lambda res: 9)
print(first, second, r.unparked_threads, flush=True)
"""
    live = park_threads(lot, KEY, 1)
    out = run_python(code, str(os.getpid())).stdout.strip().splitlines()[-1]
    assert out == "[(False, 0), (True, 1)] [(False, 0), (True, 1)] 1", out
    assert live[0].outcome().token == 9
    proc.wait(10)
    assert_clean(lot, expect_reaped_slot=False)


def test_unreaped_dead_waiter_is_not_offered_to_a_filter(make_lot):
    lot = make_lot()
    proc = zombie_parked_on(lot, KEY)
    live = park_threads(lot, KEY, 1, first=7)
    seen = []
    r = lot.unpark_filter(KEY, lambda tok: seen.append(tok) or FilterOp.UNPARK, lambda res: 9)
    assert seen == [7] and r.unparked_threads == 1
    assert live[0].outcome().token == 9
    proc.wait(10)
    assert_clean(lot, expect_reaped_slot=False)
