"""What the stress coordinators (tools/torture.py, tools/soak.py) share: a shared-memory segment
of u64 counters that the coordinator and its worker processes update, and the two ways a
coordinator and its workers end together. Imported as a sibling module: each script runs from
tools/, which Python puts first on sys.path."""
import json
import mmap
import os
import signal

import _posixshmem

from shmlot import _fast


class StatsSegment:
    """A POSIX shared-memory segment of `size` bytes read as u64 atomics by word index."""

    def __init__(self, name, size, create=False):
        flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0)
        fd = _posixshmem.shm_open("/" + name, flags, mode=0o600)
        try:
            if create:
                os.ftruncate(fd, size)
            self.buf = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self.name = name
        self._w = {}

    def __getitem__(self, i):
        a = self._w.get(i)
        if a is None:
            a = self._w[i] = _fast.AtomicU64(self.buf, 8 * i)
        return a

    def get(self, i):
        return self[i].load()

    def add(self, i, n=1):
        return self[i].fetch_add(n & 0xFFFFFFFFFFFFFFFF)

    def unlink(self):
        try:
            _posixshmem.shm_unlink("/" + self.name)
        except FileNotFoundError:
            pass


def die_with_parent():
    """A worker or the zygote must not outlive the process that started it (a coordinator killed
    by a timeout would otherwise leave its workers hammering the lot forever)."""
    import ctypes
    parent = os.getppid()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent or parent == 1:
        os._exit(1)


def on_termination_signals_exit():
    """SIGTERM/SIGHUP unwind the coordinator (its finally kills the workers and unlinks the
    lot) instead of killing it on the spot."""
    def stop(signum, frame):
        raise SystemExit(128 + signum)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)


def report(summary, hidden=("log",)):
    """Print a coordinator's summary (its fields but ``hidden``, the log, then OK or FAIL with
    the failures), then the whole summary as one JSON line; return the exit status."""
    for k, v in summary.items():
        if k not in hidden:
            print(f"{k:>24}: {v}")
    for line in summary["log"]:
        print(f"    log: {line}")
    print("FAIL: " + "; ".join(summary["failures"]) if summary["failures"] else "OK")
    print(json.dumps(summary))
    return 1 if summary["failures"] else 0

