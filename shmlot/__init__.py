"""shmlot: a parking lot in shared memory, and inter-process primitives built on it.

The low-level API (SPEC section 2) is ``ParkingLot`` and its operations; the module-level
``park``, ``unpark_one``, ... act on ``default_lot()``.
"""
from ._results import (DEFAULT_PARK_TOKEN, DEFAULT_UNPARK_TOKEN, FilterOp, ParkResult,
                       RequeueOp, UnparkResult)
from .errors import LotCorruptError, LotFullError, LotNotFoundError, OwnerDiedError
from .keys import key_for
from .lot import ParkingLot, default_lot

__version__ = "0.1.0"


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
