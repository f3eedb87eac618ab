"""The primitives across threads and processes at once: mutual exclusion with
exact counters (threads of this process, fork and spawn children, and unrelated ``python -c``
processes that open the object by name, all contending together), hand-offs between processes
(Semaphore, Event), every timeout path and every error path. Both waiter backends.
"""
import math
import multiprocessing
import os
import threading
import time

import pytest

import shmlot
from shmlot import _fast

from helpers.lots import default_lot_vars, fresh_default_lot
from helpers.processes import start_python
from helpers.waiting import parked, raised_in_thread, wait_parked_at_least, wait_until
from helpers.workers import locked_increments

pytestmark = pytest.mark.timeout(60)

FORK = multiprocessing.get_context("fork")
SPAWN = multiprocessing.get_context("spawn")
PARKED = _fast.PARKED_BIT

MUTEX_KINDS = ("Lock", "RLock", "Condition", "Semaphore", "BoundedSemaphore", "RWLock")

CHILD_COUNTER = """
import sys
from helpers.workers import locked_increments
kind, name, seg, iters, nthreads = sys.argv[1:]
locked_increments(kind, name, seg, int(iters), int(nthreads))
"""


def uniq(tag):
    return f"{tag}-{os.getpid()}-{time.monotonic_ns()}"


# ---- mutual exclusion ------------------------------------------------------------------------

@pytest.mark.parametrize("kind", MUTEX_KINDS)
def test_mutual_exclusion_threads_fork_spawn_and_unrelated(default_lot, shm_segment, kind):
    """Two threads here, a fork child (two threads), a spawn child and a ``python -c`` process
    that opens the object by name all increment one non-atomic counter under the primitive:
    the total is exact."""
    name = uniq(f"mx-{kind}")
    obj = locked_open(kind, name)
    seg = shm_segment(64)
    iters = 400
    unrelated = start_python(CHILD_COUNTER, kind, name, seg.name, iters, 2,
                             env=default_lot_vars(default_lot))
    procs = [FORK.Process(target=locked_increments, args=(kind, obj, seg.name, iters, 2)),
             SPAWN.Process(target=locked_increments, args=(kind, obj, seg.name, iters, 1))]
    for p in procs:
        p.start()
    locked_increments(kind, obj, seg.name, iters, 2)
    for p in procs:
        p.join(45)
        assert p.exitcode == 0, f"{p} exited with {p.exitcode}"
    out, err = unrelated.communicate(timeout=45)
    assert unrelated.returncode == 0, err
    assert seg.load(0) == iters * (2 + 2 + 1 + 2)
    assert not parked(default_lot)
    shmlot.unlink_object(name)


def locked_open(kind, name):
    if kind in ("Semaphore", "BoundedSemaphore"):
        return getattr(shmlot, kind)(1, name=name)
    return getattr(shmlot, kind)(name=name)


@pytest.mark.parametrize("kind", ["Lock", "RLock"])
def test_mutual_exclusion_many_threads_contended(default_lot, shm_segment, kind):
    """Eight threads of one process hammering one lock: exact count, nobody left parked, the
    word back to 0 (no stale PARKED bit)."""
    obj = getattr(shmlot, kind)()
    seg = shm_segment(64)
    locked_increments(kind, obj, seg.name, 1500, 8)
    assert seg.load(0) == 1500 * 8
    assert obj._word() == 0
    assert not parked(default_lot)


def _lock_in_child_released_by_parent(lock, done):
    lock.acquire()
    done.set()


def test_lock_released_by_another_process(default_lot):
    """threading.Lock may be released by any thread: a shmlot Lock by any process too."""
    lock = shmlot.Lock()
    done = FORK.Event()
    p = FORK.Process(target=_lock_in_child_released_by_parent, args=(lock, done))
    p.start()
    p.join(20)
    assert p.exitcode == 0 and done.is_set()
    assert lock.locked()
    lock.release()
    assert not lock.locked()


