"""shmlot: a parking lot in shared memory, and inter-process primitives built on it.

The low-level API is ``ParkingLot`` and its operations; the module-level
``park``, ``unpark_one``, ... act on ``default_lot()``. The primitives are
drop-in replacements for ``threading``'s that also work across processes.
"""
from threading import BrokenBarrierError

from ._results import (DEFAULT_PARK_TOKEN, DEFAULT_UNPARK_TOKEN, FilterOp, ParkResult,
                       RequeueOp, UnparkResult)
from .atomics import AtomicU32, AtomicU64
from .barrier import Barrier
from .condition import Condition
from .context import get_context
from .errors import (LotCorruptError, LotFullError, LotNotFoundError, LotUnlinkedError,
                     ObjectGoneError, OwnerDiedError, OwnerDiedWarning)
from .event import Event
from .keys import key_for
from .locks import Lock, RLock
from .lot import ParkingLot, default_lot
from .rwlock import RWLock
from .semaphore import BoundedSemaphore, Semaphore
from .spinwait import SpinWait
from . import deadlock  # noqa: E402  (shmlot.deadlock.check() with a plain ``import shmlot``)

__version__ = "0.1.0"

__all__ = [
    "ParkingLot", "default_lot", "park", "unpark_one", "unpark_all", "unpark_filter",
    "unpark_requeue", "unlink_object", "ParkResult", "UnparkResult", "FilterOp", "RequeueOp",
    "DEFAULT_PARK_TOKEN", "DEFAULT_UNPARK_TOKEN", "key_for", "SpinWait", "AtomicU32",
    "AtomicU64", "Lock", "RLock", "Condition", "Semaphore", "BoundedSemaphore", "Event",
    "Barrier", "BrokenBarrierError", "RWLock", "LotNotFoundError", "LotUnlinkedError",
    "LotCorruptError", "LotFullError", "OwnerDiedError", "OwnerDiedWarning", "ObjectGoneError",
    "deadlock", "get_context",
]


def park(key, validate=None, before_sleep=None, timed_out=None, park_token=DEFAULT_PARK_TOKEN,
         timeout=None):
    """``default_lot().park(...)``."""
    return default_lot().park(key, validate, before_sleep, timed_out, park_token, timeout)


def unpark_one(key, callback=None):
    """``default_lot().unpark_one(...)``."""
    return default_lot().unpark_one(key, callback)


def unpark_all(key, unpark_token=DEFAULT_UNPARK_TOKEN):
    """``default_lot().unpark_all(...)``."""
    return default_lot().unpark_all(key, unpark_token)


def unpark_filter(key, filter, callback=None):
    """``default_lot().unpark_filter(...)``."""
    return default_lot().unpark_filter(key, filter, callback)


def unpark_requeue(key_from, key_to, validate, callback=None):
    """``default_lot().unpark_requeue(...)``."""
    return default_lot().unpark_requeue(key_from, key_to, validate, callback)


def unlink_object(name, lot=None):
    """Remove the named object ``name`` from ``lot`` (default lot). Handles already open keep
    working; the next ``Kind(name=...)`` creates a new one. KeyError if there is no such name."""
    (lot or default_lot()).unlink_object(name)
