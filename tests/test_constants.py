"""The constants C and Python share are defined once, in shmlot/_native/api.h, and exported: the
cffi module has each as lib.SL_NAME, the GIL-holding _fast module the ones its paths use as NAME.
cffi itself refuses to build when api.h's cdef part and the compiled C disagree; these tests
check that the two modules agree, that every shared name is exported, and that the Python names
that still mirror one hold its value."""
import importlib

import pytest

from shmlot import _fast
from shmlot._core import ffi, lib

# Every name the C core shares with Python, the tests and the tools.
SHARED = [
    "MAGIC", "VERSION", "HEADER_SIZE", "NAME_MAX",
    "DEFAULT_BUCKETS", "DEFAULT_SLOTS", "DEFAULT_OBJECTS", "DEFAULT_HOLDS", "ATTACH_WAIT_NS",
    "SLICE_MAIN_NS", "SLICE_OTHER_NS", "OWNER_POLL_NS", "SPLIT_CHECK_NS", "DEFAULT_CHECK_NS",
    "REGISTRY_STUCK_NS", "NO_SLOT",
    "SLOT_FREE", "SLOT_ALLOCATED", "SLOT_QUEUED", "SLOT_UNPARKED",
    "WAIT_UNPARKED", "WAIT_SLEEP", "WAIT_AHEAD",
    "SLEEP_UNPARKED", "SLEEP_TIMED_OUT", "SLEEP_INTERRUPTED",
    "TOKEN_NORMAL", "TOKEN_HANDOFF", "TOKEN_READ_GRANT", "TOKEN_BURST", "TOKEN_AIO",
    "LOCKED_BIT", "PARKED_BIT", "FLAG_MASK", "PID_SHIFT", "TID_SHIFT", "START_SHIFT", "ID_MASK",
    "START_MASK", "LOCK_SIZE", "RLOCK_SIZE", "RLOCK_COUNT_OFFSET",
    "EVENT_FLAG", "EVENT_GEN_ONE", "EVENT_SIZE", "RW_READER", "RW_READ_PHASE",
    "HOLD_COUNTED", "HOLD_REF", "HOLD_READ", "HOLD_WRITE_WAIT", "HOLD_BARRIER", "HOLD_PERMIT",
    "HOLD_RESOURCE",
    "WAITER_FUTEX", "WAITER_SEMAPHORE",
    "PARK_UNPARKED", "PARK_INVALID", "PARK_TIMED_OUT", "PARK_GONE", "PARK_DONE",
]

# What _fast exports: the names the GIL-holding paths use.
FAST = ["LOCKED_BIT", "PARKED_BIT", "FLAG_MASK", "PID_SHIFT", "TID_SHIFT", "START_SHIFT",
        "ID_MASK", "START_MASK", "LOCK_SIZE", "RLOCK_SIZE", "RLOCK_COUNT_OFFSET", "EVENT_FLAG",
        "EVENT_GEN_ONE", "EVENT_SIZE", "TOKEN_NORMAL", "TOKEN_HANDOFF", "TOKEN_BURST", "NO_SLOT",
        "SLICE_MAIN_NS", "SLICE_OTHER_NS", "OWNER_POLL_NS"]


@pytest.mark.parametrize("name", SHARED)
def test_the_core_exports_every_shared_constant(name):
    assert isinstance(getattr(lib, "SL_" + name), int)


@pytest.mark.parametrize("name", FAST)
def test_fast_exports_the_same_values_as_the_core(name):
    assert getattr(_fast, name) == getattr(lib, "SL_" + name)


def test_the_constants_are_consistent_with_each_other():
    assert lib.SL_FLAG_MASK == lib.SL_LOCKED_BIT | lib.SL_PARKED_BIT
    assert lib.SL_PID_SHIFT == 2 and lib.SL_TID_SHIFT - lib.SL_PID_SHIFT == 22
    assert lib.SL_START_SHIFT + 18 == 64 and lib.SL_START_MASK == (1 << 18) - 1
    assert lib.SL_ID_MASK == (1 << 22) - 1
    assert lib.SL_RLOCK_COUNT_OFFSET == lib.SL_LOCK_SIZE < lib.SL_RLOCK_SIZE
    assert lib.SL_NO_SLOT == 2**32 - 1
    for mode in ("READ", "WRITE_WAIT", "BARRIER", "PERMIT"):
        assert getattr(lib, "SL_HOLD_" + mode) & lib.SL_HOLD_COUNTED
    assert not lib.SL_HOLD_RESOURCE & (lib.SL_HOLD_COUNTED | lib.SL_HOLD_REF)
    modes = [getattr(lib, n) for n in dir(lib) if n.startswith("SL_HOLD_")]
    assert len(set(modes)) == len(modes)
    states = [lib.SL_SLOT_FREE, lib.SL_SLOT_ALLOCATED, lib.SL_SLOT_QUEUED, lib.SL_SLOT_UNPARKED]
    assert states == [0, 1, 2, 3]
    assert lib.SL_SLICE_MAIN_NS < lib.SL_OWNER_POLL_NS <= lib.SL_SLICE_OTHER_NS


