"""``shmlot.get_context()``: a multiprocessing context whose locks are shmlot's.

``shmlot.Lock`` and friends follow ``threading`` exactly; multiprocessing's differ in small ways
that code written for multiprocessing relies on: ``acquire(block=True, timeout=None)``, a
timeout that a non-blocking call ignores (no ValueError), a negative timeout meaning 0,
``Semaphore.get_value()``, ValueError for a Lock released too often, AssertionError for an RLock
released by a non-owner, and multiprocessing's reprs. The classes here are thin subclasses of
shmlot's with those call forms.

The context (a subclass of the stdlib context for its start method) returns them from
``Lock()``, ``RLock()``, ``Semaphore()`` and ``BoundedSemaphore()``. ``Condition()``, ``Event()``
and ``Barrier()`` are multiprocessing's own classes, which the stdlib builds from the context's
locks and semaphores, as are ``Queue()``, ``JoinableQueue()``, ``SimpleQueue()``, ``Value()``,
``Array()`` and ``Pool()``: all of them take their locks from the context, so they use shmlot's.

Owner death: code written for multiprocessing does not expect an exception from ``acquire()``,
so these classes report a dead holder with ``OwnerDiedWarning`` from *every* acquire (explicit
or ``with``), after taking the lock over; a warning turned into an error releases the lock
before it propagates.
"""
import multiprocessing
import os
import threading
from multiprocessing import context as _mpctx
from multiprocessing import process as _mpprocess
from multiprocessing.synchronize import SEM_VALUE_MAX

from . import locks as _locks
from . import semaphore as _sem
from .errors import OwnerDiedError

__all__ = ["get_context", "Lock", "RLock", "Semaphore", "BoundedSemaphore"]

_TOO_MANY = "semaphore or lock released too many times"


def _mp_timeout(block, timeout):
    """multiprocessing's (block, timeout) as threading's (blocking, timeout) arguments."""
    if not block:
        return (False,)
    if timeout is None:
        return (True,)
    timeout = float(timeout)
    if timeout != timeout:
        raise ValueError("Invalid value NaN (not a number)")
    return (True, min(max(timeout, 0.0), threading.TIMEOUT_MAX))


def _owner_name():
    """multiprocessing's name for the calling thread: the process name, "|thread" unless main."""
    name = _mpprocess.current_process().name
    if threading.current_thread().name != "MainThread":
        name += "|" + threading.current_thread().name
    return name


class _SemLockView:
    """What multiprocessing's Condition, JoinableQueue and Queue read through ``._semlock``."""
    __slots__ = ("_obj",)

    def __init__(self, obj):
        self._obj = obj

    def _is_mine(self):
        return self._obj._mp_is_mine()

    def _count(self):
        return self._obj._mp_count()

    def _get_value(self):
        return self._obj._mp_value()

    def _is_zero(self):
        return self._obj._mp_value() == 0

    @property
    def maxvalue(self):
        return self._obj._mp_maxvalue()


class _MpWordLock:
    """Lock/RLock with multiprocessing's call forms (mixed in before shmlot's class)."""

    def acquire(self, block=True, timeout=None):
        """Acquire the lock, as multiprocessing's does: ``block=False`` ignores ``timeout``; a
        ``timeout`` (seconds, negative meaning 0) returns False when it passes."""
        return super().acquire(*_mp_timeout(block, timeout))

    def _acquire_slow(self, blocking, timeout):
        try:
            return super()._acquire_slow(blocking, timeout)
        except OwnerDiedError as exc:
            _locks.warn_owner_died(exc, self._release_handed_off, stacklevel=4)
            return True

    @property
    def _semlock(self):
        return _SemLockView(self)

    def _mp_is_mine(self):
        return self._is_owned()

    def _mp_maxvalue(self):
        return 1

    def _mp_value(self):
        return 0 if self.locked() else 1

    def _owner_repr(self):
        """None, the caller's name, SomeOtherThread (this process) or SomeOtherProcess."""
        owner = self._owner()
        if owner is None:
            return "None"
        if self._is_owned():
            return _owner_name()
        return "SomeOtherThread" if owner[0] == os.getpid() else "SomeOtherProcess"


class Lock(_MpWordLock, _locks.Lock):
    """``multiprocessing.Lock`` on shmlot: ``acquire(block=True, timeout=None)``, ``release()``
    (ValueError when not locked; any thread or process may release, as with multiprocessing),
    ``with``. A holder that dies is reported by ``OwnerDiedWarning``, and the lock is taken."""

    def release(self):
        """Release the lock (held by anyone); ValueError if it is not locked."""
        try:
            return super().release()
        except RuntimeError:
            if not self.locked():
                raise ValueError(_TOO_MANY) from None
            raise

    def _mp_count(self):
        return 1 if self._is_owned() else 0

    def __repr__(self):
        return f"<{type(self).__name__}(owner={self._owner_repr()})>"


