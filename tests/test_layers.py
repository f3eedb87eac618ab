"""The layers hold: the primitives reach the native core only through shmlot/_engine.py.

Read from the sources: no primitive module imports ``shmlot._core`` or calls a private method of
a ``ParkingLot``, and a Condition gets its own lock from the lock's class (``RLock.on_place``),
never by building one behind its constructor."""
import ast
import math
import pathlib
import time

import pytest

import shmlot
from shmlot import _engine

PKG = pathlib.Path(shmlot.__file__).parent
PRIMITIVES = ["locks", "condition", "semaphore", "event", "barrier", "rwlock", "aio", "context",
              "_placement", "_base", "_sleep"]


def _tree(module):
    return ast.parse((PKG / f"{module}.py").read_text())


@pytest.mark.parametrize("module", PRIMITIVES)
def test_primitives_do_not_import_the_core(module):
    imported = set()
    for node in ast.walk(_tree(module)):
        if isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
            imported.update(f"{node.module}.{a.name}" if node.module else a.name
                            for a in node.names)
        elif isinstance(node, ast.Import):
            imported.update(a.name for a in node.names)
    assert not {m for m in imported if m == "_core" or m.endswith("._core")}, imported


@pytest.mark.parametrize("module", PRIMITIVES)
def test_primitives_use_no_private_name_of_a_lot(module):
    """``<something>.lot._x`` or ``lot._x``: a private name of a ParkingLot handle."""
    found = []
    for node in ast.walk(_tree(module)):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") \
                and not node.attr.startswith("__"):
            owner = node.value
            name = owner.attr if isinstance(owner, ast.Attribute) else \
                owner.id if isinstance(owner, ast.Name) else None
            if name in ("lot", "_lot"):
                found.append(f"line {node.lineno}: {name}.{node.attr}")
    assert not found, found


def test_condition_builds_no_lock_behind_its_constructor():
    for node in ast.walk(_tree("condition")):
        if isinstance(node, ast.Attribute) and node.attr in ("__new__", "_init_place"):
            owner = node.value
            name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", "")
            assert name not in ("Lock", "RLock", "lock"), node.lineno


def test_a_conditions_own_lock_is_an_rlock_on_its_record(lot):
    cond = shmlot.Condition(lot=lot)
    lock = cond._lock
    assert type(lock) is shmlot.RLock and lock.key == cond._place.key
    with cond:
        assert lock._is_owned() and lock._recursion_count() == 1
        assert cond.wait(0.01) is False
    assert not lock.locked()


# ---- one deadline form, by threading's rules ------------------------------------------------

def test_wait_deadline_follows_threadings_wait_rules(lot):
    assert _engine.wait_deadline(None) == _engine.NO_DEADLINE
    for expired in (0, 0.0, -1, -0.5, math.nan, False):
        assert _engine.wait_deadline(expired) == _engine.EXPIRED, expired
    before = time.monotonic_ns()
    d = _engine.wait_deadline(2)
    assert before + 1_900_000_000 <= d <= time.monotonic_ns() + 2_000_000_000
    assert _engine.wait_deadline(True) > _engine.EXPIRED  # a bool is 0 or 1 second
    with pytest.raises(TypeError):
        _engine.wait_deadline("1")
    # one conversion: the one Condition.wait's C path (condwait.c) makes
    from shmlot import _fast
    assert _engine.wait_deadline is _fast.wait_deadline
    cond = shmlot.Condition(lot=lot)
    with cond:
        with pytest.raises(TypeError, match="timeout must be a number or None, not str"):
            cond.wait("1")


def test_acquire_deadline_follows_threadings_acquire_rules():
    assert _engine.acquire_deadline(True, -1) == _engine.NO_DEADLINE
    assert _engine.acquire_deadline(True, None) == _engine.NO_DEADLINE
    assert _engine.acquire_deadline(False, -1) == _engine.EXPIRED
    assert _engine.acquire_deadline(True, 0) == _engine.EXPIRED
    assert _engine.passed(_engine.EXPIRED) and not _engine.passed(_engine.NO_DEADLINE)
    for bad, exc in ((-2, ValueError), (math.nan, ValueError), (True, TypeError),
                     ("1", TypeError)):
        with pytest.raises(exc):
            _engine.acquire_deadline(True, bad)
    with pytest.raises(ValueError):
        _engine.acquire_deadline(False, 1)
