"""Condition: notify/notify_all move waiters onto the lock's queue
(``unpark_requeue``) instead of waking them to fight for the lock; every waiter re-acquires; a
dead waiter never absorbs a notification nor wakes anyone; a lock holder that dies while waiters
are queued on the lock is recovered (OwnerDiedError for one of them). Threads and processes, both
backends.
"""
import multiprocessing
import os
import signal
import threading
import time

import pytest

import shmlot

from helpers.lots import default_lot_vars
from helpers.processes import start_python
from helpers.segments import attach_segment
from helpers.waiting import parked, wait_parked_at_least, wait_until

pytestmark = pytest.mark.timeout(60)

FORK = multiprocessing.get_context("fork")


def requeues(lot):
    return lot.info()["counters"]["requeues"]


def _proc_waiter(cond, seg_name, slot, timeout=30):
    """Wait once; record in the segment: 1 = notified and holding the lock, 2 = anything else."""
    seg = attach_segment(seg_name)
    with cond:
        r = cond.wait(timeout)
        seg.store(8 * slot, 1 if (r and cond._is_owned()) else 2)
        seg.fetch_add(8 * 63, 1)  # how many re-acquired (under the lock)


class ThreadWaiter(threading.Thread):
    def __init__(self, cond, timeout=30, predicate=None):
        super().__init__(daemon=True)
        self.cond, self.timeout, self.predicate = cond, timeout, predicate
        self.result = self.owned = self.error = None

    def run(self):
        try:
            with self.cond:
                if self.predicate is None:
                    self.result = self.cond.wait(self.timeout)
                else:
                    self.result = self.cond.wait_for(self.predicate, self.timeout)
                self.owned = self.cond._is_owned()
        except BaseException as exc:  # noqa: B902
            self.error = exc

    def outcome(self, timeout=20):
        self.join(timeout)
        assert not self.is_alive(), "waiter still waiting"
        if self.error:
            raise self.error
        return self.result, self.owned


@pytest.mark.parametrize("lock_kind", ["RLock", "Lock"])
def test_notify_all_requeues_threads_and_processes(default_lot, shm_segment, lock_kind):
    """notify_all with 6 threads and 3 processes waiting moves all 9 onto the lock's queue in one
    step (the requeue counter grows by 9; nobody is woken while the notifier holds the lock);
    after the release every one of them re-acquires and returns True."""
    lock = None if lock_kind == "RLock" else shmlot.Lock()
    cond = shmlot.Condition(lock)
    seg = shm_segment(8 * 64)
    threads = [ThreadWaiter(cond) for _ in range(6)]
    for t in threads:
        t.start()
    procs = [FORK.Process(target=_proc_waiter, args=(cond, seg.name, i)) for i in range(3)]
    for p in procs:
        p.start()
    wait_parked_at_least(default_lot, cond.key, 9)
    before = requeues(default_lot)
    with cond:
        cond.notify_all()
        assert requeues(default_lot) - before == 9
        assert len(parked(default_lot, cond.key)) == 0
        assert len(parked(default_lot, cond._lock.key)) == 9  # on the lock's queue, none awake
    for t in threads:
        assert t.outcome() == (True, True)
    for p in procs:
        p.join(20)
        assert p.exitcode == 0
    assert [seg.load(8 * i) for i in range(3)] == [1, 1, 1]
    assert seg.load(8 * 63) == 3
    assert not parked(default_lot)
    assert cond._lock._word() == 0


def test_notify_all_requeues_32_processes(default_lot, shm_segment):
    """The benchmark's shape (tools/bench.py): 32 waiting processes, one notify_all, all re-acquire."""
    cond = shmlot.Condition()
    seg = shm_segment(8 * 64)
    n = 32
    procs = [FORK.Process(target=_proc_waiter, args=(cond, seg.name, i % 60)) for i in range(n)]
    for p in procs:
        p.start()
    wait_parked_at_least(default_lot, cond.key, n)
    before = requeues(default_lot)
    with cond:
        cond.notify_all()
    assert requeues(default_lot) - before == n
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert seg.load(8 * 63) == n


def _ordered_waiter(cond, seg_name, slot, go):
    """Wait once; record in the segment the turn in which the lock came back (1, 2, ...). The
    first to get it holds it until ``go`` is set."""
    seg = attach_segment(seg_name)
    with cond:
        if not cond.wait(30):
            return
        turn = seg.fetch_add(8 * 63, 1) + 1
        seg.store(8 * slot, turn)
        if turn == 1:
            go.wait(30)


