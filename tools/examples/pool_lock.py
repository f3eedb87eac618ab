"""shmlot.Lock as a drop-in for multiprocessing.Lock in a Pool, surviving killed workers.

The lock is handed to the workers through the Pool's initializer (pickled: an anonymous shmlot
object travels as a handle, with fork, spawn or forkserver alike), and the tasks use it the way
every multiprocessing user does: ``with lock:``. Unlike multiprocessing.Lock, a worker killed
while holding it does not deadlock the pool: the next worker's ``with lock:`` takes the lock over,
reports the death once with ``shmlot.OwnerDiedWarning``, runs its body and releases the lock.

Run ``python pool_lock.py [METHOD] [KILLS]``: first KILLS workers (default 2) are SIGKILLed while
they hold the lock, then four tasks append 500 numbers each to a shared file under the lock;
every task completes and every line comes out whole. (A task whose worker is killed is lost, as
with any multiprocessing Pool; the Pool starts a new worker in its place.)
"""
import multiprocessing as mp
import os
import signal
import sys
import tempfile
import time

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


def hold_forever(pid_path):
    """A task that takes the lock, says which process holds it, and never lets go."""
    with _lock:
        with open(pid_path, "w") as f:
            f.write(str(os.getpid()))
        time.sleep(3600)


def kill_holder(pool, pid_path, timeout=60):
    """Start hold_forever in a worker and SIGKILL that worker once it holds the lock."""
    pool.apply_async(hold_forever, (pid_path,))
    deadline = time.monotonic() + timeout
    while not (os.path.exists(pid_path) and os.path.getsize(pid_path)):
        if time.monotonic() > deadline:
            raise TimeoutError("no worker took the lock")
        time.sleep(0.01)
    with open(pid_path) as f:
        pid = int(f.read())
    os.unlink(pid_path)
    os.kill(pid, signal.SIGKILL)
    return pid


def main(method="spawn", kills=2, workers=4, per_task=500, timeout=120):
    lock = shmlot.Lock()
    fd, path = tempfile.mkstemp(prefix="shmlot-pool-")
    os.close(fd)
    pid_path = path + ".holder"
    try:
        with mp.get_context(method).Pool(workers, initializer=init, initargs=(lock,)) as pool:
            killed = [kill_holder(pool, pid_path) for _ in range(int(kills))]
            results = [pool.apply_async(append_lines, ((path, k * per_task, per_task),))
                       for k in range(workers)]
            done = sum(r.get(timeout=timeout) for r in results)
        with open(path) as f:
            lines = f.read().splitlines()
        whole = all(len(line) == 47 for line in lines)
        print(f"{len(killed)} workers killed holding the lock; {done} lines written, "
              f"{len(lines)} read, all whole: {whole}")
        return 0 if whole and len(lines) == done == workers * per_task else 1
    finally:
        os.unlink(path)
        if os.path.exists(pid_path):
            os.unlink(pid_path)


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
