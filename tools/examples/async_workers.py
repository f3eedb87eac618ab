"""Asyncio worker processes sharing a rate limiter and electing a leader, with shmlot.aio.

Several worker processes, each running an event loop with many tasks:
- every request goes through one ``shmlot.aio.Semaphore`` shared by all the processes, so that
  at most LIMIT requests are in flight on the whole machine (a rate limiter for, say, an API
  that allows LIMIT concurrent calls per account);
- one ``shmlot.aio.Lock`` elects a leader: each worker has a task waiting for the lock; the one
  holding it runs the periodic job (a cache refresh, a heartbeat) for a term, then releases it,
  and the next waiting worker takes over at once. A worker that finishes cancels its task, which
  stops its waiting (or its term). Had a leader been killed, the next would take over with
  OwnerDiedError.
Waiting costs no thread per task and never blocks a loop: a waiting task is woken by the
releaser's own wake-up, across processes.

Run ``python async_workers.py``: four workers make 40 requests each; it prints what happened and
exits 0 only if the limit held, there was never more than one leader, and leadership passed on.
"""
import asyncio
import multiprocessing as mp
import os
import sys

import shmlot
from shmlot import aio

LIMIT = 3
PERIOD = 0.01  # seconds between two runs of the leader's job
SEM_NAME, LOCK_NAME = "async-workers-limit", "async-workers-leader"
# counters in a shared array: requests in flight, most ever in flight, requests done,
# leaders now, most leaders at once, job runs, leader terms
IN_FLIGHT, MAX_IN_FLIGHT, DONE, LEADERS, MAX_LEADERS, JOB_RUNS, TERMS = range(7)


class Counters:
    """shmlot atomics over a shared array (multiprocessing.RawArray)."""

    def __init__(self, raw):
        view = memoryview(raw).cast("B")
        self._a = [shmlot.AtomicU64(view, 8 * i) for i in range(len(raw))]

    def add(self, i, n=1):
        return self._a[i].fetch_add(n) + n

    def sub(self, i):
        self._a[i].fetch_sub(1)

    def raise_max(self, i, value):
        cur = self._a[i].load()
        while value > cur:
            ok, cur = self._a[i].compare_exchange(cur, value)
            if ok:
                return

    def get(self, i):
        return self._a[i].load()


async def request(limit, counters, n):
    async with limit:  # at most LIMIT of these in flight across all processes
        counters.raise_max(MAX_IN_FLIGHT, counters.add(IN_FLIGHT))
        try:
            await asyncio.sleep(0.002 * (1 + n % 3))  # the call itself
        finally:
            counters.sub(IN_FLIGHT)
    counters.add(DONE)


async def lead(leader, counters, term=5):
    """Take turns as the leader: wait to be elected, run the periodic job ``term`` times, step
    aside (so that another worker's turn comes) and stand again, until cancelled."""
    while True:
        try:
            await leader.acquire()
        except shmlot.OwnerDiedError:
            pass  # the previous leader died while leading; nothing of its to repair here
        try:
            counters.add(TERMS)
            counters.raise_max(MAX_LEADERS, counters.add(LEADERS))
            try:
                for _ in range(term):
                    counters.add(JOB_RUNS)  # the periodic job
                    await asyncio.sleep(PERIOD)
            finally:
                counters.sub(LEADERS)
        finally:
            leader.release()
        await asyncio.sleep(PERIOD)


async def work(worker, requests, counters):
    limit = aio.Semaphore(LIMIT, name=SEM_NAME)
    leader = aio.Lock(name=LOCK_NAME)
    candidate = asyncio.create_task(lead(leader, counters))
    n = requests // 4 if worker == 0 else requests  # one worker leaves early
    await asyncio.gather(*(request(limit, counters, i) for i in range(n)))
    await asyncio.sleep(0.05 * (worker + 1))  # let the leader's job run a few times
    candidate.cancel()  # stop standing (and leading, if it is our turn)
    await asyncio.gather(candidate, return_exceptions=True)


def worker_main(worker, requests, raw):
    asyncio.run(work(worker, requests, Counters(raw)))


def main(workers=4, requests=40):
    raw = mp.RawArray("Q", 7)
    counters = Counters(raw)
    aio.Semaphore(LIMIT, name=SEM_NAME)  # created here with its value; the workers open it
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=worker_main, args=(w, requests, raw)) for w in range(workers)]
    try:
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        expected = requests // 4 + (workers - 1) * requests
        ok = (all(p.exitcode == 0 for p in procs) and counters.get(DONE) == expected
              and counters.get(MAX_IN_FLIGHT) <= LIMIT and counters.get(MAX_LEADERS) == 1
              and counters.get(TERMS) >= 2 and counters.get(JOB_RUNS) > 0)
        print(f"{counters.get(DONE)} requests, at most {counters.get(MAX_IN_FLIGHT)} in flight "
              f"(limit {LIMIT}); {counters.get(TERMS)} leader terms, at most "
              f"{counters.get(MAX_LEADERS)} at once; the job ran {counters.get(JOB_RUNS)} times"
              f": {'ok' if ok else 'FAILED'}")
        return 0 if ok else 1
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
        for name in (SEM_NAME, LOCK_NAME):
            try:
                shmlot.unlink_object(name)
            except KeyError:
                pass


if __name__ == "__main__":
    sys.exit(main())
