"""Owner death: a process SIGKILLed while holding, waiting for, or releasing a
Lock, an RLock or the write side of an RWLock never strands the lock; a dead reader's share of an
RWLock is reclaimed; liveness is pid *and* start time.

Real processes, real SIGKILL. Every child is a fork of the test process (or a ``python -c``
process attaching by name), killed with SIGKILL and reaped; "within 1 s" is measured from the kill.
Barrier and Condition deaths are in test_barrier.py and test_condition.py.
"""
import multiprocessing
import os
import signal
import sys
import threading
import time

import pytest

import shmlot
from shmlot import _fast
from shmlot._core import lib

from helpers.kills import kill_and_reap
from helpers.processes import start_python
from helpers.waiting import parked, wait_parked_at_least, wait_until

pytestmark = pytest.mark.timeout(60)

FORK = multiprocessing.get_context("fork")
LOCKED, PARKED = _fast.LOCKED_BIT, _fast.PARKED_BIT
KINDS = ("Lock", "RLock", "RWLock")
DEATH_BOUND = 1.0  # seconds from the kill to the next acquirer holding the lock


# ---- the three lock kinds behind one interface ------------------------------------------------

def make(kind, **kw):
    return getattr(shmlot, kind)(**kw)


def acquire(obj, **kw):
    if isinstance(obj, shmlot.RWLock):
        return obj.acquire_write(**kw)
    return obj.acquire(**kw)


def release(obj):
    if isinstance(obj, shmlot.RWLock):
        obj.release_write()
    else:
        obj.release()


def word(obj):
    return obj._words[0].load() if isinstance(obj, shmlot.RWLock) else obj._word()


def park_key(obj):
    """The key a blocked (write) acquirer parks on."""
    return obj._wkey if isinstance(obj, shmlot.RWLock) else obj.key


def held_by_me(obj):
    return word(obj) & ~PARKED == _fast.self_owner_bits() | LOCKED


def word_pid(obj):
    return _fast.word_owner(word(obj))[0]


# ---- children --------------------------------------------------------------------------------

def _hold_forever(obj):
    acquire(obj)
    if isinstance(obj, shmlot.RLock):
        obj.acquire()  # recursion count 2: the next owner must start again at 1
    time.sleep(120)


def _acquire_forever(obj):
    acquire(obj)
    time.sleep(120)


def _read_forever(rw, n):
    for _ in range(n):
        rw.acquire_read()
    time.sleep(120)


def start_child(target, *args):
    p = FORK.Process(target=target, args=args, daemon=True)
    p.start()
    return p


class Acquirer(threading.Thread):
    """Acquire ``obj`` in a thread; record how (True/False, "died", or the exception), when,
    whether the thread then held it (and the RLock count), and release it if so."""

    def __init__(self, obj, **kw):
        super().__init__(daemon=True)
        self.obj, self.kw = obj, kw
        self.outcome = self.when = self.held = self.count = None

    def run(self):
        try:
            self.outcome = acquire(self.obj, **self.kw)
        except shmlot.OwnerDiedError:
            self.outcome = "died"
        except BaseException as exc:  # noqa: B902 - reported to the test
            self.outcome = exc
        self.when = time.monotonic()
        self.held = held_by_me(self.obj)
        if isinstance(self.obj, shmlot.RLock):
            self.count = self.obj._recursion_count()
        if self.held:
            release(self.obj)

    def result(self, timeout=10):
        self.join(timeout)
        assert not self.is_alive(), "acquirer still blocked"
        return self.outcome


def deaths(lot):
    return lot.info()["counters"]["owner_deaths"]


# ---- killed while holding ----------------------------------------------------------------------

@pytest.mark.parametrize("reaped", [True, False], ids=["reaped", "zombie"])
@pytest.mark.parametrize("kind", KINDS)
def test_holder_killed_blocked_waiter_gets_it(default_lot, kind, reaped):
    """A waiter already blocked when the holder is SIGKILLed gets the lock within 1 s, with
    OwnerDiedError, holding it; it can release it; a later acquire is normal. The same while
    the dead holder is a zombie (its parent has not waited for it yet)."""
    obj = make(kind)
    child = start_child(_hold_forever, obj)
    wait_until(lambda: word(obj) & LOCKED and word_pid(obj) == child.pid, message="child holds")
    before = deaths(default_lot)
    waiter = Acquirer(obj)
    waiter.start()
    wait_parked_at_least(default_lot, park_key(obj), 1)
    if reaped:
        killed_at = kill_and_reap(child)
    else:
        os.kill(child.pid, signal.SIGKILL)
        killed_at = time.monotonic()
    assert waiter.result() == "died"
    child.join(10)
    assert waiter.when - killed_at < DEATH_BOUND
    assert waiter.held, "OwnerDiedError must leave the lock held by the caller"
    if kind == "RLock":
        assert waiter.count == 1
    assert deaths(default_lot) == before + 1
    # released by the waiter: a later acquire is normal
    assert acquire(obj, timeout=5) is True
    release(obj)
    assert word(obj) & LOCKED == 0


