"""shmlot.aio.Event, Semaphore, BoundedSemaphore: the synchronous objects' words, awaited."""
import asyncio
import sys
import threading
import time

import pytest

import shmlot
from shmlot import aio

from helpers.aio import mode_env, run, start_queued_in_order, until
from helpers.processes import start_python
from helpers.waiting import parked


def test_event_set_by_a_thread_wakes_tasks(aio_lot):
    ev = aio.Event(name="ev", lot=aio_lot)
    sync = shmlot.Event(name="ev", lot=aio_lot)

    async def main():
        waiters = [asyncio.create_task(ev.wait()) for _ in range(20)]
        await until(lambda: len(parked(aio_lot, ev.key)) == 20)
        threading.Thread(target=sync.set).start()
        assert await asyncio.wait_for(asyncio.gather(*waiters), 5) == [True] * 20
        assert ev.is_set()
        ev.clear()
        assert not sync.is_set()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(aio.Event.from_sync(sync).wait(), 0.05)
        assert not parked(aio_lot)
    run(main())
    assert aio_lot.info()["slots_free"] == aio_lot.slots


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.timeout is 3.11+")
def test_event_cancel_and_timeout(aio_lot):
    ev = aio.Event(lot=aio_lot)

    async def main():
        tasks = [asyncio.create_task(ev.wait()) for _ in range(10)]
        await until(lambda: len(parked(aio_lot, ev.key)) == 10)
        for t in tasks[:5]:
            t.cancel()
        await asyncio.gather(*tasks[:5], return_exceptions=True)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await ev.wait()
        assert len(parked(aio_lot, ev.key)) == 5
        ev.set()
        assert await asyncio.gather(*tasks[5:]) == [True] * 5
        assert ev.sync._words[1].load() == 0  # no waiter counted
    run(main())
    assert aio_lot.info()["slots_free"] == aio_lot.slots


PINGPONG = r"""
import asyncio, sys
import shmlot
from shmlot import aio
lot = shmlot.ParkingLot.attach(sys.argv[1])
ping = aio.Event(name="ping", lot=lot)
pong = aio.Event(name="pong", lot=lot)
rounds = int(sys.argv[2])

async def main():
    for _ in range(rounds):
        await ping.wait()
        ping.clear()
        pong.set()

asyncio.run(main())
print("ok")
"""


@pytest.mark.timeout(120)
def test_event_ping_pong_between_processes(aio_lot, aio_mode):
    rounds = 300
    child = start_python(PINGPONG, aio_lot.name, rounds, env=mode_env(aio_mode))
    ping = shmlot.Event(name="ping", lot=aio_lot)
    pong = aio.Event(name="pong", lot=aio_lot)

    async def main():
        for _ in range(rounds):
            ping.set()
            await pong.wait()
            pong.clear()
    run(main(), timeout=100)
    out, err = child.communicate(timeout=30)
    assert child.returncode == 0 and "ok" in out, err
    assert aio_lot.info()["slots_free"] == aio_lot.slots


def test_semaphore_counts_across_tasks_and_threads(aio_lot):
    sem = aio.Semaphore(3, name="sem", lot=aio_lot)
    state = {"inside": 0, "max": 0}

    async def task():
        for _ in range(30):
            async with sem:
                state["inside"] += 1
                state["max"] = max(state["max"], state["inside"])
                await asyncio.sleep(0)
                state["inside"] -= 1

    def thread():
        for _ in range(30):
            with sem.sync:
                state["inside"] += 1
                state["max"] = max(state["max"], state["inside"])
                time.sleep(0)
                state["inside"] -= 1

    async def main():
        threads = [threading.Thread(target=thread) for _ in range(2)]
        for t in threads:
            t.start()
        await asyncio.gather(*(task() for _ in range(10)))
        for t in threads:
            await asyncio.get_running_loop().run_in_executor(None, t.join)
    run(main())
    assert state["max"] <= 3
    assert sem.sync._value() == 3 and not sem.locked()
    assert aio_lot.info()["slots_free"] == aio_lot.slots


def test_semaphore_cancelled_after_wake_passes_the_unit_on(aio_lot):
    sem = aio.Semaphore(0, lot=aio_lot)

    async def main():
        first, second = await start_queued_in_order(aio_lot, sem.key, sem.acquire(),
                                                    sem.acquire())
        unparks = aio_lot.info()["counters"]["unparks"]
        sem.release()  # wakes the first only
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)
        assert await asyncio.wait_for(second, 5) is True
        # the second was woken by the first's cancellation passing the unit on (an unpark),
        # not by its own poll finding the unit
        assert aio_lot.info()["counters"]["unparks"] - unparks == 2
        assert sem.sync._value() == 0
    run(main())
    assert aio_lot.info()["slots_free"] == aio_lot.slots


def test_bounded_semaphore(aio_lot):
    sem = aio.BoundedSemaphore(2, lot=aio_lot)

    async def main():
        await sem.acquire()
        await sem.acquire()
        assert sem.locked()
        waiter = asyncio.create_task(sem.acquire())
        await until(lambda: len(parked(aio_lot, sem.key)) == 1)
        sem.release()
        await asyncio.wait_for(waiter, 5)
        sem.release()
        sem.release()
        with pytest.raises(ValueError):
            sem.release()
    run(main())
    assert isinstance(aio.BoundedSemaphore.from_sync(sem.sync), aio.BoundedSemaphore)
    with pytest.raises(TypeError):
        aio.BoundedSemaphore.from_sync(shmlot.Semaphore(lot=aio_lot))


def test_async_objects_pickle_to_a_spawned_child(aio_lot, aio_mode):
    """An anonymous aio object travels to a child process as its synchronous handle does."""
    import multiprocessing as mp
    sem = aio.Semaphore(0, lot=aio_lot)
    ev = aio.Event(lot=aio_lot)
    ctx = mp.get_context("spawn")
    child = ctx.Process(target=_child_releases, args=(sem, ev))
    child.start()
    try:
        async def main():
            await asyncio.wait_for(ev.wait(), 30)
            assert await asyncio.wait_for(sem.acquire(), 30)
        run(main())
    finally:
        child.join(30)
        if child.is_alive():
            child.kill()
    assert child.exitcode == 0


def _child_releases(sem, ev):
    assert isinstance(sem, aio.Semaphore) and isinstance(ev, aio.Event)

    async def main():
        ev.set()
        sem.release()
    asyncio.run(main())
