"""The fixtures and hooks of the shmlot test suite; the helpers they use are in ``helpers/``.

Fixtures
--------
``waiter``          "futex" or "semaphore": parametrizes a test over both waiter backends (the
                    semaphore backend must pass the same suite). Every fixture below that makes a
                    lot on "the current backend" depends on it, so a test using it runs once per
                    backend.
``lot``             a fresh ``ParkingLot`` (buckets=256, slots=256) on the current backend, with a
                    unique name; unlinked (semaphores included) after the test.
``make_lot``        factory: ``make_lot(name=None, **create_kwargs)`` creates a lot on the current
                    backend (``waiter=`` overrides it); every lot it made is unlinked after the
                    test.
``futex_lot``       a small futex lot, for tests whose subject does not depend on the backend.
``default_lot``     a fresh lot on the current backend made the default lot of this process and
                    of its children (``helpers.lots.fresh_default_lot``).
``lot_name``        factory: ``lot_name(tag="")`` returns a fresh unique name
                    ``shmlot-test-<pytest pid>-<tag><8 hex>``; whatever exists under a name it
                    issued (lot, its semaphores, or a plain segment) is removed after the test.
``shm_segment``     factory: ``shm_segment(size)`` creates a plain POSIX shared-memory segment (a
                    ``helpers.segments.Segment``, not tracked by multiprocessing's resource
                    tracker), removed after the test.
``make_shared_memory`` factory: ``make_shared_memory(size)`` a new
                    ``multiprocessing.shared_memory.SharedMemory`` with a unique name, unlinked
                    after the test (children attach it by ``.name``).
``aio_mode``        the asyncio tests' waiting mode ("futex", "futex-threads", "semaphore");
                    ``aio_lot`` a lot (256 buckets, 1,024 slots) on that mode's backend.
``run_python``      ``helpers.processes.run_python``, as a fixture.

Every child ``helpers.processes.start_python`` started is killed after its test.

Leak check: a session fixture lists /dev/shm before and after the run and fails on new entries
named ``shmlot-test-<this pid>-*`` and on semaphores of lots this session made
(``sem.sl<lot_id>.*``). Set SHMLOT_TEST_STRICT_SHM=1 to fail on *any* new ``shmlot-test*`` or
``sem.sl*`` entry (only safe when no other test run shares /dev/shm).
"""
import gc
import os
from multiprocessing import shared_memory

import pytest

from helpers import SHM_DIR
from helpers.aio import MODES, mode_waiter
from helpers.lots import (BACKENDS, NAME_PREFIX, fresh_default_lot, list_shm, new_lot_name,
                          remember_lot, remove_name, remove_semaphores, session_lot_ids)
from helpers.processes import kill_started, run_python
from helpers.segments import Segment

from shmlot import ParkingLot, aio


@pytest.fixture(name="run_python")
def run_python_fixture():
    """``run_python`` (``python -c`` with the repo on PYTHONPATH, with a timeout)."""
    return run_python


@pytest.fixture(autouse=True)
def _kill_leftover_children():
    yield
    kill_started()


@pytest.fixture(params=BACKENDS)
def waiter(request):
    """The waiter backend of the lots this test makes: "futex", then "semaphore"."""
    return request.param


@pytest.fixture
def lot_name():
    """Factory of unique names (``lot_name()`` or ``lot_name("tag-")``); everything left under
    them in /dev/shm is removed after the test."""
    issued = []

    def make(tag=""):
        name = new_lot_name(tag)
        issued.append(name)
        return name

    yield make
    for name in issued:
        remove_name(name)


@pytest.fixture
def futex_lot(lot_name):
    """A small futex lot, for tests whose subject does not depend on the waiter backend
    (introspection, deadlock detection)."""
    return ParkingLot.create(lot_name(), buckets=256, slots=256, waiter="futex")