def test_the_layout_comes_from_the_header():
    assert ffi.sizeof("sl_header") <= lib.SL_HEADER_SIZE
    assert ffi.offsetof("sl_header", "magic") == 0
    assert ffi.sizeof("sl_ilock") == 16
    assert ffi.offsetof("sl_bucket", "lock") == 0


# Python names that mirror a shared constant, until they read it from the core: each one that
# still exists must hold the core's value.
MIRRORS = [
    ("shmlot.lot", "NAME_MAX", "NAME_MAX"),
    ("shmlot.lot", "DEFAULT_BUCKETS", "DEFAULT_BUCKETS"),
    ("shmlot.lot", "DEFAULT_SLOTS", "DEFAULT_SLOTS"),
    ("shmlot.lot", "DEFAULT_OBJECTS", "DEFAULT_OBJECTS"),
    ("shmlot.lot", "DEFAULT_HOLDS", "DEFAULT_HOLDS"),
    ("shmlot.lot", "ATTACH_WAIT_NS", "ATTACH_WAIT_NS"),
    ("shmlot.lot", "_NO_SLOT", "NO_SLOT"),
    ("shmlot.lot", "SPLIT_CHECK_NS", "SPLIT_CHECK_NS"),
    ("shmlot.lot", "DEFAULT_CHECK_NS", "DEFAULT_CHECK_NS"),
    ("shmlot.lot", "SLICE_MAIN_NS", "SLICE_MAIN_NS"),
    ("shmlot.lot", "SLICE_OTHER_NS", "SLICE_OTHER_NS"),
    ("shmlot.locks", "TOKEN_NORMAL", "TOKEN_NORMAL"),
    ("shmlot.locks", "TOKEN_HANDOFF", "TOKEN_HANDOFF"),
    ("shmlot.locks", "OWNER_POLL_NS", "OWNER_POLL_NS"),
    ("shmlot.locks", "LOCKED", "LOCKED_BIT"),
    ("shmlot.locks", "PARKED", "PARKED_BIT"),
    ("shmlot.rwlock", "READER", "RW_READER"),
    ("shmlot.rwlock", "READ_PHASE", "RW_READ_PHASE"),
    ("shmlot.rwlock", "READ_HOLD", "HOLD_READ"),
    ("shmlot.rwlock", "WRITE_WAIT", "HOLD_WRITE_WAIT"),
    ("shmlot.rwlock", "TOKEN_READ_GRANT", "TOKEN_READ_GRANT"),
    ("shmlot.barrier", "HOLD_MODE", "HOLD_BARRIER"),
    ("shmlot.barrier", "POLL_NS", "OWNER_POLL_NS"),
    ("shmlot.semaphore", "PERMIT_HOLD", "HOLD_PERMIT"),
    ("shmlot.semaphore", "POLL_NS", "OWNER_POLL_NS"),
    ("shmlot.event", "FLAG", "EVENT_FLAG"),
    ("shmlot.event", "GEN_ONE", "EVENT_GEN_ONE"),
    ("shmlot.event", "POLL_NS", "OWNER_POLL_NS"),
    ("shmlot.snapshot", "RESOURCE_HOLD", "HOLD_RESOURCE"),
    ("shmlot.snapshot", "TOKEN_BURST", "TOKEN_BURST"),
    ("shmlot._waiters", "UNPARKED", "SLEEP_UNPARKED"),
    ("shmlot._waiters", "SLICE_OVER", "SLEEP_TIMED_OUT"),
    ("shmlot._waiters", "INTERRUPTED", "SLEEP_INTERRUPTED"),
]


@pytest.mark.parametrize("module,name,shared", MIRRORS, ids=[f"{m}.{n}" for m, n, _ in MIRRORS])
def test_python_mirrors_hold_the_core_value(module, name, shared):
    try:
        mod = importlib.import_module(module)
    except ImportError:
        pytest.skip(f"{module} is gone")
    if not hasattr(mod, name):
        pytest.skip(f"{module}.{name} is gone (it reads the core's constant now)")
    assert getattr(mod, name) == getattr(lib, "SL_" + shared)


def test_slot_state_names_cover_the_states():
    lot = importlib.import_module("shmlot.lot")
    states = getattr(lot, "_SLOT_STATES", None)
    if states is None:
        pytest.skip("lot._SLOT_STATES is gone")
    assert set(states) == {lib.SL_SLOT_FREE, lib.SL_SLOT_ALLOCATED, lib.SL_SLOT_QUEUED,
                           lib.SL_SLOT_UNPARKED}