def _rlock_release_from_child(rlock, q):
    try:
        rlock.release()
        q.put("released")
    except RuntimeError as exc:
        q.put(f"RuntimeError: {exc}")


def test_rlock_release_from_other_process_is_refused(default_lot):
    rlock = shmlot.RLock()
    rlock.acquire()
    q = FORK.Queue()
    p = FORK.Process(target=_rlock_release_from_child, args=(rlock, q))
    p.start()
    assert q.get(timeout=20).startswith("RuntimeError")
    p.join(20)
    assert rlock._is_owned() and rlock._recursion_count() == 1
    rlock.release()


# ---- hand-offs between processes -----------------------------------------------------------------

def _consume(sem, counter_sem, n):
    for _ in range(n):
        assert sem.acquire(timeout=20)
        counter_sem.release()


@pytest.mark.parametrize("ctx", [FORK, SPAWN], ids=["fork", "spawn"])
def test_semaphore_tokens_across_processes(default_lot, ctx):
    """Tokens released here are consumed by two child processes, exactly: every release lets
    exactly one acquire through."""
    sem = shmlot.Semaphore(0)
    done = shmlot.Semaphore(0)
    n = 300
    procs = [ctx.Process(target=_consume, args=(sem, done, n)) for _ in range(2)]
    for p in procs:
        p.start()
    for i in range(2 * n):
        sem.release()
        if i % 50 == 0:
            time.sleep(0.001)
    for _ in range(2 * n):
        assert done.acquire(timeout=20)
    for p in procs:
        p.join(20)
        assert p.exitcode == 0
    assert sem._value() == 0 and done._value() == 0
    assert not sem.acquire(blocking=False)
    assert not parked(default_lot)


def _pong(ping, pong, rounds):
    for _ in range(rounds):
        assert ping.wait(20)
        ping.clear()
        pong.set()


def test_event_ping_pong_between_processes(default_lot):
    ping, pong = shmlot.Event(), shmlot.Event()
    rounds = 300
    p = FORK.Process(target=_pong, args=(ping, pong, rounds))
    p.start()
    for _ in range(rounds):
        ping.set()
        assert pong.wait(20)
        pong.clear()
    p.join(20)
    assert p.exitcode == 0


def test_event_set_wakes_waiters_in_other_processes(default_lot):
    """``python -c`` processes wait on a named Event; one set() here releases them all."""
    name = uniq("ev")
    ev = shmlot.Event(name=name)
    code = f"""
        import shmlot
        ev = shmlot.Event(name={name!r})
        print(ev.wait(30), flush=True)
    """
    env = {"SHMLOT_LOT": default_lot.name, "SHMLOT_WAITER": default_lot.waiter}
    kids = [start_python(code, env=env) for _ in range(3)]
    wait_parked_at_least(default_lot, ev.key, 3)
    ev.set()
    for k in kids:
        out, err = k.communicate(timeout=30)
        assert out.strip() == "True", err
    shmlot.unlink_object(name)


# ---- timeouts ------------------------------------------------------------------------------------

def _hold(obj, kind, held, release):
    with locked_ctx(kind, obj):
        held.set()
        release.wait(30)


def locked_ctx(kind, obj):
    return obj.write() if kind == "RWLock" else obj


@pytest.fixture
def held_elsewhere(default_lot):
    """Factory: hold an object in a fork child until the test ends."""
    procs = []

    def hold(obj, kind):
        held, release = FORK.Event(), FORK.Event()
        p = FORK.Process(target=_hold, args=(obj, kind, held, release))
        p.start()
        assert held.wait(20)
        procs.append((p, release))
        return p, release

    yield hold
    for p, release in procs:
        release.set()
        p.join(20)


def assert_timed(fn, timeout, expect=False):
    t0 = time.monotonic()
    assert fn() is expect
    dt = time.monotonic() - t0
    assert timeout * 0.9 <= dt < timeout + 1.0, dt