@pytest.mark.parametrize("how", ["blocking", "timeout", "non-blocking"])
@pytest.mark.parametrize("kind", KINDS)
def test_holder_killed_next_acquirer_gets_it(default_lot, kind, how):
    """After the holder is gone, the next acquire (blocking, with a timeout, or non-blocking)
    raises OwnerDiedError with the lock held; release works; the acquire after is normal."""
    obj = make(kind)
    child = start_child(_hold_forever, obj)
    wait_until(lambda: word(obj) & LOCKED and word_pid(obj) == child.pid, message="child holds")
    kill_and_reap(child)
    kw = {"blocking": {}, "timeout": {"timeout": 5}, "non-blocking": {"blocking": False}}[how]
    t0 = time.monotonic()
    with pytest.raises(shmlot.OwnerDiedError) as info:
        acquire(obj, **kw)
    assert time.monotonic() - t0 < DEATH_BOUND
    assert isinstance(info.value, RuntimeError)
    assert str(child.pid) in str(info.value)
    assert held_by_me(obj)
    if kind == "RLock":
        assert obj._recursion_count() == 1
    release(obj)
    assert not word(obj) & LOCKED
    assert acquire(obj, blocking=False) is True
    release(obj)


def test_holder_killed_several_waiters_one_gets_death(default_lot):
    """Of several blocked waiters (threads here, a process there), exactly one gets
    OwnerDiedError; all of them get the lock in turn."""
    lock = shmlot.Lock()
    child = start_child(_hold_forever, lock)
    wait_until(lambda: lock.locked() and word_pid(lock) == child.pid, message="child holds")
    waiters = [Acquirer(lock) for _ in range(3)]
    for w in waiters:
        w.start()
    wait_parked_at_least(default_lot, lock.key, 3)
    killed_at = kill_and_reap(child)
    outcomes = [w.result() for w in waiters]
    assert sorted(map(str, outcomes)) == ["True", "True", "died"]
    first = min(w.when for w in waiters)
    assert first - killed_at < DEATH_BOUND
    assert not lock.locked()


@pytest.mark.parametrize("kind", ["Lock", "RLock"])
def test_unrelated_processes_named_lock_death(default_lot, kind):
    """A ``python -c`` process holding a named lock is killed; another ``python -c`` process that
    opens the lock by name gets OwnerDiedError and the lock."""
    name = f"od-{kind}-{os.getpid()}"
    holder = start_python(f"""
        import sys, time, shmlot
        lock = shmlot.{kind}(name={name!r})
        lock.acquire()
        print("held", flush=True)
        time.sleep(120)
    """, env={"SHMLOT_LOT": default_lot.name, "SHMLOT_WAITER": default_lot.waiter})
    assert holder.stdout.readline().strip() == "held"
    kill_and_reap(holder)
    taker = start_python(f"""
        import shmlot
        lock = shmlot.{kind}(name={name!r})
        try:
            lock.acquire(timeout=5)
        except shmlot.OwnerDiedError:
            print("died", lock.locked(), flush=True)
            lock.release()
        print(lock.acquire(timeout=5), flush=True)
        lock.release()
    """, env={"SHMLOT_LOT": default_lot.name, "SHMLOT_WAITER": default_lot.waiter})
    out, err = taker.communicate(timeout=30)
    assert taker.returncode == 0, err
    assert out.split() == ["died", "True", "True"]
    shmlot.unlink_object(name)


# ---- killed while waiting ------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_waiter_killed_does_not_block_others(default_lot, kind):
    """A process killed while blocked in acquire is dropped from the queue: the release goes to
    the live waiter behind it, promptly and without OwnerDiedError."""
    obj = make(kind)
    assert acquire(obj)
    child = start_child(_acquire_forever, obj)
    wait_parked_at_least(default_lot, park_key(obj), 1)
    waiter = Acquirer(obj)
    waiter.start()
    wait_parked_at_least(default_lot, park_key(obj), 2)
    kill_and_reap(child)
    t0 = time.monotonic()
    release(obj)
    assert waiter.result() is True
    assert waiter.when - t0 < DEATH_BOUND
    assert not parked(default_lot, park_key(obj))
    assert acquire(obj, blocking=False) is True
    release(obj)


