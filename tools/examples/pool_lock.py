"""shmlot.Lock as a drop-in for multiprocessing.Lock in a Pool.

The lock is handed to the workers through the Pool's initializer (pickled: an anonymous shmlot
object travels as a handle, with fork, spawn or forkserver alike). Unlike multiprocessing.Lock,
a worker killed while holding it does not deadlock the pool: the next acquirer gets
``shmlot.OwnerDiedError`` with the lock held, repairs, and carries on.

Run ``python pool_lock.py``: four workers append 500 numbers each to a shared file under the
lock; every line comes out whole.
"""
import multiprocessing as mp
import os
import sys
import tempfile

import shmlot

_lock = None


def init(lock):
    global _lock
    _lock = lock


def append_lines(args):
    path, start, count = args
    for i in range(start, start + count):
        with _lock:  # the same `with lock:` as with multiprocessing.Lock
            with open(path, "a") as f:
                f.write(f"{i:06d} {'x' * 40}\n")
    return count


def main(method="spawn", workers=4, per_task=500):
    lock = shmlot.Lock()
    fd, path = tempfile.mkstemp(prefix="shmlot-pool-")
    os.close(fd)
    try:
        with mp.get_context(method).Pool(workers, initializer=init, initargs=(lock,)) as pool:
            done = sum(pool.map(append_lines,
                                [(path, k * per_task, per_task) for k in range(workers)]))
        with open(path) as f:
            lines = f.read().splitlines()
        whole = all(len(line) == 47 for line in lines)
        print(f"{done} lines written, {len(lines)} read, all whole: {whole}")
        return 0 if whole and len(lines) == done == workers * per_task else 1
    finally:
        os.unlink(path)


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:2]))