@pytest.mark.parametrize("kind", ["Lock", "RLock"])
def test_lock_timeouts(default_lot, held_elsewhere, kind):
    """Held by another process: timeout -> False after about that long (main thread and another
    thread), timeout=0 and non-blocking -> False at once; the timed-out waiter leaves no slot
    queued and no PARKED bit; then the lock works."""
    lock = getattr(shmlot, kind)()
    held_elsewhere(lock, kind)
    assert_timed(lambda: lock.acquire(timeout=0.3), 0.3)
    out = []
    t = threading.Thread(target=lambda: out.append(lock.acquire(True, 0.3)))
    t.start()
    t.join(10)
    assert out == [False]
    t0 = time.monotonic()
    assert lock.acquire(timeout=0) is False
    assert lock.acquire(False) is False
    assert lock.acquire(blocking=False) is False
    assert time.monotonic() - t0 < 0.2
    assert not parked(default_lot, lock.key)
    assert not lock._word() & PARKED


def test_lock_timeout_with_two_waiters_keeps_parked_bit(default_lot, held_elsewhere):
    """One of two waiters times out: the other is still parked, PARKED stays set, and the
    release (by the other process) reaches it."""
    lock = shmlot.Lock()
    holder, release = held_elsewhere(lock, "Lock")
    out = []
    t = threading.Thread(target=lambda: out.append(lock.acquire(timeout=30)))
    t.start()
    wait_parked_at_least(default_lot, lock.key, 1)
    assert lock.acquire(timeout=0.2) is False
    assert len(parked(default_lot, lock.key)) == 1
    assert lock._word() & PARKED
    release.set()
    holder.join(20)
    t.join(20)
    assert out == [True]
    lock.release()
    assert lock._word() == 0


def test_semaphore_event_condition_timeouts(default_lot):
    sem = shmlot.Semaphore(0)
    assert_timed(lambda: sem.acquire(timeout=0.2), 0.2)
    assert sem.acquire(blocking=False) is False
    assert sem.acquire(timeout=0) is False
    bsem = shmlot.BoundedSemaphore(1)
    bsem.acquire()
    assert_timed(lambda: bsem.acquire(timeout=0.2), 0.2)
    bsem.release()

    ev = shmlot.Event()
    assert_timed(lambda: ev.wait(0.2), 0.2)
    assert ev.wait(0) is False
    ev.set()
    assert ev.wait(0) is True and ev.wait(5) is True

    cond = shmlot.Condition()
    with cond:
        assert_timed(lambda: cond.wait(0.2), 0.2)
        assert cond._is_owned()  # re-held after the timeout
        assert_timed(lambda: cond.wait_for(lambda: False, timeout=0.2), 0.2)
        assert cond.wait(0) is False
        assert cond._is_owned()
    assert not parked(default_lot)


def test_condition_wait_timeout_while_other_process_holds_lock(default_lot, held_elsewhere):
    """A Condition waiter times out, then must re-acquire a lock another process holds: wait()
    returns (False) only once it holds the lock again."""
    cond = shmlot.Condition(shmlot.Lock())
    out = []

    def waiter():
        with cond:
            out.append(("waiting", time.monotonic()))
            r = cond.wait(0.2)
            out.append((r, cond._is_owned(), time.monotonic()))

    t = threading.Thread(target=waiter)
    t.start()
    wait_parked_at_least(default_lot, cond.key, 1)
    # now hold the condition's lock in another process
    held, release = FORK.Event(), FORK.Event()
    p = FORK.Process(target=_hold, args=(cond._lock, "Lock", held, release))
    p.start()
    assert held.wait(20)
    # past its timeout the waiter leaves the condition's queue and blocks on the lock
    wait_parked_at_least(default_lot, cond._lock.key, 1)
    assert not parked(default_lot, cond.key)
    assert len(out) == 1
    release.set()
    p.join(20)
    t.join(20)
    assert out[1][:2] == (False, True)


# ---- errors ------------------------------------------------------------------------------------

