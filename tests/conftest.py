"""Shared fixtures and helpers for the shmlot test suite.

Fixtures
--------
``waiter``      "futex" or "semaphore": parametrizes a test over both waiter backends (the
                semaphore backend must pass the same suite). Every fixture below that makes a lot
                depends on it, so a test using ``lot`` or ``make_lot`` runs once per backend.
``lot``         a fresh ``ParkingLot`` (buckets=256, slots=256) on the current backend, with a unique
                name; unlinked (semaphores included) after the test.
``make_lot``    factory: ``make_lot(name=None, **create_kwargs)`` creates a lot on the current
                backend (``waiter=`` overrides it); every lot it made is unlinked after the test.
``lot_name``    factory: ``lot_name()`` returns a fresh unique name
                ``shmlot-test-<pytest pid>-<8 hex>``; whatever exists under a name it issued (lot,
                its semaphores, or a plain segment) is removed after the test.
``shm_segment`` factory: ``shm_segment(size)`` creates a plain POSIX shared-memory segment
                (a :class:`Segment`, not tracked by multiprocessing's resource tracker), removed
                after the test.
``run_python``  the :func:`run_python` helper below, as a fixture.

Helpers (import them: ``from conftest import wait_until, run_python, ...``)
--------------------------------------------------------------------------
``python_env()``            environment for a child interpreter: PYTHONPATH = repo root + tests/.
``run_python(code, ...)``   run ``python -c code`` to completion with a timeout; returns the
                            ``CompletedProcess`` (text); ``check=True`` raises with its output.
``start_python(code, ...)`` start ``python -c code`` (stdin/stdout/stderr pipes, text); killed
                            after the test if still running.
``wait_until(pred, ...)``   poll ``pred()`` until true or fail at a deadline (never sleep blindly).
``parked(lot, key=None)``   the threads queued in ``lot`` (on ``key``), in queue order, as
                            ``Parked(pid, tid, key, park_token, index, wait, guard)`` records (index:
                            slot; wait: its wait word, 2 = woken ahead of its turn; guard: the
                            cheap liveness check's view of the thread (alive.c), 1 alive, 0 dead,
                            -1 it cannot tell).
``wait_parked(lot, key, n)``wait until exactly ``n`` threads are queued on ``key``.
``ParkerThread(lot, key, **park_kwargs)``: a thread that parks once; ``.start()`` returns it,
                            ``.outcome()`` joins and returns its ParkResult.
``park_in_order(lot, key, n)``: n ParkerThreads queued in start order (park_token = index).
``Segment`` / ``attach_segment(name)``: a mapped shared segment with int64 atomics at byte offsets
                            (``load``, ``store``, ``fetch_add``), usable from any process.

Leak check: a session fixture lists /dev/shm before and after the run and fails on new entries
named ``shmlot-test-<this pid>-*`` and on semaphores of lots this session made
(``sem.sl<lot_id>.*``). Set SHMLOT_TEST_STRICT_SHM=1 to fail on *any* new ``shmlot-test*`` or
``sem.sl*`` entry (only safe when no other test run shares /dev/shm).
"""
import collections
import ctypes
import ctypes.util
import mmap
import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import pytest

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(TESTS_DIR)
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

import shmlot  # noqa: E402
from shmlot import ParkingLot  # noqa: E402
from shmlot._core import ffi, lib  # noqa: E402

SHM_DIR = "/dev/shm"
NAME_PREFIX = f"shmlot-test-{os.getpid()}-"
BACKENDS = ("futex", "semaphore")
SLOT_QUEUED = 2  # lot.h SLOT_QUEUED

# lot ids of every lot this session created or attached under one of its names (for the leak
# check of the semaphore backend's /dev/shm/sem.sl<lot_id>.<slot> files)
_session_lot_ids = {}  # lot id -> the test that made or attached it (for leak reports)


def _remember_lot(lot_id):
    """Note a lot of this session, and the test that made or attached it first."""
    _session_lot_ids.setdefault(lot_id, os.environ.get("PYTEST_CURRENT_TEST"))


def new_lot_name(tag=""):
    """A unique lot/segment name under this session's prefix."""
    return f"{NAME_PREFIX}{tag}{uuid.uuid4().hex[:8]}"


# ---- child interpreters ---------------------------------------------------------------------

