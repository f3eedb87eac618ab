"""shmlot.aio.Lock: the same lock word as shmlot.Lock, taken by tasks without blocking their loop.

Every test runs in the three waiting modes of helpers.aio (futex_waitv helpers, a thread per
task on a futex lot, the semaphore backend)."""
import asyncio
import os
import signal
import sys
import threading
import time

import pytest

import shmlot
from shmlot import aio

from helpers.aio import hold_in_child, mode_env, run, start_queued_in_order, until
from helpers.kills import kill_and_reap
from helpers.processes import start_python
from helpers.waiting import parked, wait_until


def test_same_word_as_the_sync_lock(aio_lot):
    sync = shmlot.Lock(name="same", lot=aio_lot)
    alock = aio.Lock(name="same", lot=aio_lot)
    assert alock.key == sync.key and alock.sync._address == sync._address

    async def main():
        async with alock:
            assert sync.locked() and not sync.acquire(blocking=False)
        assert sync.acquire(blocking=False)
        assert alock.locked()
        sync.release()
        wrapped = aio.Lock.from_sync(sync)
        await wrapped.acquire()
        assert alock.locked()
        wrapped.release()
    run(main())
    with pytest.raises(TypeError):
        aio.Lock.from_sync(shmlot.RLock(lot=aio_lot))


def test_tasks_exclude_each_other_and_threads(aio_lot):
    """Tasks of one loop (one thread identity) and threads of the process: one holder at a
    time, every increment kept."""
    alock = aio.Lock(lot=aio_lot)
    state = {"inside": 0, "count": 0}
    errors = []

    def enter():
        state["inside"] += 1
        if state["inside"] != 1:
            errors.append("two holders")

    def thread_worker():
        for _ in range(200):
            with alock.sync:
                enter()
                c = state["count"]
                time.sleep(0)
                state["count"] = c + 1
                state["inside"] -= 1

    async def task_worker():
        for _ in range(100):
            async with alock:
                enter()
                c = state["count"]
                await asyncio.sleep(0)
                state["count"] = c + 1
                state["inside"] -= 1

    async def main():
        threads = [threading.Thread(target=thread_worker) for _ in range(2)]
        for t in threads:
            t.start()
        await asyncio.gather(*(task_worker() for _ in range(20)))
        for t in threads:
            await asyncio.get_running_loop().run_in_executor(None, t.join, 30)
    run(main())
    assert not errors
    assert state["count"] == 2 * 200 + 20 * 100
    assert not alock.locked() and not parked(aio_lot)
    assert aio_lot.info()["slots_free"] == aio_lot.slots


CHILD_LOCK = r"""
import asyncio, sys, threading, time
import shmlot
from shmlot import aio
from helpers.segments import attach_segment
lot = shmlot.ParkingLot.attach(sys.argv[1])
seg = attach_segment(sys.argv[2])
alock = aio.Lock(name="mixed", lot=lot)
rounds = int(sys.argv[3])

def critical():
    if seg.fetch_add(0, 1) != 0:
        seg.store(16, 1)  # two holders at once
    c = seg.load(8)
    time.sleep(0)
    seg.store(8, c + 1)
    seg.fetch_add(0, -1)

def thread_worker():
    for _ in range(rounds):
        with alock.sync:
            critical()

async def task_worker():
    for _ in range(rounds):
        async with alock:
            critical()
            await asyncio.sleep(0)

async def main():
    t = threading.Thread(target=thread_worker)
    t.start()
    await asyncio.gather(*(task_worker() for _ in range(8)))
    await asyncio.get_running_loop().run_in_executor(None, t.join)

asyncio.run(main())
print("ok")
"""


@pytest.mark.timeout(120)
def test_processes_mix_sync_and_async(aio_lot, aio_mode, shm_segment):
    """Three processes, each with a thread using ``with`` and eight tasks using ``async with``
    on one named lock: no two holders ever, no increment lost."""
    seg = shm_segment(64)
    rounds = 60
    procs = [start_python(CHILD_LOCK, aio_lot.name, seg.name, rounds, env=mode_env(aio_mode))
             for _ in range(3)]
    for p in procs:
        out, err = p.communicate(timeout=100)
        assert p.returncode == 0 and "ok" in out, err
    assert seg.load(16) == 0, "two holders at once"
    assert seg.load(8) == 3 * 9 * rounds
    assert not parked(aio_lot) and aio_lot.info()["slots_free"] == aio_lot.slots