def test_notify_all_hands_the_lock_over_in_wait_order(default_lot, shm_segment):
    """notify_all keeps the waiters' order: they get the lock back in the order they began to
    wait. On the futex backend the unlock that hands the lock to the first wakes the second
    ahead of its turn (counter woken_ahead); when the first holds the lock longer than that
    spin lasts, the second sleeps again, still queued (wait word 1), and gets the lock in its
    turn. A waiter killed while queued on the lock is skipped."""
    cond = shmlot.Condition()
    go = shmlot.Event()
    seg = shm_segment(8 * 64)
    n = 6
    procs = []
    for i in range(n):
        p = FORK.Process(target=_ordered_waiter, args=(cond, seg.name, i, go))
        p.start()
        procs.append(p)
        wait_parked_at_least(default_lot, cond.key, i + 1)  # one at a time: the order is known
    ahead = default_lot.info()["counters"]["woken_ahead"]
    with cond:
        cond.notify_all()
    # what the first waiter stores last (its turn, after counting it): then both are readable
    wait_until(lambda: any(seg.load(8 * i) for i in range(n)), 20,
               "the first waiter holding the lock")
    assert seg.load(8 * 63) == 1
    assert seg.load(0) == 1
    queued = parked(default_lot, cond._lock.key)
    assert [q.pid for q in queued] == [p.pid for p in procs[1:]]
    if default_lot.waiter == "futex":
        assert default_lot.info()["counters"]["woken_ahead"] == ahead + 1
    # whoever was woken ahead gave up spinning long ago: every queued waiter sleeps
    wait_until(lambda: all(q.wait == 1 for q in parked(default_lot, cond._lock.key)), 5,
               "the waiter woken ahead to sleep again")
    kill(procs[2])  # third in line: dead, so skipped
    go.set()
    for p in procs:
        p.join(20)
    assert [p.exitcode for p in procs] == [0, 0, -signal.SIGKILL, 0, 0, 0]
    assert [seg.load(8 * i) for i in range(n)] == [1, 2, 0, 3, 4, 5]
    assert not parked(default_lot)
    assert cond._lock._word() == 0


def test_notify_n_wakes_exactly_n(default_lot):
    """notify(n) moves exactly n waiters (the oldest) to the lock; the rest stay waiting."""
    cond = shmlot.Condition()
    waiters = []
    for i in range(5):
        w = ThreadWaiter(cond)
        w.start()
        waiters.append(w)
        wait_parked_at_least(default_lot, cond.key, i + 1)
    before = requeues(default_lot)
    with cond:
        cond.notify(2)
    assert requeues(default_lot) - before == 2
    for w in waiters[:2]:
        assert w.outcome() == (True, True)
    assert len(parked(default_lot, cond.key)) == 3
    with cond:
        cond.notify()  # n=1 by default
    assert waiters[2].outcome() == (True, True)
    with cond:
        cond.notify(10)  # more than wait: all of them, no error
    for w in waiters[3:]:
        assert w.outcome() == (True, True)
    with cond:
        cond.notify()
        cond.notify_all()  # nobody waits: nothing happens
    assert not parked(default_lot)


def test_notify_without_holding_nothing_requeued(default_lot):
    """notify while the lock is free (impossible through the API, which checks ownership, but
    exercised through the lock being released by the time the requeue runs): UNPARK_ONE wakes
    directly. Here: a Condition on a Lock notified by its owner, then released at once."""
    cond = shmlot.Condition(shmlot.Lock())
    w = ThreadWaiter(cond)
    w.start()
    wait_parked_at_least(default_lot, cond.key, 1)
    with cond:
        cond.notify()
    assert w.outcome() == (True, True)


def test_notified_waiter_whose_timeout_passes_on_the_lock_queue(default_lot):
    """Notified (moved onto the lock's queue) but the lock is held past the wait's timeout: the
    waiter leaves the lock's queue at its deadline, still re-acquires before returning, and
    returns True (it was notified, as threading would say)."""
    cond = shmlot.Condition(shmlot.Lock())
    w = ThreadWaiter(cond, timeout=0.3)
    w.start()
    wait_parked_at_least(default_lot, cond.key, 1)
    with cond:
        timeouts = default_lot.info()["counters"]["timeouts"]
        cond.notify()
        assert len(parked(default_lot, cond._lock.key)) == 1
        # its deadline passes while it waits for the lock: it leaves the lock's queue (and
        # queues again in a plain acquire)
        wait_until(lambda: default_lot.info()["counters"]["timeouts"] > timeouts,
                   message="timed out on the lock's queue")
        wait_parked_at_least(default_lot, cond._lock.key, 1)
        assert w.is_alive()  # it cannot return before it holds the lock
    assert w.outcome() == (True, True)
    assert not cond._lock.locked()