@pytest.mark.parametrize("fair", [False, True])
def test_waiter_killed_never_gets_handoff(default_lot, fair):
    """A dead waiter at the head of the queue is never handed the lock (fair or not): the lock
    goes to the live waiter, the word never names the dead process."""
    lock = shmlot.Lock()
    lock.acquire()
    child = start_child(_acquire_forever, lock)
    wait_parked_at_least(default_lot, lock.key, 1)
    waiter = Acquirer(lock)
    waiter.start()
    wait_parked_at_least(default_lot, lock.key, 2)
    kill_and_reap(child)
    lock._release_slow(force_fair=fair)
    assert waiter.result() is True
    assert not lock.locked()


# ---- killed while releasing ----------------------------------------------------------------------

def _release_and_die(obj, go, how):
    """Hold ``obj``; when ``go`` is set, release it and die at step ``how`` of the release."""
    acquire(obj)
    go.wait(30)
    die = lambda *a: os.kill(os.getpid(), signal.SIGKILL)  # noqa: E731
    if how in ("unpark_locked", "unpark_before_wake"):
        lib.sl_test_set_die_at(how.encode())
    elif how.startswith("in_callback"):
        # inside unlock_slow, under the bucket lock, right after the word is changed (hand-off
        # or unlock) and before the waiter is dequeued and woken
        lib.sl_test_set_die_at(b"word_unlock_locked")
        if how == "in_callback_fair":
            obj._release_slow = lambda: type(obj)._release_slow(obj, force_fair=True)
    elif how == "before_unpark":
        # RWLock: after the state word is released, before any unpark
        shmlot._engine.unpark_one = die
        shmlot._engine.unpark_all = die
    release(obj)
    time.sleep(120)  # not reached when the death step is on the path


RELEASE_STEPS = ["in_callback", "in_callback_fair", "unpark_locked", "unpark_before_wake"]


@pytest.mark.parametrize("how", RELEASE_STEPS)
@pytest.mark.parametrize("kind", ["Lock", "RLock"])
def test_holder_killed_while_releasing(default_lot, kind, how):
    """The holder dies in the middle of handing the lock to a blocked waiter (inside the unpark
    callback, fair or not; after dequeuing the waiter under the bucket lock; after unlocking but
    before the wake-up). The waiter gets the lock within 1 s; the lot's bucket is repaired."""
    obj = make(kind)
    go = FORK.Event()
    child = start_child(_release_and_die, obj, go, how)
    wait_until(lambda: word(obj) & LOCKED and word_pid(obj) == child.pid, message="child holds")
    waiter = Acquirer(obj)
    waiter.start()
    wait_parked_at_least(default_lot, obj.key, 1)
    go.set()
    child.join(10)
    killed_at = time.monotonic()
    assert child.exitcode == -signal.SIGKILL
    assert waiter.result() in (True, "died")  # released (maybe handed over) before the death
    assert waiter.held
    assert waiter.when - killed_at < DEATH_BOUND
    assert acquire(obj, timeout=5) is True
    release(obj)
    assert not parked(default_lot)


@pytest.mark.parametrize("waiting, how", [
    ("writer", "before_unpark"), ("writer", "unpark_locked"), ("writer", "unpark_before_wake"),
])
def test_rwlock_writer_killed_while_releasing(default_lot, how, waiting):
    """An RWLock writer dies after releasing the state word but before (or while) waking the
    blocked writer: that one still gets in within 1 s. (Parked readers are handed the lock
    inside unpark_filter's callback, in one store under their bucket lock: there is no "released
    but not yet woken" state to die in.)"""
    rw = shmlot.RWLock()
    go = FORK.Event()
    child = start_child(_release_and_die, rw, go, how)
    wait_until(lambda: word(rw) & LOCKED and word_pid(rw) == child.pid, message="child holds")
    if waiting == "writer":
        waiter = Acquirer(rw)
        key = rw._wkey
    else:
        waiter = threading.Thread(target=rw.acquire_read, daemon=True)
        key = rw.key
    waiter.start()
    wait_parked_at_least(default_lot, key, 1)
    go.set()
    child.join(10)
    killed_at = time.monotonic()
    assert child.exitcode == -signal.SIGKILL
    waiter.join(5)
    assert not waiter.is_alive()
    assert time.monotonic() - killed_at < DEATH_BOUND + 0.5
    if waiting == "writer":
        assert waiter.result() is True
    else:
        assert rw._words[0].load() == 4  # one reader in (the thread exited holding it)


