"""ArcMutex: a custom primitive built on shmlot's low-level API.

parking_lot_core's documentation suggests it: since a mutex needs only two bits, it can share an
atomic word with other data, for example a reference count. Here one ``AtomicU32`` in a shared
memory segment holds both:

    bit 0      LOCKED
    bit 1      PARKED   (some thread may be parked on the word's key)
    bits 2-31  reference count (in units of REF = 4)

Threads that find it locked park on the word's key through ``shmlot.park`` with a ``validate``
that re-checks LOCKED|PARKED under the bucket lock; ``unlock`` unparks one of them and, in the
callback (which runs under that same lock), clears LOCKED and keeps PARKED only if more wait.

Run ``python arc_mutex.py``: four processes each take the mutex 2,000 times around a
non-atomic increment, cloning and dropping references as they go; the final count is exact.
"""
import multiprocessing as mp
import sys
from multiprocessing import shared_memory

import shmlot

LOCKED, PARKED, REF = 1, 2, 4


class ArcMutex:
    """A reference-counted mutex in one 32-bit word of shared memory."""

    def __init__(self, shm, offset=0, lot=None):
        self.word = shmlot.AtomicU32(shm, offset)
        self.lot = lot or shmlot.default_lot()

    # -- reference count --

    def clone(self):
        self.word.fetch_add(REF)

    def drop(self):
        """Drop one reference; True when it was the last."""
        return self.word.fetch_sub(REF) >> 2 == 1

    def refs(self):
        return self.word.load() >> 2

    # -- the mutex bits --

    def lock(self):
        state = self.word.load()
        if not state & LOCKED:
            ok, state = self.word.compare_exchange(state, state | LOCKED)
            if ok:
                return
        self._lock_slow()

    def _lock_slow(self):
        spin = shmlot.SpinWait()
        while True:
            state = self.word.load()
            if not state & LOCKED:  # grab it, keeping PARKED and the count
                if self.word.compare_exchange(state, state | LOCKED)[0]:
                    return
                continue
            if not state & PARKED:
                if spin.spin():
                    continue
                if not self.word.compare_exchange(state, state | PARKED)[0]:
                    continue
            # Sleep until unlock() wakes us; validate runs under the bucket lock, so an unlock
            # between our check and our sleep cannot be missed.
            self.lot.park(self.word.key,
                          validate=lambda: self.word.load() & (LOCKED | PARKED) == LOCKED | PARKED)
            spin.reset()

    def unlock(self):
        state = self.word.load()
        while not state & PARKED:
            ok, state = self.word.compare_exchange(state, state & ~LOCKED)
            if ok:
                return
        self._unlock_slow()

    def _unlock_slow(self):
        def callback(result):
            # under the bucket lock: no new thread can park on the key while we decide
            clear = LOCKED if result.have_more_threads else LOCKED | PARKED
            self.word.fetch_and(~clear & 0xFFFFFFFF)
            return shmlot.DEFAULT_UNPARK_TOKEN

        self.lot.unpark_one(self.word.key, callback)

    def __enter__(self):
        self.lock()
        return self

    def __exit__(self, *exc):
        self.unlock()


def worker(shm_name, rounds):
    shm = shared_memory.SharedMemory(shm_name)
    try:
        mutex = ArcMutex(shm, 0)
        mutex.clone()
        counter = shmlot.AtomicU64(shm, 8)  # used non-atomically below: load, then store
        for _ in range(rounds):
            with mutex:
                counter.store(counter.load() + 1)
        mutex.drop()
    finally:
        del mutex, counter
        shm.close()


def main(processes=4, rounds=2000):
    shm = shared_memory.SharedMemory(create=True, size=64)
    try:
        mutex = ArcMutex(shm, 0)
        mutex.clone()  # our own reference
        ctx = mp.get_context("spawn")
        procs = [ctx.Process(target=worker, args=(shm.name, rounds)) for _ in range(processes)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        counter = shmlot.AtomicU64(shm, 8)
        total = counter.load()
        print(f"count={total} expected={processes * rounds} refs={mutex.refs()}")
        last = mutex.drop()
        del mutex, counter
        return 0 if total == processes * rounds and last else 1
    finally:
        shm.close()
        shm.unlink()


if __name__ == "__main__":
    sys.exit(main())