def test_wait_restores_rlock_recursion(default_lot):
    cond = shmlot.Condition()
    out = []

    def waiter():
        with cond:
            with cond:
                with cond:
                    r = cond.wait(10)
                    out.append((r, cond._lock._recursion_count()))

    t = threading.Thread(target=waiter)
    t.start()
    wait_parked_at_least(default_lot, cond.key, 1)
    # fully released while waiting (the release follows the enqueue, in before_sleep)
    wait_until(lambda: not cond._lock.locked(), message="the RLock was not fully released")
    with cond:
        cond.notify()
    t.join(10)
    assert out == [(True, 3)]
    assert not cond._lock.locked()


def test_wait_for_across_processes(default_lot):
    """A ``python -c`` producer opens the named condition (and its lock) by name and bumps a
    named Semaphore used as a counter; the waiter here uses wait_for on it."""
    name = f"cond-{os.getpid()}-{time.monotonic_ns()}"
    cond = shmlot.Condition(name=name)
    items = shmlot.Semaphore(0, name=name + "-items")
    got = []

    def predicate():
        return items._value() >= 3

    w = ThreadWaiter(cond, timeout=30, predicate=predicate)
    w.start()
    wait_parked_at_least(default_lot, cond.key, 1)
    producer = start_python(f"""
        import shmlot
        cond = shmlot.Condition(name={name!r})
        items = shmlot.Semaphore(0, name={name + '-items'!r})
        for _ in range(3):
            with cond:
                items.release()
                cond.notify_all()
    """, env=default_lot_vars(default_lot))
    out, err = producer.communicate(timeout=30)
    assert producer.returncode == 0, err
    assert w.outcome() == (True, True)
    got.append(items._value())
    assert got == [3]
    shmlot.unlink_object(name)
    shmlot.unlink_object(name + "-items")


# ---- dead waiters -------------------------------------------------------------------------------

def _wait_forever(cond):
    with cond:
        cond.wait()


def kill(p):
    os.kill(p.pid, signal.SIGKILL)
    p.join(10)
    assert p.exitcode == -signal.SIGKILL


@pytest.mark.parametrize("reaped", [True, False], ids=["reaped", "zombie"])
@pytest.mark.parametrize("notify", ["notify", "notify_all"])
def test_killed_waiter_never_absorbs_notify(default_lot, notify, reaped):
    """Two processes die while waiting, ahead of a live thread in the queue: notify() (n=1)
    still reaches the live one, and the dead ones wake nobody and are gone from the lot; also
    while the dead are zombies (killed, not yet waited for by their parent)."""
    cond = shmlot.Condition()
    dead = []
    for i in range(2):
        p = FORK.Process(target=_wait_forever, args=(cond,))
        p.start()
        dead.append(p)
        wait_parked_at_least(default_lot, cond.key, i + 1)
    live = ThreadWaiter(cond)
    live.start()
    wait_parked_at_least(default_lot, cond.key, 3)
    for p in dead:
        if reaped:
            kill(p)
        else:
            os.kill(p.pid, signal.SIGKILL)
            wait_until(lambda: zombie(p.pid), message="a zombie")
    # a death is no notification: the live waiter is still waiting
    assert live.is_alive() and live.result is None
    assert len(parked(default_lot, cond.key)) >= 1
    with cond:
        getattr(cond, notify)()
    t0 = time.monotonic()
    assert live.outcome() == (True, True)
    assert time.monotonic() - t0 < 1.0
    assert not parked(default_lot)
    for p in dead:
        p.join(10)