def test_cancelled_waiters_leave_nothing_queued(aio_lot):
    alock = aio.Lock(lot=aio_lot)

    async def main():
        await alock.acquire()
        tasks = [asyncio.create_task(alock.acquire()) for _ in range(40)]
        await until(lambda: len(parked(aio_lot, alock.key)) == 40, message="40 queued")
        for t in tasks[::2]:
            t.cancel()
        await asyncio.gather(*tasks[::2], return_exceptions=True)
        assert len(parked(aio_lot, alock.key)) == 20
        for t in tasks[1::2]:
            alock.release()
            await t
        alock.release()
        assert not alock.locked()
        assert alock.sync._word() == 0  # PARKED cleared by the last one out
    run(main())
    assert aio_lot.info()["slots_free"] == aio_lot.slots


def test_cancelled_after_hand_off_passes_the_lock_on(aio_lot):
    """The unlocker hands the lock to the first waiter (be_fair) and that task is cancelled
    before it runs: the lock goes to the next waiter, not lost."""
    alock = aio.Lock(lot=aio_lot)

    async def main():
        await alock.acquire()
        first, second = await start_queued_in_order(aio_lot, alock.key, alock.acquire(),
                                                    alock.acquire())
        alock.sync._release_slow(force_fair=True)  # the word now names the first waiter
        first.cancel()  # before it could run
        with pytest.raises(asyncio.CancelledError):
            await first
        assert await asyncio.wait_for(second, 5) is True
        assert alock.locked()
        alock.release()
        assert alock.sync._word() == 0
    run(main())
    assert aio_lot.info()["slots_free"] == aio_lot.slots


def test_cancelled_after_plain_wake_wakes_the_next(aio_lot):
    """Unlocked with a plain wake-up (no hand-off) and the woken task cancelled: the next
    waiter is woken instead (no lost wake-up), not left to find the lock at its next poll."""
    alock = aio.Lock(lot=aio_lot)

    async def main():
        await alock.acquire()
        first, second = await start_queued_in_order(aio_lot, alock.key, alock.acquire(),
                                                    alock.acquire())
        unparks = aio_lot.info()["counters"]["unparks"]
        alock.sync._release_slow()  # unpark the first, leave the lock free, PARKED set
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)
        assert await asyncio.wait_for(second, 5) is True
        # the second was woken by the first's cancellation (an unpark), not by its own poll
        assert aio_lot.info()["counters"]["unparks"] - unparks == 2
        alock.release()
    run(main())
    assert aio_lot.info()["slots_free"] == aio_lot.slots


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.timeout is 3.11+")
def test_timeout_and_wait_for(aio_lot):
    alock = aio.Lock(lot=aio_lot)

    async def main():
        await alock.acquire()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await alock.acquire()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(alock.acquire(), 0.05)
        assert not parked(aio_lot)
        alock.release()
        assert await asyncio.wait_for(alock.acquire(), 1)
        alock.release()
    run(main())
    assert aio_lot.info()["slots_free"] == aio_lot.slots