def test_lock_errors(default_lot):
    lock = shmlot.Lock()
    with pytest.raises(RuntimeError):
        lock.release()
    with pytest.raises(ValueError):
        lock.acquire(False, 1)
    with pytest.raises(ValueError):
        lock.acquire(blocking=False, timeout=0.5)
    with pytest.raises(ValueError):
        lock.acquire(timeout=-2)
    with pytest.raises(ValueError):
        lock.acquire(timeout=math.nan)
    with pytest.raises(TypeError):
        lock.acquire(timeout="1")
    with pytest.raises(OverflowError):
        lock.acquire(timeout=1e100)
    assert not lock.locked()
    assert lock.acquire(timeout=-1) is True  # -1: no timeout, as in threading
    lock.release()


def test_rlock_errors(default_lot):
    rlock = shmlot.RLock()
    with pytest.raises(RuntimeError):
        rlock.release()
    with pytest.raises(RuntimeError):
        rlock._release_save()
    with pytest.raises(ValueError):
        rlock.acquire(False, 1)
    with pytest.raises(ValueError):
        rlock.acquire(timeout=-2)
    rlock.acquire()
    assert isinstance(raised_in_thread(rlock.release), RuntimeError)
    rlock.release()
    with pytest.raises(RuntimeError):
        rlock.release()


def test_semaphore_errors(default_lot):
    for cls in (shmlot.Semaphore, shmlot.BoundedSemaphore):
        with pytest.raises(ValueError):
            cls(-1)
        with pytest.raises(TypeError):
            cls("1")
        sem = cls(1)
        with pytest.raises(ValueError):
            sem.acquire(False, 1)
        # negative (and NaN) timeouts do not wait, as in threading (test_threading_parity)
        assert sem.acquire(timeout=-1) and not sem.acquire(timeout=-1)
        sem.release()
        with pytest.raises(TypeError):
            sem.acquire(timeout="1")
        with pytest.raises(ValueError):
            sem.release(0)
        with pytest.raises(TypeError):
            sem.release(1.0)
        assert sem._value() == 1  # no error changed anything
    bsem = shmlot.BoundedSemaphore(2)
    with pytest.raises(ValueError):
        bsem.release()
    bsem.acquire()
    with pytest.raises(ValueError):
        bsem.release(2)
    bsem.release()
    assert bsem._value() == 2


def test_event_and_condition_errors(default_lot):
    ev = shmlot.Event()
    assert ev.wait(-1) is False  # as threading: a negative timeout does not wait
    with pytest.raises(TypeError):
        ev.wait("1")
    ev.set()
    with pytest.raises(TypeError):
        ev.wait("1")  # refused even when set: the argument is checked first

    cond = shmlot.Condition()
    for call in (cond.wait, cond.notify, cond.notify_all, lambda: cond.wait_for(lambda: False)):
        with pytest.raises(RuntimeError):
            call()
    with pytest.raises(RuntimeError):
        cond.release()
    with cond:
        assert cond.wait(-1) is False  # as threading
        assert cond._is_owned()
    with pytest.raises(TypeError):
        shmlot.Condition(threading.Lock())
    with pytest.raises(TypeError):
        shmlot.Condition(threading.RLock())
    # a Condition owned by another thread: still "un-acquired" for this one
    lock = shmlot.Lock()
    cond = shmlot.Condition(lock)
    t = threading.Thread(target=lock.acquire)
    t.start()
    t.join()
    with pytest.raises(RuntimeError):
        cond.notify()
    with pytest.raises(RuntimeError):
        cond.wait(0)
    lock.release()


def test_rwlock_and_barrier_errors(default_lot):
    rw = shmlot.RWLock()
    with pytest.raises(RuntimeError):
        rw.release_read()
    with pytest.raises(RuntimeError):
        rw.release_write()
    with pytest.raises(ValueError):
        rw.acquire_read(False, 1)
    with pytest.raises(ValueError):
        rw.acquire_write(blocking=False, timeout=1)
    with pytest.raises(ValueError):
        rw.acquire_read(timeout=-2)
    with pytest.raises(ValueError):
        rw.acquire_write(timeout=-2)
    rw.acquire_read()
    with pytest.raises(RuntimeError):
        rw.release_write()
    rw.release_read()
    assert rw._words[0].load() == 0
    with pytest.raises(ValueError):
        shmlot.Barrier(0)
    with pytest.raises(TypeError):
        shmlot.Barrier("2")
    b = shmlot.Barrier(2)
    with pytest.raises(TypeError):
        b.wait("1")
    assert b.n_waiting == 0 and not b.broken


