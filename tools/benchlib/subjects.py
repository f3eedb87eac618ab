"""The things measured: shmlot's primitives and their peers, by role (lock, ping-pong pair,
condition). A Subject's make() runs in the parent and returns a picklable handle; open(handle)
runs in any process (a spawn child too: the open functions need no Env)."""
import fcntl
import os
import threading

from .common import Unavailable
from .env import posix_ipc


def _identity(x):
    return x


def _noop(_):
    pass


def posix_open(name):
    return posix_ipc().Semaphore(name)


def rmfile(path):
    try:
        os.unlink(path)
    except OSError:
        pass


class FlockLock:
    """fcntl.flock on a private open file description (one per process), as a lock object."""

    def __init__(self, path):
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)

    def acquire(self):
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return True

    def release(self):
        fcntl.flock(self.fd, fcntl.LOCK_UN)

    def __enter__(self):
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.fd, fcntl.LOCK_UN)

    def close(self):
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    __del__ = close


NO_LOCK = "no lock (scheduler)"


class NoLock:
    """acquire() and release() that do nothing: the contended loop without a lock, whose slowest
    process's share is what the scheduler alone gives the processes (the reference for a lock's
    "slowest process" figure)."""

    def acquire(self):
        return True

    def release(self):
        pass


def filelock_open(path):
    try:
        import filelock
    except ImportError:
        raise Unavailable("filelock not installed") from None
    return filelock.FileLock(path)


class Subject:
    """make() -> handle (parent); open(handle) -> usable object (any process);
    cleanup(handle) (parent). `style` says how a ping-pong pair is driven ("sem" or "event")."""

    def __init__(self, name, family, make=None, open=_identity, cleanup=_noop,
                 cross_process=True, style=None):
        self.name, self.family = name, family
        self.make, self.open, self.cleanup = make, open, cleanup
        self.cross_process, self.style = cross_process, style


def _needs_filelock(env):
    def make():
        try:
            import filelock  # noqa: F401
        except ImportError:
            raise Unavailable("filelock not installed") from None
        return env.tmpfile()
    return make


def lock_subjects(env=None):
    """Lock-shaped subjects (acquire/release/with). With env=None only open() is usable."""
    e = env
    return {s.name: s for s in [
        Subject("shmlot.Lock", "shmlot", lambda: e.shmlot_kind("Lock")()),
        Subject("shmlot.RLock", "shmlot", lambda: e.shmlot_kind("RLock")()),
        Subject("mp.Lock", "mp", lambda: e.ctx.Lock()),
        Subject("mp.RLock", "mp", lambda: e.ctx.RLock()),
        Subject("threading.Lock", "threading", threading.Lock, cross_process=False),
        Subject("posix_ipc.Semaphore", "posix_ipc", lambda: e.posix_make(1), posix_open,
                lambda h: e.posix_cleanup(h)),
        Subject("fcntl.flock", "fcntl", lambda: e.tmpfile(), FlockLock, rmfile),
        Subject("filelock.FileLock", "filelock", _needs_filelock(e), filelock_open, rmfile),
    ]}


def contended_subjects(env=None):
    """The lock subjects that work across processes, and the loop with no lock at all."""
    subjects = {n: s for n, s in lock_subjects(env).items() if s.cross_process}
    subjects[NO_LOCK] = Subject(NO_LOCK, "floor", lambda: None, lambda _: NoLock())
    return subjects


def pingpong_subjects(env=None):
    """Subjects for a two-process hand-off: a pair of semaphores or a pair of events."""
    e = env
    return {s.name: s for s in [
        Subject("shmlot.Semaphore", "shmlot", lambda: e.shmlot_kind("Semaphore")(0), style="sem"),
        Subject("shmlot.Event", "shmlot", lambda: e.shmlot_kind("Event")(), style="event"),
        Subject("mp.Semaphore", "mp", lambda: e.ctx.Semaphore(0), style="sem"),
        Subject("mp.Event", "mp", lambda: e.ctx.Event(), style="event"),
        Subject("posix_ipc.Semaphore", "posix_ipc", lambda: e.posix_make(0), posix_open,
                lambda h: e.posix_cleanup(h), style="sem"),
    ]}


def condition_subjects(env=None):
    e = env
    return {s.name: s for s in [
        Subject("shmlot.Condition", "shmlot", lambda: e.shmlot_kind("Condition")()),
        Subject("mp.Condition", "mp", lambda: e.ctx.Condition()),
    ]}
