"""CPython's behavioural tests for threading's primitives (Lib/test/lock_tests.py, vendored as
lock_tests_shmlot.py) run against shmlot's classes, on both waiter backends, exactly as CPython's
test_threading runs them against threading's.

Skipped, each by name with its reason: the tests that check the repr text (shmlot's reprs name the
object and its lot state instead), and the fork re-init internals (``_at_fork_reinit``, an
``Event._cond``): shmlot objects live in shared memory and are *meant* to survive fork unchanged.
Nothing else is skipped.
"""
import unittest

import pytest

import shmlot

import lock_tests_shmlot as lt
from helpers.lots import BACKENDS, fresh_default_lot

pytestmark = pytest.mark.timeout(120)

REPR = "repr text: shmlot's reprs show the object's name and shared state, not threading's format"
FORK_REINIT = ("fork re-init internals: shmlot objects live in shared memory and must survive "
               "fork as they are; there is no _at_fork_reinit (or Event._cond) to reset")
NO_RECURSION_COUNT = "Condition does not expose _recursion_count() (as in CPython's test_threading)"


def _skip(reason):
    @unittest.skip(reason)
    def test(self):
        pass
    return test


class _OnBackend:
    """Each test class gets its own default lot on its backend for its whole run."""
    waiter = None

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls._env = fresh_default_lot(cls.waiter)
        cls.lot = cls._env.__enter__()

    @classmethod
    def tearDownClass(cls):
        cls._env.__exit__(None, None, None)
        super().tearDownClass()


class _LockTests(lt.LockTests):
    __test__ = False  # only the per-backend subclasses below run
    locktype = staticmethod(shmlot.Lock)
    test_repr = _skip(REPR)
    test_locked_repr = _skip(REPR)
    test_at_fork_reinit = _skip(FORK_REINIT)


class _RLockTests(lt.RLockTests):
    __test__ = False  # only the per-backend subclasses below run
    locktype = staticmethod(shmlot.RLock)
    test_repr = _skip(REPR)
    test_locked_repr = _skip(REPR)


class _ConditionAsRLockTests(lt.RLockTests):
    __test__ = False  # only the per-backend subclasses below run
    # a Condition can be used as an RLock (CPython's test_threading runs this too)
    locktype = staticmethod(shmlot.Condition)
    test_repr = _skip(REPR)
    test_locked_repr = _skip(REPR)
    test_recursion_count = _skip(NO_RECURSION_COUNT)


class _EventTests(lt.EventTests):
    __test__ = False  # only the per-backend subclasses below run
    eventtype = staticmethod(shmlot.Event)
    test_repr = _skip(REPR)
    test_at_fork_reinit = _skip(FORK_REINIT)


class _ConditionTests(lt.ConditionTests):
    __test__ = False  # only the per-backend subclasses below run
    condtype = staticmethod(shmlot.Condition)
    condlocktype = staticmethod(shmlot.Lock)


class _SemaphoreTests(lt.SemaphoreTests):
    __test__ = False  # only the per-backend subclasses below run
    semtype = staticmethod(shmlot.Semaphore)
    test_repr = _skip(REPR)


class _BoundedSemaphoreTests(lt.BoundedSemaphoreTests):
    __test__ = False  # only the per-backend subclasses below run
    semtype = staticmethod(shmlot.BoundedSemaphore)
    test_repr = _skip(REPR)


class _BarrierTests(lt.BarrierTests):
    __test__ = False  # only the per-backend subclasses below run
    barriertype = staticmethod(shmlot.Barrier)
    test_repr = _skip(REPR)


# one concrete TestCase per (suite, backend): LockTests_futex, LockTests_semaphore, ...
for _base in (_LockTests, _RLockTests, _ConditionAsRLockTests, _EventTests, _ConditionTests,
              _SemaphoreTests, _BoundedSemaphoreTests, _BarrierTests):
    for _waiter in BACKENDS:
        _name = f"{_base.__name__.lstrip('_')}_{_waiter}"
        globals()[_name] = type(_name, (_OnBackend, _base), {"waiter": _waiter, "__test__": True,
                                                              "__module__": __name__})
del _base, _waiter, _name
