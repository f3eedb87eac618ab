"""The asyncio tests' helpers: the three ways a task can wait, and how a child process is told.

"futex": helper threads in futex_waitv (the default on Linux 5.16+); "futex-threads": a thread
per waiting task on a futex lot (what a kernel without futex_waitv gets); "semaphore": the
semaphore backend (a thread per waiting task).
"""
import asyncio

import pytest

MODES = ("futex", "futex-threads", "semaphore")


def mode_waiter(mode):
    return "semaphore" if mode == "semaphore" else "futex"


def mode_env(mode):
    """Environment for a child process of this mode."""
    return {"SHMLOT_AIO_WAITV": "0" if mode == "futex-threads" else "1"}


def run(coro, timeout=60):
    """asyncio.run with an overall bound (a hang fails the test instead of blocking it)."""
    async def bounded():
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(bounded())


async def until(predicate, timeout=10.0, message="condition"):
    """Await ``predicate()`` becoming true (checked every millisecond), failing after
    ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        if loop.time() > end:
            pytest.fail(f"timed out waiting for {message}")
        await asyncio.sleep(0.001)


def queued(lot, key=None):
    """Slots queued in ``lot`` (on ``key`` if given), from the snapshot."""
    slots, _objects, _holds = lot._snapshot()
    return [s for s in slots if s["state"] == "parked" and (key is None or s["key"] == key)]