def zombie(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False


def _notified_then_wait_for_lock(cond, ready):
    with cond:
        ready.set()
        cond.wait()


def test_waiter_killed_on_lock_queue_after_requeue(default_lot):
    """Waiters requeued onto the lock by notify_all; one of them (a process) is killed while
    queued on the lock: the release skips it and every live waiter re-acquires."""
    cond, victim, live = _victim_then_two_live_waiters(default_lot)
    with cond:
        cond.notify_all()
        assert len(parked(default_lot, cond._lock.key)) == 3
        kill(victim)
    _all_live_reacquired(default_lot, cond, live)


def _victim_then_two_live_waiters(lot):
    """A condition with three waiters: a process (the one to kill), then two threads."""
    cond = shmlot.Condition()
    victim = FORK.Process(target=_wait_forever, args=(cond,))
    victim.start()
    wait_parked_at_least(lot, cond.key, 1)
    live = [ThreadWaiter(cond) for _ in range(2)]
    for w in live:
        w.start()
    wait_parked_at_least(lot, cond.key, 3)
    return cond, victim, live


def _all_live_reacquired(lot, cond, live):
    for w in live:
        assert w.outcome() == (True, True)
    assert not parked(lot)
    assert cond._lock._word() == 0


def test_notify_all_moves_dead_waiters_and_the_release_drops_them(default_lot):
    """notify_all moves every waiter onto the lock's queue in one core call without asking
    whether each lives (a waiter killed before the notify moves too); the release that follows
    drops the dead one and every live waiter re-acquires. From a callback that runs under a
    bucket lock the call is refused (RuntimeError) and moves nobody."""
    cond, victim, live = _victim_then_two_live_waiters(default_lot)
    kill(victim)
    before = requeues(default_lot)
    with cond:
        with pytest.raises(RuntimeError):
            default_lot.unpark_one(0x5EED, lambda res: cond.notify_all())
        assert len(parked(default_lot, cond.key)) == 3
        cond.notify_all()
        assert requeues(default_lot) - before == 3
        assert len(parked(default_lot, cond._lock.key)) == 3
        assert cond._lock._word() & shmlot.locks.PARKED
    _all_live_reacquired(default_lot, cond, live)


def _notify_all_then_die(cond, go):
    with cond:
        cond.notify_all()
        go.wait(30)
        os.kill(os.getpid(), signal.SIGKILL)


def _notifier_dies_holding_lock(default_lot, cond, n):
    """A child moves the ``n`` waiters onto the lock (notify_all) and dies holding it."""
    go = FORK.Event()
    p = FORK.Process(target=_notify_all_then_die, args=(cond, go))
    p.start()
    wait_parked_at_least(default_lot, cond._lock.key, n)
    go.set()
    p.join(10)


def test_notifier_killed_holding_lock(default_lot):
    """The notifier dies holding the lock after requeueing the waiters onto it: one waiter's
    wait() raises OwnerDiedError within 1 s, holding the lock; once it releases, the others
    return normally."""
    cond = shmlot.Condition()
    waiters = [ThreadWaiter(cond) for _ in range(3)]
    for w in waiters:
        w.start()
    wait_parked_at_least(default_lot, cond.key, 3)
    _notifier_dies_holding_lock(default_lot, cond, 3)
    killed_at = time.monotonic()
    outcomes = []
    for w in waiters:
        w.join(20)
        assert not w.is_alive()
        outcomes.append(type(w.error).__name__ if w.error else (w.result, w.owned))
    assert sorted(map(str, outcomes)) == ["(True, True)", "(True, True)", "OwnerDiedError"]
    assert time.monotonic() - killed_at < 2.0
    assert not cond._lock.locked()


def test_owner_died_in_wait_restores_rlock_depth(default_lot):
    """wait() at recursion depth 2 whose re-acquire finds the notifier dead: OwnerDiedError, and
    the RLock is held at depth 2 again, so the caller's two releases balance."""
    cond = shmlot.Condition()
    out = []

    def waiter():
        with cond:
            with cond:
                try:
                    cond.wait(30)
                except shmlot.OwnerDiedError:
                    out.append(("died", cond._lock._recursion_count()))
        out.append(("after", cond._lock._recursion_count(), cond._lock.locked()))

    t = threading.Thread(target=waiter)
    t.start()
    wait_parked_at_least(default_lot, cond.key, 1)
    _notifier_dies_holding_lock(default_lot, cond, 1)
    t.join(10)
    assert out == [("died", 2), ("after", 0, False)]


@pytest.mark.parametrize("args, kwargs, error", [
    (("1",), {}, TypeError), ((1, 2), {}, TypeError), ((), {"time": 1}, TypeError)])
def test_wait_argument_errors(default_lot, args, kwargs, error):
    """wait()'s arguments are checked before anything is queued or released (both backends:
    the futex one's wait is the C CondWaiter). Negative, NaN and bool timeouts are threading's
    (test_threading_parity)."""
    cond = shmlot.Condition()
    with cond:
        with pytest.raises(error):
            cond.wait(*args, **kwargs)
        assert cond._is_owned()
        assert cond.wait(timeout=0) is False
        assert cond.wait(0.0) is False
        assert cond._is_owned()
    assert not parked(default_lot)
    assert cond._lock._word() == 0


def test_condition_and_lock_in_different_lots_is_refused(default_lot, make_lot):
    """Waiters move onto the lock's queue, which lives in the lock's lot: a Condition in another
    lot than its lock could never be woken there, so it is refused."""
    other = make_lot()
    lock = shmlot.Lock(lot=other)
    with pytest.raises(ValueError, match="same lot"):
        shmlot.Condition(lock, lot=default_lot)
    cond = shmlot.Condition(lock, lot=shmlot.ParkingLot.attach(other.name))  # same lot, 2nd handle
    with cond:
        assert cond.wait(0) is False
