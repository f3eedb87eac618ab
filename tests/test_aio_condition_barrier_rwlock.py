"""shmlot.aio.Condition, Barrier and RWLock: the synchronous objects' words, awaited."""
import asyncio
import threading
import time

import pytest

import shmlot
from shmlot import aio

from helpers.aio import mode_env, queued, run, start_holder, start_queued_in_order, until
from helpers.kills import kill_and_reap
from helpers.processes import start_python


# ---- Condition ---------------------------------------------------------------------------------

def test_condition_notify_wakes_tasks_in_order_of_the_lock(aio_lot):
    cond = aio.Condition(aio.Lock(lot=aio_lot))
    woken = []

    async def waiter(i):
        async with cond:
            await cond.wait()
            woken.append(i)
            assert cond.locked()

    async def main():
        tasks = []
        for i in range(5):
            tasks.append(asyncio.create_task(waiter(i)))
            await until(lambda: len(queued(aio_lot, cond.sync.key)) == i + 1)
        async with cond:
            cond.notify(2)
        await until(lambda: len(woken) == 2)
        async with cond:
            cond.notify_all()
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
        assert woken == [0, 1, 2, 3, 4]
        assert not cond.locked()
        with pytest.raises(RuntimeError):
            await cond.wait()
    run(main())
    assert aio_lot.info()["slots_free"] == aio_lot.slots


def test_condition_shared_with_threads_by_name(aio_lot):
    """A named condition (with its own lock): a thread produces, tasks consume, and the
    reverse; wait_for with a predicate on shared state."""
    acond = aio.Condition(name="cv", lot=aio_lot)
    scond = shmlot.Condition(name="cv", lot=aio_lot)
    items = []
    got = []

    def producer():
        for i in range(50):
            with scond:
                items.append(i)
                scond.notify()
            time.sleep(0.001)

    async def consumer():
        while True:
            async with acond:
                await acond.wait_for(lambda: items)
                item = items.pop(0)
            if item is None:
                return
            got.append(item)

    async def main():
        consumers = [asyncio.create_task(consumer()) for _ in range(3)]
        t = threading.Thread(target=producer)
        t.start()
        await asyncio.get_running_loop().run_in_executor(None, t.join)
        async with acond:
            items.extend([None] * 3)
            acond.notify_all()
        await asyncio.wait_for(asyncio.gather(*consumers), 10)
    run(main())
    assert sorted(got) == list(range(50))
    assert aio_lot.info()["slots_free"] == aio_lot.slots


def test_condition_cancelled_waiter_holds_the_lock_and_passes_the_notify_on(aio_lot):
    cond = aio.Condition(aio.Lock(lot=aio_lot))
    state = {}

    async def first():
        async with cond:
            try:
                await cond.wait()
            except asyncio.CancelledError:
                state["held_when_cancelled"] = cond.locked()
                raise

    async def second():
        async with cond:
            await cond.wait()
            state["second"] = True

    async def main():
        a, b = await start_queued_in_order(aio_lot, cond.sync.key, first(), second())
        async with cond:
            cond.notify(1)  # moves the first onto the lock's queue
            a.cancel()
        with pytest.raises(asyncio.CancelledError):
            await a
        assert state["held_when_cancelled"]
        await asyncio.wait_for(b, 5)  # the notification reached the second
        assert state["second"] and not cond.locked()
    run(main())
    assert aio_lot.info()["slots_free"] == aio_lot.slots


# ---- Barrier ------------------------------------------------------------------------------------

def test_barrier_tasks_and_threads(aio_lot):
    barrier = aio.Barrier(4, name="b", lot=aio_lot)
    sync = shmlot.Barrier(4, name="b", lot=aio_lot)
    indices = []

    def thread():
        for _ in range(3):
            indices.append(sync.wait(timeout=10))

    async def task():
        for _ in range(3):
            indices.append(await barrier.wait())

    async def main():
        threads = [threading.Thread(target=thread) for _ in range(2)]
        for t in threads:
            t.start()
        await asyncio.wait_for(asyncio.gather(task(), task()), 20)
        for t in threads:
            await asyncio.get_running_loop().run_in_executor(None, t.join)
    run(main())
    assert sorted(indices) == sorted(list(range(4)) * 3)
    assert not barrier.broken and barrier.n_waiting == 0


def test_barrier_cancel_withdraws_abort_breaks(aio_lot):
    barrier = aio.Barrier(2, lot=aio_lot)

    async def main():
        t = asyncio.create_task(barrier.wait())
        await until(lambda: barrier.n_waiting == 1)
        t.cancel()
        await asyncio.gather(t, return_exceptions=True)
        assert barrier.n_waiting == 0 and not barrier.broken
        a, b = await asyncio.wait_for(asyncio.gather(barrier.wait(), barrier.wait()), 5)
        assert {a, b} == {0, 1}
        t = asyncio.create_task(barrier.wait())
        await until(lambda: barrier.n_waiting == 1)
        await barrier.abort()
        with pytest.raises(aio.BrokenBarrierError):
            await asyncio.wait_for(t, 5)
        await barrier.reset()
        assert not barrier.broken
    run(main())
    assert aio_lot.info()["slots_free"] == aio_lot.slots


# ---- RWLock -------------------------------------------------------------------------------------