def test_the_loop_keeps_running_while_tasks_wait(aio_lot, aio_mode):
    """1,000 tasks wait: the loop still runs other work every millisecond, and (futex_waitv)
    a dozen helper threads watch them all, also once they all moved to packed groups."""
    alock = aio.Lock(lot=aio_lot)

    async def main():
        await alock.acquire()
        tasks = [asyncio.create_task(alock.acquire()) for _ in range(1000 if aio_mode == "futex"
                                                                      else 100)]
        await until(lambda: len(parked(aio_lot, alock.key)) == len(tasks), 30)
        if aio_mode == "futex":
            stats = aio.watch_stats()
            assert stats["watched"] == 1000
            assert stats["threads"] <= 4 + 8  # young groups + ceil(1000 / 127) packed ones
        loop = asyncio.get_running_loop()
        gaps = []
        last = loop.time()
        for _ in range(50):
            await asyncio.sleep(0.001)
            now = loop.time()
            gaps.append(now - last)
            last = now
        # a loop blocked in a wait would stall until the lock is released; a loaded machine
        # may still delay a 1 ms sleep by tens of milliseconds
        assert sorted(gaps)[len(gaps) // 2] < 0.5
        if aio_mode == "futex":
            await asyncio.sleep(aio.OWNER_POLL * 2)  # every wait aged into a packed group
            stats = aio.watch_stats()
            assert stats["watched"] == 1000 and stats["threads"] <= 4 + 8
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        alock.release()
    run(main())
    assert not parked(aio_lot) and aio_lot.info()["slots_free"] == aio_lot.slots


@pytest.mark.timeout(60)
def test_owner_killed_waiting_task_gets_owner_died(aio_lot, aio_mode):
    child = hold_in_child(aio_lot, aio_mode, "shmlot.Lock(name='victim', lot=lot)")
    alock = aio.Lock(name="victim", lot=aio_lot)

    async def main():
        waiter = asyncio.create_task(alock.acquire())
        await until(lambda: len(parked(aio_lot, alock.key)) == 1)
        kill_and_reap(child)
        t0 = time.monotonic()
        with pytest.raises(shmlot.OwnerDiedError):
            await asyncio.wait_for(waiter, 5)
        assert time.monotonic() - t0 < 1.0
        assert alock.locked()  # held by us now
        alock.release()
        await alock.acquire()
        alock.release()
    run(main())
    assert not parked(aio_lot) and aio_lot.info()["slots_free"] == aio_lot.slots


CTRL_C = r"""
import asyncio, sys
import shmlot
from shmlot import aio
lot = shmlot.ParkingLot.attach(sys.argv[1])
alock = aio.Lock(name="held", lot=lot)

async def main():
    print("waiting", flush=True)
    await alock.acquire()

try:
    asyncio.run(main())
except KeyboardInterrupt:
    print("interrupted", lot.info()["slots_free"], flush=True)
"""


@pytest.mark.timeout(60)
def test_ctrl_c_stops_the_loop_promptly(aio_lot, aio_mode):
    lock = shmlot.Lock(name="held", lot=aio_lot)
    lock.acquire()
    try:
        child = start_python(CTRL_C, aio_lot.name, env=mode_env(aio_mode))
        assert child.stdout.readline().strip() == "waiting"
        key = lock.key
        wait_until(lambda: parked(aio_lot, key), 10, "the task queued")
        t0 = time.monotonic()
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=10)
        assert time.monotonic() - t0 < 1.0, err
        assert out.split() == ["interrupted", str(aio_lot.slots)], err
        assert not parked(aio_lot)
    finally:
        lock.release()


def test_shmlot_stat_shows_waiting_tasks(aio_lot):
    """A waiting task is a parked row of its loop's thread, its token shown as "asyncio"."""
    import subprocess
    from helpers import REPO_ROOT
    from helpers.processes import python_env
    alock = aio.Lock(name="statlock", lot=aio_lot)

    async def main():
        await alock.acquire()
        waiter = asyncio.create_task(alock.acquire())
        await until(lambda: len(parked(aio_lot, alock.key)) == 1)
        r = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "shmlot.stat", aio_lot.name, env=python_env(), cwd=REPO_ROOT,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = await asyncio.wait_for(r.communicate(), 60)
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        alock.release()
        return out.decode()
    out = run(main())
    rows = [line for line in out.splitlines() if "statlock" in line and "asyncio" in line]
    assert len(rows) == 1, out
    assert str(threading.get_native_id()) in rows[0].split()