def python_env(extra=None):
    """Environment for a child interpreter that must import shmlot from this checkout (and the
    test modules, for helpers)."""
    env = dict(os.environ)
    parts = [REPO_ROOT, TESTS_DIR]
    if env.get("PYTHONPATH"):
        parts.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(parts)
    env.pop("PYTHONSTARTUP", None)
    if extra:
        env.update({k: str(v) for k, v in extra.items()})
    return env


_children = []


def start_python(code, *args, env=None, **popen_kwargs):
    """Start ``python -c code args...`` with the repo on PYTHONPATH; pipes for stdin, stdout and
    stderr (text). The process is killed after the test if it is still running."""
    popen_kwargs.setdefault("stdin", subprocess.PIPE)
    popen_kwargs.setdefault("stdout", subprocess.PIPE)
    popen_kwargs.setdefault("stderr", subprocess.PIPE)
    popen_kwargs.setdefault("text", True)
    popen_kwargs.setdefault("cwd", REPO_ROOT)
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
                            env=python_env(env), **popen_kwargs)
    _children.append(proc)
    return proc


def run_python(code, *args, env=None, timeout=60, check=True, input=None, **popen_kwargs):
    """Run ``python -c code args...`` to completion (killed after ``timeout`` s). Returns the
    CompletedProcess; with ``check`` a nonzero exit fails the test showing the child's output."""
    proc = start_python(code, *args, env=env, **popen_kwargs)
    try:
        out, err = proc.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"child timed out after {timeout} s\nstdout:\n{out}\nstderr:\n{err}")
    result = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    if check and proc.returncode != 0:
        pytest.fail(f"child exited with {proc.returncode}\nstdout:\n{out}\nstderr:\n{err}")
    return result


@pytest.fixture(name="run_python")
def run_python_fixture():
    """:func:`run_python` (``python -c`` with the repo on PYTHONPATH, with a timeout)."""
    return run_python


def kill_procs(*procs):
    """SIGKILL every still-running Popen in ``procs`` (None entries are skipped), then reap them
    all; for finally blocks, so a failing test leaves no child behind."""
    for p in procs:
        if p is not None and p.poll() is None:
            p.kill()
    for p in procs:
        if p is not None:
            try:
                p.communicate(timeout=10)
            except (subprocess.TimeoutExpired, ValueError, OSError):
                pass


@pytest.fixture(autouse=True)
def _kill_leftover_children():
    yield
    procs = list(reversed(_children))
    _children.clear()
    kill_procs(*procs)


# ---- waiting for observable conditions --------------------------------------------------------

def wait_until(predicate, timeout=10.0, message="condition", interval=0.001):
    """Poll ``predicate()`` until it returns a true value (returned), failing after ``timeout``
    seconds. The interval grows to 10 ms so that long waits do not burn a core."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {message}")
        time.sleep(interval)
        interval = min(interval * 2, 0.01)


Parked = collections.namedtuple("Parked", "pid tid key park_token index wait guard")


def parked(lot, key=None, timeout=30.0):
    """The threads queued in ``lot`` (on ``key`` if given), in queue order (per bucket). A
    snapshot copies a bucket whose lock stays busy (a holder descheduled on a loaded machine) out
    of queue order: take another until every slot wanted was copied in order."""
    cap = lot.slots
    buf = ffi.new("sl_slot_info[]", cap)
    deadline = time.monotonic() + timeout
    while True:
        n = lib.sl_snapshot_slots(lot._h(), buf, cap)
        assert n >= 0, ffi.string(lib.sl_last_error()).decode()
        found = [s for s in buf[0:n]
                 if s.state == SLOT_QUEUED and (key is None or s.key == key)]
        if all(s.in_order for s in found):
            return [Parked(s.pid, s.tid, s.key, s.park_token, s.index, s.wait, s.guard_alive)
                    for s in found]
        assert time.monotonic() < deadline, "no snapshot of the queue in order"


def wait_parked(lot, key, n, timeout=10.0):
    """Wait until exactly ``n`` threads are queued on ``key``; returns them in queue order."""
    box = []

    def ready():
        box[:] = parked(lot, key)
        return len(box) == n

    wait_until(ready, timeout, f"{n} thread(s) parked on key {key:#x} (have {len(box)})")
    return list(box)


def thread_ident():
    """(pid, native tid) of the calling thread: what the lot records for a parked thread."""
    return os.getpid(), threading.get_native_id()


class ParkerThread(threading.Thread):
    """A thread that calls ``lot.park(key, **park_kwargs)`` once and keeps the outcome.

    ``.ident_pair`` is its (pid, native tid) once started; ``.outcome(timeout)`` joins it and
    returns the ParkResult (or re-raises what park raised)."""

    def __init__(self, lot, key, **park_kwargs):
        super().__init__(daemon=True)
        self.lot, self.key, self.park_kwargs = lot, key, park_kwargs
        self.result = self.error = None
        self.ident_pair = None
        self._started_evt = threading.Event()

    def run(self):
        self.ident_pair = thread_ident()
        self._started_evt.set()
        try:
            self.result = self.lot.park(self.key, **self.park_kwargs)
        except BaseException as exc:  # noqa: B902 - reported to the test
            self.error = exc

    def start(self):
        super().start()
        self._started_evt.wait(10)
        return self

    def outcome(self, timeout=10.0):
        self.join(timeout)
        if self.is_alive():
            pytest.fail(f"parker on key {self.key:#x} still parked after {timeout} s")
        if self.error is not None:
            raise self.error
        return self.result


def park_in_order(lot, key, n, **park_kwargs):
    """Start ``n`` ParkerThreads on ``key`` one after the other, each queued before the next
    starts (so queue order is start order); ``park_token`` defaults to the thread's index."""
    threads = []
    for i in range(n):
        kwargs = dict(park_kwargs)
        kwargs.setdefault("park_token", i)
        before = len(parked(lot, key))
        threads.append(ParkerThread(lot, key, **kwargs).start())
        wait_parked(lot, key, before + 1)
    return threads