# ---- RWLock readers ---------------------------------------------------------------------------

def wait_reads(rw, pid, n, total):
    """Wait until ``pid`` holds ``n`` read shares, recorded (a share is counted in the state
    word, then recorded as a hold: a reader killed between the two leaks its share, a window of
    a few instructions that the test must not hit on purpose) and ``total`` shares exist."""
    lot = rw._place.lot

    def ready():
        mine = sum(h[3] for h in lot._holds_on(rw.key) if h[0] == pid)
        return mine == n and rw._words[0].load() == 4 * total

    wait_until(ready, message=f"{n} read share(s) of pid {pid} recorded")


@pytest.mark.parametrize("blocked_first", [True, False])
def test_rwlock_dead_readers_share_reclaimed(default_lot, blocked_first):
    """Readers killed while holding read shares (one process re-entrantly, twice): a writer gets
    the lock within 1 s of the death (already blocked, or arriving after), without
    OwnerDiedError (no write state was interrupted)."""
    rw = shmlot.RWLock()
    rw.acquire_read()  # a live reader too: its share must survive the reclaim
    child = start_child(_read_forever, rw, 2)
    wait_reads(rw, child.pid, 2, total=3)
    writer = Acquirer(rw)
    if blocked_first:
        writer.start()
        wait_parked_at_least(default_lot, rw._wkey, 1)
    killed_at = kill_and_reap(child)
    wait_until(lambda: rw._words[0].load() == 4 or writer.is_alive() is False,
               message="dead shares reclaimed", timeout=DEATH_BOUND)
    rw.release_read()
    if not blocked_first:
        writer.start()
    assert writer.result() is True
    assert writer.when - killed_at < DEATH_BOUND + 0.5
    assert rw._words[0].load() == 0


def test_rwlock_dead_reader_nonblocking_writer(default_lot):
    """A non-blocking acquire_write reclaims dead readers' shares on the spot."""
    rw = shmlot.RWLock()
    child = start_child(_read_forever, rw, 1)
    wait_reads(rw, child.pid, 1, total=1)
    assert rw.acquire_write(blocking=False) is False
    kill_and_reap(child)
    assert rw.acquire_write(blocking=False) is True
    rw.release_write()


def test_rwlock_writer_killed_blocked_reader_gets_write_lock(default_lot):
    """A reader blocked behind a writer that dies is not stranded: it takes over the write lock
    (OwnerDiedError: the write was interrupted), repairs, releases, and can then read."""
    rw = shmlot.RWLock()
    child = start_child(_hold_forever, rw)
    wait_until(lambda: word(rw) & LOCKED, message="child writes")
    out = []

    def reader():
        try:
            rw.acquire_read()
            out.append("read")
        except shmlot.OwnerDiedError:
            out.append(("died", held_by_me(rw)))
            rw.release_write()
            rw.acquire_read()
            out.append("read")
        rw.release_read()

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    wait_parked_at_least(default_lot, rw.key, 1)
    kill_and_reap(child)
    t.join(5)
    assert out == [("died", True), "read"]
    assert rw._words[0].load() == 0


# ---- liveness is pid plus start time --------------------------------------------------------

def proc_start(pid):
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    return int(stat[stat.rindex(")") + 2:].split()[19])


@pytest.fixture
def live_other_process():
    p = start_python("import sys; sys.stdin.read()")
    wait_until(lambda: os.path.exists(f"/proc/{p.pid}/stat"), message="child up")
    yield p
    p.stdin.close()
    p.wait(10)


