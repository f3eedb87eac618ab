"""CPython's own multiprocessing tests (Lib/test/_test_multiprocessing.py, the stdlib's ``test``
package of the running interpreter) run against ``shmlot.get_context(method)`` for fork, spawn
and forkserver, the way CPython's test_multiprocessing_* run them against multiprocessing.

The classes run: the synchronization primitives (_TestLock, _TestSemaphore, _TestCondition,
_TestEvent, _TestBarrier), shared values (_TestValue, _TestArray: their locks come from the
context) and the queues (_TestQueue, TestSimpleQueue: Queue, JoinableQueue and SimpleQueue take
their locks and semaphores from the context). Each runs in a default lot of its own.

Nothing is skipped: every test of these classes passes, as it does with stock multiprocessing
(``SHMLOT_MP_STOCK=1`` runs the same selection against stock multiprocessing, to compare). A test
that checks one of multiprocessing's internals rather than behaviour would be listed in SKIPS,
by name, with the reason.

The stdlib's ``test`` package is not installed with every Python (some distributions split it
out): without it this module is skipped.
"""
import os
import unittest

import pytest

import shmlot

from helpers.lots import fresh_default_lot

tm = pytest.importorskip("test._test_multiprocessing",
                         reason="this Python has no stdlib test package")
import multiprocessing  # noqa: E402

pytestmark = pytest.mark.timeout(300)

STOCK = os.environ.get("SHMLOT_MP_STOCK") == "1"
METHODS = ("fork", "spawn", "forkserver")
CLASSES = ("_TestLock", "_TestSemaphore", "_TestCondition", "_TestEvent", "_TestBarrier",
           "_TestValue", "_TestArray", "_TestQueue")
PLAIN_CLASSES = ("TestSimpleQueue",)  # unittest.TestCase classes that take no mixin

# "class.test" -> why it is not run against shmlot's context (none so far)
SKIPS = {}


def _factories(ctx):
    """The ProcessesMixin attributes, taken from ``ctx`` instead of the multiprocessing module."""
    names = ("Pool", "Pipe", "Queue", "JoinableQueue", "Lock", "RLock", "Semaphore",
             "BoundedSemaphore", "Condition", "Event", "Barrier", "Value", "Array", "RawValue",
             "RawArray", "current_process", "parent_process", "active_children",
             "set_executable")
    attrs = {n: staticmethod(getattr(ctx, n)) for n in names}
    attrs["Process"] = ctx.Process
    return attrs


class _InOwnLot:
    """A default lot of the class's own, and (as CPython's setUpModule does) the class's start
    method as multiprocessing's global one, which a few helpers of the tests use directly."""
    start_method = None

    @classmethod
    def setUpClass(cls):
        cls._env = fresh_default_lot("futex")
        cls._env.__enter__()
        cls._saved_method = multiprocessing.get_start_method(allow_none=True)
        multiprocessing.set_start_method(cls.start_method, force=True)
        super().setUpClass()

    @classmethod
    def tearDownClass(cls):
        try:
            super().tearDownClass()
        finally:
            multiprocessing.set_start_method(cls._saved_method, force=True)
            cls._env.__exit__(None, None, None)


def _skip(reason):
    @unittest.skip(reason)
    def test(self):
        pass
    return test


def _install():
    for method in METHODS:
        ctx = multiprocessing.get_context(method) if STOCK else shmlot.get_context(method)
        mixin = type(f"{method}Mixin", (tm.ProcessesMixin,), _factories(ctx))
        for name in CLASSES:
            base = getattr(tm, name, None)
            if base is None:
                continue
            new = f"Test{method.capitalize()}{name[5:]}"
            skips = {t: _skip(SKIPS[f"{name}.{t}"]) for t in dir(base)
                     if f"{name}.{t}" in SKIPS and not STOCK}
            globals()[new] = type(new, (_InOwnLot, base, mixin, unittest.TestCase),
                                  dict(skips, __module__=__name__, __qualname__=new,
                                       start_method=method))
        for name in PLAIN_CLASSES:
            base = getattr(tm, name, None)
            if base is None:
                continue
            new = f"Test{method.capitalize()}{name[4:]}"
            globals()[new] = type(new, (_InOwnLot, _CtxAsModule(ctx, method), base),
                                  {"__module__": __name__, "__qualname__": new,
                                   "start_method": method})


def _CtxAsModule(ctx, method):
    """TestSimpleQueue calls multiprocessing.SimpleQueue(), .Event() and .Process() itself:
    for the class's run, the module's names are the context's."""
    names = ("SimpleQueue", "Event", "Process")

    class Mixin:
        @classmethod
        def setUpClass(cls):
            cls._saved = {n: getattr(multiprocessing, n) for n in names}
            for n in names:
                setattr(multiprocessing, n, getattr(ctx, n))
            super().setUpClass()

        @classmethod
        def tearDownClass(cls):
            try:
                super().tearDownClass()
            finally:
                for n, v in cls._saved.items():
                    setattr(multiprocessing, n, v)
    return Mixin


_install()