# ---- shared segments with atomics ------------------------------------------------------------

def _load_atomics():
    path = ctypes.util.find_library("atomic") or "libatomic.so.1"
    try:
        lib_ = ctypes.CDLL(path)
        fetch_add = lib_.__atomic_fetch_add_8
        load = lib_.__atomic_load_8
        store = lib_.__atomic_store_8
    except (OSError, AttributeError):
        return None
    fetch_add.argtypes = (ctypes.c_void_p, ctypes.c_int64, ctypes.c_int)
    fetch_add.restype = ctypes.c_int64
    load.argtypes = (ctypes.c_void_p, ctypes.c_int)
    load.restype = ctypes.c_int64
    store.argtypes = (ctypes.c_void_p, ctypes.c_int64, ctypes.c_int)
    store.restype = None
    return fetch_add, load, store


_ATOMICS = _load_atomics()
_SEQ_CST = 5


class Segment:
    """A POSIX shared-memory segment mapped here, with int64 atomics at 8-aligned offsets.

    Deliberately independent of ``multiprocessing.shared_memory`` (whose resource tracker would
    unlink or warn about segments attached in children) and of shmlot's own atomics (tested
    elsewhere): the atomics are libatomic's, or a lock-free-enough fallback through shmlot's
    ``AtomicU64`` when libatomic is missing."""

    def __init__(self, name, create=False, size=0):
        import _posixshmem
        flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0)
        fd = _posixshmem.shm_open("/" + name, flags, mode=0o600)
        try:
            if create:
                os.ftruncate(fd, size)
            else:
                size = os.fstat(fd).st_size
            self.buf = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self.name = name
        self.size = size
        self._anchor = (ctypes.c_char * size).from_buffer(self.buf)
        self.base = ctypes.addressof(self._anchor)
        self._fallback = {}

    def key(self, offset):
        """The lot key of byte ``offset``: ``key_for(name, offset)``, equal in every process."""
        return shmlot.key_for(self.name, offset)

    def _addr(self, offset):
        if offset % 8 or not 0 <= offset <= self.size - 8:
            raise ValueError(f"bad atomic offset {offset}")
        return self.base + offset

    def _atomic(self, offset):
        a = self._fallback.get(offset)
        if a is None:
            from shmlot.atomics import AtomicU64
            a = self._fallback[offset] = AtomicU64(self.buf, offset)
        return a

    def fetch_add(self, offset, delta):
        """Atomically add ``delta`` (may be negative); returns the previous (signed) value."""
        if _ATOMICS:
            return _ATOMICS[0](self._addr(offset), delta, _SEQ_CST)
        old = self._atomic(offset).fetch_add(delta & (2**64 - 1))
        return old - 2**64 if old >= 2**63 else old

    def load(self, offset):
        if _ATOMICS:
            return _ATOMICS[1](self._addr(offset), _SEQ_CST)
        old = self._atomic(offset).load()
        return old - 2**64 if old >= 2**63 else old

    def store(self, offset, value):
        if _ATOMICS:
            _ATOMICS[2](self._addr(offset), value, _SEQ_CST)
        else:
            self._atomic(offset).store(value & (2**64 - 1))

    def close(self):
        for a in self._fallback.values():
            a.close()
        self._fallback = {}
        self._anchor = None
        try:
            self.buf.close()
        except BufferError:
            pass

    def unlink(self):
        _remove_name(self.name)