class RLock(_MpWordLock, _locks.RLock):
    """``multiprocessing.RLock`` on shmlot (see ``Lock``); ``release()`` by a thread that does
    not hold it raises AssertionError, as multiprocessing's does."""

    def release(self):
        """Release one level; AssertionError if the caller does not hold the lock."""
        if not self._is_owned():
            raise AssertionError("attempt to release recursive lock not owned by thread")
        return super().release()

    def _mp_count(self):
        return self._count() if self._is_owned() else 0

    def __repr__(self):
        owner = self._owner_repr()
        if owner == "None":
            count = 0
        elif self._is_owned():
            count = self._count()
        else:
            count = "nonzero"
        return f"<{type(self).__name__}({owner}, {count})>"


class Semaphore(_sem.Semaphore):
    """``multiprocessing.Semaphore(value=1)`` on shmlot: ``acquire(block=True, timeout=None)``,
    ``release()``, ``get_value()``."""

    def acquire(self, block=True, timeout=None):
        """Take one unit, as multiprocessing's does (``block=False`` ignores ``timeout``)."""
        args = _mp_timeout(block, timeout)
        return super().acquire(*args) if len(args) == 1 else super().acquire(True, args[1])

    def __enter__(self):
        return self.acquire()

    def release(self):
        """Add one unit, waking one waiter."""
        super().release()

    def get_value(self):
        """The semaphore's value."""
        return self._value()

    @property
    def _semlock(self):
        return _SemLockView(self)

    def _mp_value(self):
        return self._value()

    def _mp_maxvalue(self):
        return SEM_VALUE_MAX

    def __repr__(self):
        return f"<{type(self).__name__}(value={self._value()})>"


class BoundedSemaphore(Semaphore, _sem.BoundedSemaphore):
    """``multiprocessing.BoundedSemaphore(value=1)`` on shmlot: ``release()`` beyond the
    initial value raises ValueError."""

    def release(self):
        try:
            super().release()
        except ValueError:
            raise ValueError(_TOO_MANY) from None

    def _mp_maxvalue(self):
        return self._words[2].load()

    def __repr__(self):
        return (f"<{type(self).__name__}(value={self._value()}, "
                f"maxvalue={self._words[2].load()})>")


class _ShmlotContext:
    """The part shared by the three context classes (mixed in before the stdlib's)."""
    _lot = None

    def Lock(self):
        """A shmlot ``Lock`` with multiprocessing's call forms."""
        return Lock(lot=self._lot)

    def RLock(self):
        """A shmlot ``RLock`` with multiprocessing's call forms."""
        return RLock(lot=self._lot)

    def Semaphore(self, value=1):
        """A shmlot ``Semaphore`` with multiprocessing's call forms."""
        return Semaphore(value, lot=self._lot)

    def BoundedSemaphore(self, value=1):
        """A shmlot ``BoundedSemaphore`` with multiprocessing's call forms."""
        return BoundedSemaphore(value, lot=self._lot)

    def get_context(self, method=None):
        if method is None:
            return self
        return get_context(method, lot=self._lot)

    def __repr__(self):
        return f"<shmlot context {self._name!r}>"


def _context_class(base):
    return type(f"Shmlot{base.__name__}", (_ShmlotContext, base), {"__module__": __name__})


_CLASSES = {name: _context_class(type(ctx))
            for name, ctx in _mpctx._concrete_contexts.items()}
_contexts = {}


def _default_method():
    method = multiprocessing.get_start_method(allow_none=True)
    if method is None:  # not fixed yet: what multiprocessing would pick, without fixing it
        method = _mpctx._default_context._default_context._name
    return method


def get_context(method=None, *, lot=None):
    """A multiprocessing context for start method ``method`` ("fork", "spawn", "forkserver";
    None: multiprocessing's current default) whose ``Lock``, ``RLock``, ``Semaphore`` and
    ``BoundedSemaphore`` are shmlot's with multiprocessing's call forms, so that its
    ``Condition``, ``Event``, ``Barrier``, ``Queue``, ``JoinableQueue``, ``SimpleQueue``,
    ``Value``, ``Array`` and ``Pool`` use them inside. ``lot``: the lot its objects live in
    (default: the default lot)."""
    if method is None:
        method = _default_method()
    if method not in _CLASSES:
        raise ValueError(f"cannot find context for {method!r}")
    key = (method, None if lot is None else lot.name)
    ctx = _contexts.get(key)
    if ctx is None:
        ctx = _CLASSES[method]()
        ctx._lot = lot
        _contexts[key] = ctx
    return ctx