def test_bad_names(default_lot):
    for bad in ("a/b", "", "x" * 201, "nul\0"):
        with pytest.raises(ValueError):
            shmlot.Lock(name=bad)
    with pytest.raises(TypeError):
        shmlot.Lock(name=b"bytes")
    with pytest.raises(TypeError):
        shmlot.Event(name=3)
    with pytest.raises(TypeError):
        shmlot.Lock(lot="not a lot")


# ---- a full lot ------------------------------------------------------------------------------

@pytest.fixture
def tiny_lot(waiter):
    """A default lot with only two slots: a third thread cannot park."""
    with fresh_default_lot(waiter, slots=2) as lot:
        yield lot


def full_waits(lot):
    return lot.info()["counters"]["full_waits"]


@pytest.mark.parametrize("kind", ["Lock", "RLock", "Semaphore", "Event", "Condition", "RWLock",
                                  "Barrier"])
def test_full_lot_primitives_wait_instead_of_raising(tiny_lot, kind):
    """Five threads block on a primitive in a lot with two slots: the three without a slot back
    off and retry (counted in full_waits) instead of raising LotFullError; all five get through
    once the primitive is released."""
    objs = {"Lock": shmlot.Lock, "RLock": shmlot.RLock, "Semaphore": lambda: shmlot.Semaphore(0),
            "Event": shmlot.Event, "Condition": shmlot.Condition, "RWLock": shmlot.RWLock,
            "Barrier": lambda: shmlot.Barrier(6)}
    obj = objs[kind]()
    if kind in ("Lock", "RLock"):
        obj.acquire()
    elif kind == "RWLock":
        obj.acquire_write()
    errors, done = [], []

    def work():
        try:
            if kind in ("Lock", "RLock"):
                with obj:
                    pass
            elif kind == "Semaphore":
                assert obj.acquire(timeout=30)
            elif kind == "Event":
                assert obj.wait(30)
            elif kind == "Condition":
                with obj:
                    obj.wait_for(lambda: flag, 30)
            elif kind == "RWLock":
                with obj.read():
                    pass
            elif kind == "Barrier":
                obj.wait(30)
            done.append(True)
        except BaseException as exc:  # noqa: B902
            errors.append(exc)

    flag = False
    threads = [threading.Thread(target=work) for _ in range(5)]
    for t in threads:
        t.start()
    wait_until(lambda: full_waits(tiny_lot) > 0 and len(parked(tiny_lot)) == 2,
               message="lot full, two parked")
    if kind in ("Lock", "RLock"):
        obj.release()
    elif kind == "RWLock":
        obj.release_write()
    elif kind == "Semaphore":
        obj.release(5)
    elif kind == "Event":
        obj.set()
    elif kind == "Condition":
        with obj:
            flag = True
            obj.notify_all()
    elif kind == "Barrier":
        obj.wait(30)
    for t in threads:
        t.join(30)
        assert not t.is_alive()
    assert errors == [] and len(done) == 5
    assert not parked(tiny_lot)


def test_public_park_still_raises_lot_full(tiny_lot):
    """The low-level park() does raise LotFullError; only primitives wait."""
    ts = [threading.Thread(target=tiny_lot.park, args=(1,), kwargs={"timeout": 10})
          for _ in range(2)]
    for t in ts:
        t.start()
    wait_until(lambda: len(parked(tiny_lot)) == 2, message="two parked")
    with pytest.raises(shmlot.LotFullError):
        tiny_lot.park(1, timeout=5)
    tiny_lot.unpark_all(1)
    for t in ts:
        t.join(10)