def test_rwlock_readers_share_writers_exclude(aio_lot):
    rw = aio.RWLock(name="rw", lot=aio_lot)
    sync = shmlot.RWLock(name="rw", lot=aio_lot)
    state = {"readers": 0, "writers": 0, "max_readers": 0, "bad": 0}

    def check():
        if state["writers"] > 1 or (state["writers"] and state["readers"]):
            state["bad"] += 1

    async def reader():
        for _ in range(20):
            async with rw.read():
                state["readers"] += 1
                state["max_readers"] = max(state["max_readers"], state["readers"])
                check()
                await asyncio.sleep(0)
                state["readers"] -= 1

    async def writer():
        for _ in range(10):
            async with rw.write():
                state["writers"] += 1
                check()
                await asyncio.sleep(0)
                state["writers"] -= 1

    def thread_writer():
        for _ in range(10):
            with sync.write():
                state["writers"] += 1
                check()
                time.sleep(0.0005)
                state["writers"] -= 1

    async def main():
        t = threading.Thread(target=thread_writer)
        t.start()
        await asyncio.wait_for(asyncio.gather(*(reader() for _ in range(4)),
                                              *(writer() for _ in range(2))), 30)
        await asyncio.get_running_loop().run_in_executor(None, t.join)
    run(main())
    assert state["bad"] == 0 and state["max_readers"] >= 1
    assert sync._words[0].load() == 0 and sync._words[1].load() == 0 \
        and sync._words[2].load() == 0
    assert aio_lot.info()["slots_free"] == aio_lot.slots


def test_rwlock_cancelled_writer_lets_readers_in(aio_lot):
    rw = aio.RWLock(lot=aio_lot)

    async def main():
        await rw.acquire_read()
        w = asyncio.create_task(rw.acquire_write())
        await until(lambda: rw.sync._words[2].load() == 1)
        # a reader from another thread waits behind the writer...
        done = threading.Event()

        def reader():
            rw.sync.acquire_read()
            rw.sync.release_read()
            done.set()
        t = threading.Thread(target=reader)
        t.start()
        await until(lambda: rw.sync._words[1].load() == 1)
        w.cancel()  # ...and gets in once the writer gives up
        await asyncio.gather(w, return_exceptions=True)
        await until(done.is_set, 5, "the reader got in")
        rw.release_read()
        await asyncio.get_running_loop().run_in_executor(None, t.join)
        await rw.acquire_write()
        rw.release_write()
    run(main())
    assert aio_lot.info()["slots_free"] == aio_lot.slots


@pytest.mark.timeout(60)
def test_rwlock_dead_writer_reaches_a_waiting_task(aio_lot, aio_mode):
    child = start_holder(aio_lot, aio_mode, "shmlot.RWLock(name='rwv', lot=lot)", "acquire_write")
    rw = aio.RWLock(name="rwv", lot=aio_lot)

    async def main():
        w = asyncio.create_task(rw.acquire_write())
        await until(lambda: len(queued(aio_lot)) == 1)
        kill_and_reap(child)
        with pytest.raises(shmlot.OwnerDiedError):
            await asyncio.wait_for(w, 5)
        rw.release_write()
        async with rw.read():
            pass
    run(main())
    assert aio_lot.info()["slots_free"] == aio_lot.slots


# ---- across processes ---------------------------------------------------------------------------

SYNC_SIDE = r"""
import sys, threading
import shmlot
lot = shmlot.ParkingLot.attach(sys.argv[1])
cond = shmlot.Condition(name="xcv", lot=lot)
barrier = shmlot.Barrier(4, name="xbar", lot=lot)
box = shmlot.Semaphore(0, name="xbox", lot=lot)   # items produced (the "queue" is a count)
taken = shmlot.Semaphore(0, name="xtaken", lot=lot)
rounds = int(sys.argv[2])

def party():
    for _ in range(rounds):
        barrier.wait(timeout=30)

threads = [threading.Thread(target=party) for _ in range(2)]
for t in threads:
    t.start()
for i in range(rounds):
    with cond:
        box.release()
        cond.notify()
    assert taken.acquire(timeout=30)
for t in threads:
    t.join()
print("ok")
"""


@pytest.mark.timeout(120)
def test_condition_and_barrier_between_a_sync_and_an_async_process(aio_lot, aio_mode):
    """Another process's threads notify a Condition whose waiters are tasks here, and are two
    of the four parties of a Barrier whose other two are tasks here."""
    rounds = 30
    cond = aio.Condition(name="xcv", lot=aio_lot)
    barrier = aio.Barrier(4, name="xbar", lot=aio_lot)
    box = shmlot.Semaphore(0, name="xbox", lot=aio_lot)
    taken = shmlot.Semaphore(0, name="xtaken", lot=aio_lot)
    child = start_python(SYNC_SIDE, aio_lot.name, rounds, env=mode_env(aio_mode))

    async def consumer():
        for _ in range(rounds):
            async with cond:
                await cond.wait_for(lambda: box.acquire(blocking=False))
            taken.release()

    async def party():
        return [await barrier.wait() for _ in range(rounds)]

    async def main():
        return await asyncio.gather(consumer(), party(), party())
    _c, a, b = run(main(), timeout=100)
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0 and "ok" in out, err
    assert all(0 <= i < 4 for i in a + b)
    assert not barrier.broken
    assert aio_lot.info()["slots_free"] == aio_lot.slots
