"""Typed use of shmlot's public API: tests/test_packaging.py checks it with mypy (and runs it).
Every annotation here is what the stubs (shmlot/__init__.pyi) promise."""
import multiprocessing.context
import warnings
from multiprocessing import shared_memory
from typing import List, Optional, Tuple

import shmlot


def main(lot: shmlot.ParkingLot) -> List[object]:
    out: List[object] = []
    lock: shmlot.Lock = shmlot.Lock(lot=lot)
    got: bool = lock.acquire(timeout=1.0)
    lock.release()
    with lock:
        out.append(lock.locked())
    rlock = shmlot.RLock(lot=lot)
    cond = shmlot.Condition(rlock, lot=lot)
    with cond:
        notified: bool = cond.wait(0.01)
        value: int = cond.wait_for(lambda: 42, timeout=0.01)
        cond.notify_all()
    sem = shmlot.BoundedSemaphore(2, lot=lot)
    if sem.acquire(False):
        sem.release(1)
    event = shmlot.Event(lot=lot)
    event.set()
    flag: bool = event.wait(0)
    rw = shmlot.RWLock(lot=lot)
    with rw.read() as reading:
        out.append(isinstance(reading, shmlot.RWLock))
    barrier = shmlot.Barrier(1, lot=lot)
    index: int = barrier.wait(1.0)
    shm = shared_memory.SharedMemory(create=True, size=64)
    buf = shm.buf
    assert buf is not None
    word = shmlot.AtomicU64(buf, 8)
    placed: shmlot.Lock = shmlot.Lock.at(shm, 16, lot=lot)
    try:
        swapped: Tuple[bool, int] = word.compare_exchange(0, 1)
        key: int = shmlot.key_for(placed)
        word.close()
        placed_ok: bool = placed.acquire(False)
        placed.release()
        out.extend([swapped, key != 0, placed_ok])
    finally:
        del placed, word, buf
        shm.close()
        shm.unlink()
    result: shmlot.ParkResult = lot.park(lot.key_at(0), validate=lambda: False)
    ctx: multiprocessing.context.BaseContext = shmlot.get_context("fork", lot=lot)
    mp_lock = ctx.Lock()
    out.append(mp_lock.acquire(False))
    mp_lock.release()
    free: Tuple[int, int] = lot.reap()
    name: Optional[str] = lock.name
    with warnings.catch_warnings():
        warnings.simplefilter("error", shmlot.OwnerDiedWarning)
    out.extend([got, notified, value, flag, index, result.is_invalid, free, name])
    return out