@pytest.fixture
def make_lot(lot_name, waiter):
    """Factory: ``make_lot(name=None, **create_kwargs)`` creates a lot on this test's backend (the
    ``waiter`` fixture; pass ``waiter=`` to override). Lots are unlinked after the test."""
    made = []

    def make(name=None, **kwargs):
        kwargs.setdefault("waiter", waiter)
        kwargs.setdefault("buckets", 256)
        kwargs.setdefault("slots", 256)
        lot = ParkingLot.create(name or lot_name(), **kwargs)
        remember_lot(lot._lot_id)
        made.append(lot)
        return lot

    yield make
    for lot in made:
        # (a lot the test unlinked itself must have taken its semaphores along: the session
        # leak check looks)
        if os.path.exists(os.path.join(SHM_DIR, lot.name)):
            lot.unlink()


@pytest.fixture
def lot(make_lot):
    """A fresh lot (buckets=256, slots=256) on the current backend; unlinked after the test."""
    return make_lot()


@pytest.fixture
def default_lot(waiter):
    """A fresh lot on the current backend, the default lot of this process and of its children
    for the test; unlinked after it."""
    with fresh_default_lot(waiter) as made:
        yield made


@pytest.fixture
def shm_segment(lot_name):
    """Factory: ``shm_segment(size)`` -> ``Segment`` (created, zero-filled); children map it with
    ``attach_segment(name)``. Closed and unlinked after the test."""
    made = []

    def make(size=4096, tag="seg-"):
        seg = Segment(lot_name(tag), create=True, size=size)
        made.append(seg)
        return seg

    yield make
    for seg in made:
        seg.close()
        seg.unlink()


@pytest.fixture
def make_shared_memory():
    """Factory: ``make_shared_memory(size)`` -> a new ``SharedMemory`` with a unique name,
    unlinked after the test (children attach it by ``.name``)."""
    made = []

    def make(size=4096):
        seg = shared_memory.SharedMemory(name=new_lot_name("seg-"), create=True, size=size)
        made.append(seg)
        return seg

    yield make
    for seg in made:
        seg.unlink()
        gc.collect()
        try:
            seg.close()
        except BufferError:  # a primitive or atomic placed in it is still alive: leave the map
            pass


@pytest.fixture(params=MODES)
def aio_mode(request, monkeypatch):
    """The waiting mode of this test (this process follows it; pass ``helpers.aio.mode_env()``
    to children)."""
    monkeypatch.setattr(aio, "USE_WAITV", request.param != "futex-threads" and aio.USE_WAITV)
    return request.param


@pytest.fixture
def aio_lot(lot_name, aio_mode):
    """A lot (256 buckets, 1,024 slots) on the backend of this test's mode; unlinked after."""
    made = ParkingLot.create(lot_name("aio-"), buckets=256, slots=1024,
                             waiter=mode_waiter(aio_mode))
    yield made
    made.unlink()


@pytest.fixture(scope="session", autouse=True)
def _no_shm_leaks():
    """Fail the run if it leaves lots, segments or semaphores in /dev/shm (see module doc)."""
    # record the lot id of every lot created or attached under this session's names
    original_init = ParkingLot.__init__

    def recording_init(self, handle, name):
        original_init(self, handle, name)
        if name.startswith(NAME_PREFIX):
            remember_lot(self._lot_id)

    ParkingLot.__init__ = recording_init
    before = list_shm()
    yield
    ParkingLot.__init__ = original_init
    strict = os.environ.get("SHMLOT_TEST_STRICT_SHM") == "1"
    ours = {f"sl{i:016x}." for i in session_lot_ids}
    leaked = []
    for entry in sorted(list_shm() - before):
        if entry.startswith(NAME_PREFIX):
            leaked.append(entry)
        elif entry.startswith("sem.sl") and (strict or entry[4:].split(".")[0] + "." in ours):
            leaked.append(entry)
        elif strict and entry.startswith("shmlot-test"):
            leaked.append(entry)
    for entry in leaked:  # clean up so that one leak does not poison later runs
        if entry.startswith("sem.sl"):
            remove_semaphores(int(entry[6:].split(".")[0], 16))
        else:
            remove_name(entry)
    if leaked:
        owners = {f"sl{i:016x}": t for i, t in session_lot_ids.items()}
        whose = sorted({str(owners.get(e[4:].split(".")[0])) for e in leaked
                        if e.startswith("sem.sl")})
        pytest.fail(f"tests left {len(leaked)} entries in /dev/shm: {leaked[:20]}"
                    + (f" (semaphores of lots from {whose})" if whose else ""))
