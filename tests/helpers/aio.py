"""The asyncio tests' helpers: the three ways a task can wait, and how a child process is told.

"futex": helper threads in futex_waitv (the default on Linux 5.16+); "futex-threads": a thread
per waiting task on a futex lot (what a kernel without futex_waitv gets); "semaphore": the
semaphore backend (a thread per waiting task).
"""
import asyncio

import pytest

from helpers.processes import start_python

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


async def start_queued_in_order(lot, key, *coros):
    """A task per coroutine of ``coros``, each started once the one before is queued on ``key``
    (so queue order is their order); returns the tasks."""
    tasks = []
    for coro in coros:
        tasks.append(asyncio.create_task(coro))
        await until(lambda: len(queued(lot, key)) == len(tasks))
    return tasks


_HOLDER = r"""
import sys, time
import shmlot
lot = shmlot.ParkingLot.attach(sys.argv[1])
obj = {open_expr}
obj.{take}()
print("held", flush=True)
time.sleep(60)
"""


def start_holder(lot, mode, open_expr, take="acquire"):
    """A ``python -c`` child of ``mode`` that attaches ``lot``, opens ``open_expr`` (an expression
    over ``shmlot`` and ``lot``), calls its ``take`` method and sleeps holding it. Returns the
    child (a Popen) once it holds."""
    child = start_python(_HOLDER.format(open_expr=open_expr, take=take), lot.name,
                         env=mode_env(mode))
    assert child.stdout.readline().strip() == "held"
    return child