def test_long_waits_still_wake_after_moving_to_packed_groups(aio_lot, aio_mode):
    """Waits that outlast the first liveness check move to packed helper groups (futex_waitv);
    the hand-offs that follow still wake each task at once."""
    alock = aio.Lock(lot=aio_lot)

    async def main():
        await alock.acquire()
        order = []

        async def waiter(i):
            await alock.acquire()
            order.append(i)
            alock.release()
        tasks = []
        for i in range(20):
            tasks.append(asyncio.create_task(waiter(i)))
            await until(lambda: len(parked(aio_lot, alock.key)) == i + 1)
        await asyncio.sleep(aio.OWNER_POLL * 2.5)
        t0 = time.monotonic()
        alock.release()
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
        assert time.monotonic() - t0 < aio.OWNER_POLL  # no wake-up waited for a poll
        assert sorted(order) == list(range(20))
    run(main())
    assert aio_lot.info()["slots_free"] == aio_lot.slots


def test_a_loop_closed_under_waiting_tasks_leaves_nothing_queued(aio_lot):
    """Tasks still waiting when their loop is closed and dropped: their coroutines are closed,
    and each leaves the queue (a Condition waiter too) without touching the gone watch."""
    import gc
    alock = aio.Lock(lot=aio_lot)
    cond = aio.Condition(aio.Lock(lot=aio_lot))
    alock.sync.acquire()
    loop = asyncio.new_event_loop()

    async def cond_waiter():
        async with cond:
            await cond.wait()
    tasks = [loop.create_task(alock.acquire()) for _ in range(5)]
    tasks.append(loop.create_task(cond_waiter()))
    loop.run_until_complete(asyncio.sleep(0.1))
    assert len(parked(aio_lot)) == 6
    loop.close()
    del loop, tasks
    gc.collect()
    assert not parked(aio_lot)
    alock.sync.release()
    assert alock.sync._word() == 0
    assert aio_lot.info()["slots_free"] == aio_lot.slots


FUTEX_SYSCALL = {"x86_64": 202, "aarch64": 98}.get(os.uname().machine)


@pytest.mark.skipif(FUTEX_SYSCALL is None, reason="futex syscall number unknown here")
def shared_ranges():
    """The address ranges of this process's shared mappings (the lot, semaphores, ...)."""
    ranges = []
    with open("/proc/self/maps") as f:
        for line in f:
            addrs, perms = line.split()[:2]
            if "s" in perms:
                lo, hi = addrs.split("-")
                ranges.append((int(lo, 16), int(hi, 16)))
    return ranges


def test_the_loop_thread_never_sleeps_in_a_futex(aio_lot, aio_mode):
    """While 200 tasks wait (and their timers come and go), a sampler thread reads what the
    loop's thread is blocked in (/proc/.../syscall): never a futex in shared memory (a slot's
    wait word, a named semaphore), the way a parked thread is. A futex in private memory is the
    GIL, which the loop's thread waits for while the sampler holds it."""
    alock = aio.Lock(lot=aio_lot)
    sem = aio.Semaphore(0, lot=aio_lot)
    loop_tid = threading.get_native_id()
    path = f"/proc/self/task/{loop_tid}/syscall"
    samples = []
    stop = threading.Event()

    def sampler():
        while not stop.is_set():
            with open(path) as f:
                fields = f.read().split()
            if fields[0].lstrip("-").isdigit():
                nr = int(fields[0])
                samples.append((nr, int(fields[1], 16) if nr == FUTEX_SYSCALL else 0))
            time.sleep(0.0005)

    async def main():
        await alock.acquire()
        tasks = [asyncio.create_task(alock.acquire()) for _ in range(100)]
        tasks += [asyncio.create_task(sem.acquire()) for _ in range(100)]
        await until(lambda: len(parked(aio_lot)) == 200, 30)
        t = threading.Thread(target=sampler)
        t.start()
        try:
            await asyncio.sleep(aio.OWNER_POLL * 2.5)  # through the tasks' liveness checks
        finally:
            stop.set()
            await asyncio.get_running_loop().run_in_executor(None, t.join)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        alock.release()
    run(main())
    assert len(samples) > 50
    shared = shared_ranges()
    in_shared = [hex(addr) for nr, addr in samples
                 if nr == FUTEX_SYSCALL and any(lo <= addr < hi for lo, hi in shared)]
    assert not in_shared, in_shared
    assert aio_lot.info()["slots_free"] == aio_lot.slots
