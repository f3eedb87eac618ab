"""Unrelated worker processes sharing a named Condition-based job queue.

Nothing is inherited: the producer and each worker are started as separate programs, in any
order, for instance from two shells::

    python job_queue.py work jobs          # shell 1 (waits for jobs)
    python job_queue.py produce jobs 100   # shell 2
    python job_queue.py stats jobs         # jobs done and the sum of their results
    python job_queue.py remove jobs        # when done: remove the segment and the Condition

They find each other by name: the queue's storage is a SharedMemory segment called NAME (the
first step to run creates it), its Condition is ``shmlot.Condition(name=NAME)`` in the default
lot (so all of them must run as the same user, or share a lot: see the README).

Queue layout (u64 words): [0] head, [1] tail, [2] done count, [3] closed flag, [4] sum of
results, then CAPACITY job slots. The Condition's lock guards all of it; ``notify`` wakes
workers when jobs arrive and the producer when room frees.

Run ``python job_queue.py demo`` to start a producer and three workers as separate processes;
it checks that every job was processed exactly once.
"""
import struct
import subprocess
import sys
import time
import uuid
from multiprocessing import shared_memory

import shmlot

CAPACITY = 16
HEAD, TAIL, DONE, CLOSED, RESULT = range(5)
HEADER_WORDS = 5
SIZE = 8 * (HEADER_WORDS + CAPACITY)


class JobQueue:
    def __init__(self, name):
        self.shm = _open_or_create(name)
        self.cond = shmlot.Condition(name=name)

    def _get(self, i):
        return struct.unpack_from("Q", self.shm.buf, 8 * i)[0]

    def _set(self, i, v):
        struct.pack_into("Q", self.shm.buf, 8 * i, v)

    def put(self, job):
        with self.cond:
            self.cond.wait_for(lambda: self._get(TAIL) - self._get(HEAD) < CAPACITY)
            tail = self._get(TAIL)
            self._set(HEADER_WORDS + tail % CAPACITY, job)
            self._set(TAIL, tail + 1)
            self.cond.notify_all()

    def close(self):
        with self.cond:
            self._set(CLOSED, 1)
            self.cond.notify_all()

    def get(self):
        """The next job, or None once the queue is closed and empty."""
        with self.cond:
            self.cond.wait_for(lambda: self._get(TAIL) > self._get(HEAD) or self._get(CLOSED))
            head = self._get(HEAD)
            if head == self._get(TAIL):
                return None
            job = self._get(HEADER_WORDS + head % CAPACITY)
            self._set(HEAD, head + 1)
            self.cond.notify_all()  # room for the producer
            return job

    def record(self, result):
        with self.cond:
            self._set(DONE, self._get(DONE) + 1)
            self._set(RESULT, self._get(RESULT) + result)

    def stats(self):
        with self.cond:
            return self._get(DONE), self._get(RESULT)

    def detach(self):
        self.shm.close()


def _open_or_create(name):
    """The segment NAME, created (all zero: an empty, open queue) by whichever step runs first.
    Untracked: Python's resource tracker would remove it when the creating process exits, under
    the feet of the others; ``remove`` (or the demo) removes it."""
    untracked = {"track": False} if sys.version_info >= (3, 13) else {}
    try:
        shm = shared_memory.SharedMemory(name, create=True, size=SIZE, **untracked)
    except FileExistsError:
        shm = _attach_sized(name, untracked)
    if not untracked:
        from multiprocessing import resource_tracker
        resource_tracker.unregister(shm._name, "shared_memory")
    return shm


def _attach_sized(name, untracked, wait=5.0):
    """Attach to NAME, which another step has just created: its creator sizes it right after
    creating it, and until then it is empty (mmap refuses it), so try again for a moment."""
    deadline = time.monotonic() + wait
    while True:
        try:
            return shared_memory.SharedMemory(name, **untracked)
        except ValueError:  # "cannot mmap an empty file": not sized yet
            if time.monotonic() > deadline:
                raise
            time.sleep(0.001)


def remove(name):
    """Remove the queue's segment and its named Condition."""
    shm = _open_or_create(name)
    shm.close()
    shm.unlink()
    try:
        shmlot.unlink_object(name)
    except KeyError:
        pass


def produce(name, jobs):
    q = JobQueue(name)
    for job in range(1, jobs + 1):
        q.put(job)
    q.close()
    q.detach()
    print(f"produced {jobs} jobs")


def stats(name):
    q = JobQueue(name)
    done, total = q.stats()
    q.detach()
    print(f"jobs done: {done}, sum of results: {total}")


def work(name):
    q = JobQueue(name)
    n = 0
    while (job := q.get()) is not None:
        q.record(job * job)
        n += 1
    q.detach()
    print(f"worker processed {n} jobs")


def demo(jobs=500, workers=3):
    name = f"shmlot-jobs-{uuid.uuid4().hex[:8]}"
    q = JobQueue(name)
    try:
        me = [sys.executable, __file__]
        procs = [subprocess.Popen(me + ["work", name]) for _ in range(workers)]
        procs.append(subprocess.Popen(me + ["produce", name, str(jobs)]))
        codes = [p.wait(timeout=120) for p in procs]
        done, total = q.stats()
        expected = sum(j * j for j in range(1, jobs + 1))
        print(f"jobs done: {done}/{jobs}, sum of results {total} (expected {expected})")
        return 0 if done == jobs and total == expected and not any(codes) else 1
    finally:
        q.detach()
        remove(name)


if __name__ == "__main__":
    cmd = sys.argv[1] if len(sys.argv) > 1 else "demo"
    if cmd == "produce":
        produce(sys.argv[2], int(sys.argv[3]))
    elif cmd == "work":
        work(sys.argv[2])
    elif cmd == "stats":
        stats(sys.argv[2])
    elif cmd == "remove":
        remove(sys.argv[2])
    else:
        sys.exit(demo())