def attach_segment(name):
    """Map an existing segment made by :class:`Segment` (in any process)."""
    return Segment(name)


# ---- cleanup ------------------------------------------------------------------------------------

def _read_magic(name):
    try:
        with open(os.path.join(SHM_DIR, name), "rb") as f:
            return f.read(8)
    except OSError:
        return b""


def _remove_name(name):
    """Remove whatever is called ``name`` in /dev/shm: a lot (with its semaphores) or a segment."""
    path = os.path.join(SHM_DIR, name)
    if not os.path.exists(path):
        return
    if len(_read_magic(name)) == 8:
        try:
            lot = ParkingLot.attach(name)
        except Exception:
            pass
        else:
            _remember_lot(lot._lot_id)
            lot.unlink()
            return
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _remove_semaphores(lot_id):
    prefix = f"sem.sl{lot_id:016x}."
    for entry in os.listdir(SHM_DIR):
        if entry.startswith(prefix):
            try:
                os.unlink(os.path.join(SHM_DIR, entry))
            except FileNotFoundError:
                pass


# ---- fixtures ---------------------------------------------------------------------------------

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
        _remove_name(name)


@pytest.fixture
def flot(lot_name):
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
        _remember_lot(lot._lot_id)
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
def shm_segment(lot_name):
    """Factory: ``shm_segment(size)`` -> :class:`Segment` (created, zero-filled); closed and
    unlinked after the test."""
    made = []

    def make(size=4096, tag="seg-"):
        seg = Segment(lot_name(tag), create=True, size=size)
        made.append(seg)
        return seg

    yield make
    for seg in made:
        seg.close()
        seg.unlink()


def _list_shm():
    try:
        return set(os.listdir(SHM_DIR))
    except OSError:
        return set()


@pytest.fixture(scope="session", autouse=True)
def _no_shm_leaks():
    """Fail the run if it leaves lots, segments or semaphores in /dev/shm (see module doc)."""
    # record the lot id of every lot created or attached under this session's names
    original_init = ParkingLot.__init__

    def recording_init(self, handle, name):
        original_init(self, handle, name)
        if name.startswith(NAME_PREFIX):
            _remember_lot(self._lot_id)

    ParkingLot.__init__ = recording_init
    before = _list_shm()
    yield
    ParkingLot.__init__ = original_init
    strict = os.environ.get("SHMLOT_TEST_STRICT_SHM") == "1"
    ours = {f"sl{i:016x}." for i in _session_lot_ids}
    leaked = []
    for entry in sorted(_list_shm() - before):
        if entry.startswith(NAME_PREFIX):
            leaked.append(entry)
        elif entry.startswith("sem.sl") and (strict or entry[4:].split(".")[0] + "." in ours):
            leaked.append(entry)
        elif strict and entry.startswith("shmlot-test"):
            leaked.append(entry)
    for entry in leaked:  # clean up so that one leak does not poison later runs
        if entry.startswith("sem.sl"):
            _remove_semaphores(int(entry[6:].split(".")[0], 16))
        else:
            _remove_name(entry)
    if leaked:
        owners = {f"sl{i:016x}": t for i, t in _session_lot_ids.items()}
        whose = sorted({str(owners.get(e[4:].split(".")[0])) for e in leaked
                        if e.startswith("sem.sl")})
        pytest.fail(f"tests left {len(leaked)} entries in /dev/shm: {leaked[:20]}"
                    + (f" (semaphores of lots from {whose})" if whose else ""))