@pytest.mark.parametrize("kind", KINDS)
def test_reused_pid_is_not_the_owner(default_lot, make_shared_memory, live_other_process, kind):
    """A lock word naming a *live* process but with another start time (a reused pid) belongs to
    a dead owner: the acquirer takes it (OwnerDiedError). The same word with the live process's
    real start time is a live owner: the acquire times out."""
    seg = make_shared_memory(4096)
    cls = getattr(shmlot, kind)
    obj = cls.at(seg, 0)
    store = shmlot.AtomicU64(seg.buf, 0).store
    pid = live_other_process.pid
    start = proc_start(pid)
    assert _fast.process_alive(pid, start)
    assert not _fast.process_alive(pid, start + 1)

    # the real owner's identity: alive, so the lock is held
    store(_fast.owner_bits(pid, pid, start) | LOCKED)
    t0 = time.monotonic()
    assert acquire(obj, timeout=0.3) is False
    assert time.monotonic() - t0 >= 0.25
    assert acquire(obj, blocking=False) is False

    # the same pid with a wrong start time: a dead owner
    wrong = (start + 1) & _fast.START_MASK
    store(_fast.owner_bits(pid, pid, wrong) | LOCKED)
    with pytest.raises(shmlot.OwnerDiedError):
        acquire(obj, timeout=5)
    assert held_by_me(obj)
    release(obj)

    # a waiter parked behind the "real" owner gets it once the word turns out to name a dead one
    store(_fast.owner_bits(pid, pid, start) | LOCKED)
    waiter = Acquirer(obj)
    waiter.start()
    wait_parked_at_least(default_lot, park_key(obj), 1)
    live_other_process.stdin.close()
    live_other_process.wait(10)
    killed_at = time.monotonic()
    assert waiter.result() == "died"
    assert waiter.when - killed_at < DEATH_BOUND
    del obj


def test_own_pid_with_other_start_time_is_dead(default_lot, make_shared_memory):
    """A word naming this very pid but another start time was left by an earlier process that had
    our pid: not us, so a dead owner."""
    seg = make_shared_memory(4096)
    lock = shmlot.Lock.at(seg, 0)
    store = shmlot.AtomicU64(seg.buf, 0).store
    pid, tid, start = _fast.self_ident()
    store(_fast.owner_bits(pid, tid + 1, start + 1) | LOCKED)
    with pytest.raises(shmlot.OwnerDiedError):
        lock.acquire(timeout=2)
    lock.release()
    # our own start time with another tid: a live thread of this process
    store(_fast.owner_bits(pid, tid + 1, start) | LOCKED)
    assert lock.acquire(timeout=0.2) is False
    store(0)
    del lock



def _wait_to_write_forever(rw):
    rw.acquire_write()
    time.sleep(120)


def test_rwlock_waiting_writer_killed_does_not_keep_readers_out(default_lot):
    """A writer killed while waiting (behind a reader) must not keep new readers out forever
    (a waiting writer makes new readers queue behind it): its wait is taken back within 1 s."""
    rw = shmlot.RWLock()
    rw.acquire_read()
    child = start_child(_wait_to_write_forever, rw)
    wait_parked_at_least(default_lot, rw._wkey, 1)
    got = []
    t = threading.Thread(target=lambda: got.append((rw.acquire_read(timeout=10),
                                                    time.monotonic())))
    t.start()
    wait_parked_at_least(default_lot, rw.key, 1)  # queued behind the waiting writer
    killed_at = kill_and_reap(child)
    t.join(10)
    assert got and got[0][0] is True
    assert got[0][1] - killed_at < DEATH_BOUND
    assert rw._words[2].load() == 0
    rw.release_read()  # (the other thread's share is still in: the lock is read, not free)
    assert rw.acquire_write(blocking=False) is False
    assert rw.acquire_read(blocking=False) is True  # no writer is waiting any more
    rw.release_read()


def _read_and_die_mid_update(rw, step):
    """Take a read share (or give one back) and SIGKILL ourselves in the middle of it: between
    the hold and the count, with the RWLock's internal mutex held."""
    from shmlot._core import lib
    if step == "acquire":
        lib.sl_test_set_die_at(b"rw_read_mid")  # the core's step hook (rwstep.c)
        rw.acquire_read()
    else:
        rw.acquire_read()
        lib.sl_test_set_die_at(b"rw_unread_mid")
        rw.release_read()
    time.sleep(120)


@pytest.mark.parametrize("step", ["acquire", "release"])
def test_rwlock_reader_killed_mid_update(default_lot, step):
    """A reader killed between recording its hold and changing the count (taking or giving back
    a share): the next user of the lock finds the internal mutex's holder dead, recounts from the
    holds of the living, and a writer gets in within 1 s of the death."""
    rw = shmlot.RWLock()
    child = start_child(_read_and_die_mid_update, rw, step)
    child.join(20)
    killed_at = time.monotonic()
    assert child.exitcode == -signal.SIGKILL
    assert rw.acquire_write(timeout=5) is True
    assert time.monotonic() - killed_at < DEATH_BOUND
    rw.release_write()
    assert rw._words[0].load() == 0
    assert rw.acquire_read(blocking=False)
    rw.release_read()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
