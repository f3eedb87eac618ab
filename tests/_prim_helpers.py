"""Helpers shared by the primitive tests (test_lock_tests, test_primitives_processes,
test_owner_death, test_rwlock, test_barrier, test_condition, test_placement).

``default_lot_env(waiter)``  context manager: creates a lot with a unique name on backend
                             ``waiter``, makes it the default lot of this process *and* of every
                             child (``SHMLOT_LOT`` / ``SHMLOT_WAITER`` in ``os.environ``, which
                             children inherit), and unlinks it afterwards.
``plot`` fixture             the same for one test, parametrized over both backends through
                             conftest's ``waiter`` fixture; yields the lot.
``child_env(lot)``           environment for a ``python -c`` child (conftest.python_env) that
                             makes ``lot`` its default lot.
``wait_parked_on(lot, key, n)`` wait (with a deadline) until at least ``n`` threads are queued on
                             ``key`` (any process); returns the queued records.
``run_procs(ctx, target, args_list)`` start processes of a multiprocessing context, join them
                             with a timeout, and fail on a nonzero exit code.
"""
import contextlib
import os
import threading

import pytest

import shmlot
from shmlot import lot as _lotmod

from conftest import (BACKENDS, Segment, attach_segment, new_lot_name, parked,  # noqa: F401
                      python_env, wait_until)

__all__ = ["default_lot_env", "plot", "child_env", "wait_parked_on", "run_procs", "BACKENDS",
           "kill_and_reap"]

_ENV_KEYS = ("SHMLOT_LOT", "SHMLOT_WAITER")


@contextlib.contextmanager
def default_lot_env(waiter, **create_kwargs):
    """A fresh lot on backend ``waiter`` as the default lot (here and in children)."""
    name = new_lot_name(f"prim-{waiter[:3]}-")
    lot = shmlot.ParkingLot.create(name, waiter=waiter, **create_kwargs)
    saved = {k: os.environ.get(k) for k in _ENV_KEYS}
    os.environ["SHMLOT_LOT"] = name
    os.environ["SHMLOT_WAITER"] = waiter
    _lotmod._default_lots[name] = lot  # default_lot() must return this very handle
    try:
        yield lot
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        _lotmod._default_lots.pop(name, None)
        lot.unlink()


@pytest.fixture
def plot(waiter):
    """A fresh default lot (see default_lot_env) on each backend."""
    with default_lot_env(waiter) as lot:
        yield lot


def child_env(lot, extra=None):
    env = {"SHMLOT_LOT": lot.name, "SHMLOT_WAITER": lot.waiter}
    if extra:
        env.update(extra)
    return python_env(env)


def wait_parked_on(lot, key, n, timeout=20.0):
    """Wait until at least ``n`` threads are queued on ``key``; returns them."""
    box = []

    def ready():
        box[:] = parked(lot, key)
        return len(box) >= n

    wait_until(ready, timeout, f"{n} thread(s) parked on key {key:#x}")
    return list(box)


def run_procs(ctx, target, args_list, timeout=45):
    """Run ``target(*args)`` in one process of ``ctx`` per ``args`` tuple; fail on a nonzero exit
    or a process still running after ``timeout`` seconds."""
    procs = [ctx.Process(target=target, args=args) for args in args_list]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join(timeout)
            assert not p.is_alive(), f"{p} still running after {timeout} s"
            assert p.exitcode == 0, f"{p} exited with {p.exitcode}"
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(5)
    return procs


def join_all(threads=(), procs=(), timeout=20):
    """Join ``threads`` and then ``procs``, failing on one still running after ``timeout`` seconds
    or a process that exited nonzero."""
    for t in threads:
        t.join(timeout)
        assert not t.is_alive(), f"{t} still running after {timeout} s"
    for p in procs:
        p.join(timeout)
        assert p.exitcode == 0, f"{p} exited with {p.exitcode}"


def kill_and_reap(proc):
    """SIGKILL a subprocess.Popen or multiprocessing.Process and wait for it (no zombie)."""
    import signal
    if hasattr(proc, "kill") and hasattr(proc, "wait"):  # Popen
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    else:
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(10)


@pytest.fixture
def shm():
    """Factory: ``shm(size)`` -> a new ``multiprocessing.shared_memory.SharedMemory`` with a
    unique name, unlinked after the test (children attach it by ``.name``)."""
    from multiprocessing import shared_memory
    made = []

    def make(size=4096):
        seg = shared_memory.SharedMemory(name=new_lot_name("seg-"), create=True, size=size)
        made.append(seg)
        return seg

    yield make
    for seg in made:
        try:
            seg.close()
        except BufferError:  # a primitive placed in it is still alive somewhere: leave the map
            pass
        seg.unlink()


@pytest.fixture
def segment():
    """Factory: ``segment(size)`` -> a conftest ``Segment`` (int64 atomics at byte offsets, no
    resource tracker) with a unique name; children map it with ``attach_segment(name)``.
    Unlinked after the test."""
    import _posixshmem
    made = []

    def make(size=4096):
        seg = Segment(new_lot_name("seg-"), create=True, size=size)
        made.append(seg)
        return seg

    yield make
    for seg in made:
        seg.close()
        try:
            _posixshmem.shm_unlink("/" + seg.name)
        except FileNotFoundError:
            pass


# ---- workers (module level: children started by spawn import them from here) -------------------

def open_primitive(kind, obj):
    """``obj`` itself, or, when it is a name, the named object of ``kind`` opened in this process
    (a Semaphore takes value 1 if this call creates it)."""
    if not isinstance(obj, str):
        return obj
    import shmlot
    cls = getattr(shmlot, kind)
    if kind in ("Semaphore", "BoundedSemaphore"):
        return cls(1, name=obj)
    return cls(name=obj)


def critical(kind, obj):
    """A context manager holding ``obj`` exclusively (RLock: twice, nested)."""
    if kind == "RWLock":
        return obj.write()
    if kind == "RLock":
        stack = contextlib.ExitStack()
        stack.enter_context(obj)
        stack.enter_context(obj)
        return stack
    return obj


def locked_increments(kind, obj, seg_name, iters, nthreads=1, offset=0):
    """In ``nthreads`` threads, ``iters`` times each: hold ``obj`` and increment the int64 at
    ``offset`` of segment ``seg_name`` *non-atomically* (load, yield now and then, store), so
    that any two holders at once lose an increment."""
    obj = open_primitive(kind, obj)
    seg = attach_segment(seg_name)
    errors = []

    def run():
        try:
            for i in range(iters):
                with critical(kind, obj):
                    v = seg.load(offset)
                    if i % 16 == 0:
                        os.sched_yield()
                    seg.store(offset, v + 1)
        except BaseException as exc:  # noqa: B902 - re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(nthreads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seg.close()
    if errors:
        raise errors[0]
