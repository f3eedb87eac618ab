"""shmlot._fast and shmlot.atomics: atomics, lock-word fast paths, thread identity.

Real shared memory and real processes throughout. The LockCore/RLockCore tests use small Python
subclasses whose _acquire_slow/_release_slow record their calls (or spin on the word): they stand
in for shmlot's own slow paths, which are not under test here.
"""
import gc
import mmap
import multiprocessing as mp
import os
import pickle
import struct
import sys
import threading
import time
import weakref
from multiprocessing import shared_memory

import pytest

from shmlot import _fast
from shmlot.atomics import AtomicU32, AtomicU64
from shmlot.keys import key_for
from shmlot.spinwait import SpinWait

from helpers.lots import new_lot_name
from helpers.processes import run_procs
from helpers.segments import attach_shared_memory

LOCKED = _fast.LOCKED_BIT
PARKED = _fast.PARKED_BIT
ATOMICS = [(AtomicU32, 32, "I"), (AtomicU64, 64, "Q")]


# ------------------------------------------------------------------------------------------------
# helpers


@pytest.fixture
def shm(make_shared_memory):
    """One SharedMemory block of 4 KiB."""
    return make_shared_memory(4096)


@pytest.fixture
def mm():
    m = mmap.mmap(-1, 4096)
    yield m
    gc.collect()
    try:
        m.close()
    except BufferError:
        pass


def proc_start_time(pid):
    with open(f"/proc/{pid}/stat") as f:
        data = f.read()
    return int(data[data.rindex(")") + 2:].split()[19])  # field 22


def start_together(seg, parties, offset=4000):
    """Barrier on a word of the segment, so that the workers really overlap."""
    ready = AtomicU32(seg, offset)
    ready.fetch_add(1)
    spin = SpinWait()
    while ready.load() < parties:
        if not spin.spin():
            time.sleep(0)
    ready.close()


# ------------------------------------------------------------------------------------------------
# atomics: every operation


@pytest.mark.parametrize("cls,bits,fmt", ATOMICS)
def test_every_operation(cls, bits, fmt):
    buf = bytearray(64)
    a = cls(buf, 16)
    raw = lambda: struct.unpack_from("=" + fmt, buf, 16)[0]  # noqa: E731
    assert a.load() == 0
    a.store(5)
    assert raw() == 5 and a.load() == 5
    assert a.swap(9) == 5 and raw() == 9
    assert a.compare_exchange(9, 11) == (True, 9) and raw() == 11
    assert a.compare_exchange(9, 12) == (False, 11) and raw() == 11
    assert a.fetch_add(4) == 11 and raw() == 15
    assert a.fetch_sub(5) == 15 and raw() == 10
    assert a.fetch_or(0b0101) == 10 and raw() == 0b1111
    assert a.fetch_and(0b0110) == 0b1111 and raw() == 0b0110
    struct.pack_into("=" + fmt, buf, 16, 77)  # writes through the buffer are seen
    assert a.load() == 77
    assert buf[:16] == bytes(16) and buf[16 + bits // 8:] == bytes(64 - 16 - bits // 8)


@pytest.mark.parametrize("cls,bits,fmt", ATOMICS)
def test_wraparound(cls, bits, fmt):
    top = 2**bits - 1
    a = cls(bytearray(8))
    a.store(top)
    assert a.fetch_add(1) == top and a.load() == 0
    assert a.fetch_sub(1) == 0 and a.load() == top
    assert a.fetch_add(top) == top and a.load() == top - 1
    assert a.swap(top) == top - 1
    assert a.compare_exchange(top, 0) == (True, top)
    assert a.fetch_or(top) == 0 and a.load() == top
    assert a.fetch_and(0) == top and a.load() == 0


@pytest.mark.parametrize("cls,bits,fmt", ATOMICS)
def test_bad_values(cls, bits, fmt):
    a = cls(bytearray(8))
    ops = [a.store, a.swap, a.fetch_add, a.fetch_sub, a.fetch_or, a.fetch_and,
           lambda v: a.compare_exchange(v, 0), lambda v: a.compare_exchange(0, v)]
    for op in ops:
        for bad in (1.0, "1", None, True, b"\x01"):
            with pytest.raises(TypeError):
                op(bad)
        for bad in (-1, 2**bits, 2**bits + 5, -(2**70), 2**100):
            with pytest.raises(ValueError):
                op(bad)
    assert a.load() == 0  # nothing was written by a failed call
    with pytest.raises(TypeError):
        a.compare_exchange(0)
    with pytest.raises(TypeError):
        a.load(1)


@pytest.mark.parametrize("cls,bits,fmt", ATOMICS)
def test_alignment_and_range(cls, bits, fmt, mm):
    size = bits // 8
    for off in range(1, size):
        with pytest.raises(ValueError, match="misaligned"):
            cls(mm, off)
    for off in (4096 - size + 1, 4096, 4096 + 8, 2**40, -size, -1):
        with pytest.raises((ValueError, OverflowError)):
            cls(mm, off)
    cls(mm, 4096 - size).store(1)
    # alignment is of the address, not the offset: a slice starting at an odd address
    view = memoryview(mm)[1:]
    with pytest.raises(ValueError, match="misaligned"):
        cls(view, 0)
    cls(view, size - 1).store(2)
    del view
    gc.collect()


def test_bad_buffers(tmp_path):
    for ro in (b"\0" * 16, memoryview(bytearray(16)).toreadonly()):
        with pytest.raises((TypeError, BufferError)):
            AtomicU64(ro, 0)
    path = tmp_path / "f"
    path.write_bytes(bytes(4096))
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as ro_map:
        with pytest.raises((TypeError, BufferError)):
            AtomicU32(ro_map, 0)
    for not_a_buffer in (None, 42, "abc", object()):
        with pytest.raises(TypeError):
            AtomicU32(not_a_buffer, 0)
    with pytest.raises(TypeError):
        AtomicU32(bytearray(8), 1.5)
    with pytest.raises(TypeError):
        AtomicU32()


def test_buffer_is_held_until_close(mm):
    a = AtomicU64(mm, 8)
    with pytest.raises(BufferError):
        mm.close()
    a.store(3)
    a.close()
    assert a.closed and repr(a).endswith("closed>")
    for op in (a.load, lambda: a.store(1), lambda: a.fetch_add(1), lambda: a.address):
        with pytest.raises(ValueError):
            op()
    b = AtomicU64(mm, 16)
    del b  # dropping the object releases the buffer too
    mm.close()


def test_shared_memory_object_and_keys(shm, mm):
    a = AtomicU64(shm, 64)
    b = AtomicU32(shm.buf, 64)
    assert a.buffer is shm and b.buffer is shm.buf
    assert a.key == key_for(shm, 64) == key_for(shm.name, 64)
    assert b.address == a.address
    assert b.key == a.key  # a bare buffer is named by its mapping too
    a.store(0xDEADBEEF)
    assert b.load() == 0xDEADBEEF
    c = AtomicU32(mm, 8)
    assert c.key == key_for(mm, 8) != c.address  # an anonymous mmap: its mapping's inode
    assert AtomicU32(shm, 68).key == a.key + 4
    assert f"key={a.key:#x}" in repr(a) and "value=3735928559" in repr(a)

    class Region:  # any object with .buf and .name, or .buf and .key
        def __init__(self, buf, name=None, key=None):
            self.buf, self.name, self.key = buf, name, key
    assert AtomicU32(Region(shm.buf, name="/" + shm.name), 8).key == key_for(shm, 8)
    assert AtomicU32(Region(shm.buf, key=1000), 8).key == 1008
    for x in (a, b, c):
        x.close()


def test_atomics_are_slotted_and_unpicklable(mm):
    a = AtomicU32(mm, 0)
    with pytest.raises(AttributeError):
        a.other = 1
    with pytest.raises(TypeError, match="pickle"):
        pickle.dumps(a)
    assert isinstance(a, _fast.AtomicU32) and AtomicU32.SIZE == 4 and AtomicU64.SIZE == 8
    a.close()


def test_atomic_keeps_its_shared_memory_alive():
    """A SharedMemory only the atomic refers to is closed after the atomic lets go of its buffer
    (closing it first would raise BufferError in SharedMemory.__del__)."""
    name = new_lot_name()
    seg = shared_memory.SharedMemory(name, create=True, size=64)
    unraisable = []
    old_hook = sys.unraisablehook
    sys.unraisablehook = unraisable.append
    try:
        a = AtomicU64(attach_shared_memory(name), 8)
        gc.collect()
        a.store(42)
        assert struct.unpack_from("=Q", seg.buf, 8)[0] == 42
        del a
        gc.collect()
    finally:
        sys.unraisablehook = old_hook
        seg.close()
        seg.unlink()
    assert unraisable == []


def test_gc_collects_a_cycle_through_a_core():
    class Lock(_fast.LockCore):
        pass
    lock = Lock(bytearray(8))
    lock.me = lock  # a cycle through the instance dict
    ref = weakref.ref(lock)
    del lock
    gc.collect()
    assert ref() is None


# ------------------------------------------------------------------------------------------------
# atomics across processes


def _adder(name, offset, n, cls_name):
    seg = attach_shared_memory(name)
    a = {"AtomicU32": AtomicU32, "AtomicU64": AtomicU64}[cls_name](seg, offset)
    start_together(seg, 2)
    for _ in range(n):
        a.fetch_add(1)
    a.close()
    seg.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", ["fork", "spawn"])
@pytest.mark.parametrize("cls", [AtomicU32, AtomicU64])
def test_fetch_add_two_processes_exact_total(shm, method, cls):
    a = cls(shm, 128)
    n = 100_000
    run_procs(method, _adder, [(shm.name, 128, n, cls.__name__)] * 2)
    assert a.load() == 2 * n
    a.close()


def _report_key(name, offset, q):
    seg = attach_shared_memory(name)
    a = AtomicU64(seg, offset)
    q.put((a.key, a.load(), os.getpid()))
    a.store(7)
    a.close()
    seg.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_key_is_the_same_in_another_process(shm, method):
    a = AtomicU64(shm, 256)
    a.store(99)
    ctx = mp.get_context(method)
    q = ctx.Queue()
    run_procs(method, _report_key, [(shm.name, 256, q)])
    key, value, pid = q.get(timeout=10)
    assert pid != os.getpid()
    assert key == a.key == key_for(shm.name, 256)
    assert value == 99 and a.load() == 7
    a.close()


# ------------------------------------------------------------------------------------------------
# identity


def test_self_ident_and_owner_bits():
    pid, tid, start = _fast.self_ident()
    assert pid == os.getpid()
    assert tid == threading.get_native_id()
    assert start == proc_start_time(os.getpid())
    bits = _fast.self_owner_bits()
    assert bits == _fast.owner_bits(pid, tid, start)
    assert bits & (LOCKED | PARKED) == 0
    assert _fast.word_owner(bits | LOCKED | PARKED) == (pid, tid, start & _fast.START_MASK)
    assert _fast.word_owner(0) == (0, 0, 0)
    top = 2**22 - 1
    assert _fast.word_owner(_fast.owner_bits(top, top, 2**64 - 1)) == (top, top, 2**18 - 1)
    for bad in [(2**22, 1, 0), (1, 2**22, 0), (-1, 1, 0), (1, 1, 2**64)]:
        with pytest.raises(ValueError):
            _fast.owner_bits(*bad)
    with pytest.raises(TypeError):
        _fast.owner_bits(1, 2)


def test_each_thread_has_its_own_tid():
    seen = {}

    def worker():
        seen[threading.get_native_id()] = _fast.self_ident()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen) == 4
    for native, (pid, tid, start) in seen.items():
        assert (pid, tid) == (os.getpid(), native)
        assert start == _fast.self_ident()[2]


def test_process_alive():
    pid, _, start = _fast.self_ident()
    assert _fast.process_alive(pid, start)
    assert _fast.process_alive(pid, start & _fast.START_MASK)
    assert not _fast.process_alive(pid, start + 1)
    assert not _fast.process_alive(pid, start + 1, 2**64 - 1)
    assert not _fast.process_alive(0, 0)
    child = os.fork()
    if child == 0:
        os._exit(0)
    child_start = None
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # wait until it is a zombie: dead, not yet reaped
            try:
                with open(f"/proc/{child}/stat") as f:
                    stat = f.read()
            except FileNotFoundError:
                break
            child_start = proc_start_time(child) if child_start is None else child_start
            if stat[stat.rindex(")") + 2] == "Z":
                break
            time.sleep(0.005)
        assert not _fast.process_alive(child, child_start or 0)  # a zombie is dead
    finally:
        os.waitpid(child, 0)
    assert not _fast.process_alive(child, child_start or 0)


def _fork_identity(q, parent_ident, name):
    seg = attach_shared_memory(name)
    lock = RecordingLock(seg, 0)
    rlock = RecordingRLock(seg, 8)
    me = _fast.self_ident()
    q.put({
        "ident": me,
        "differs": me[:2] != parent_ident[:2],
        "lock_acquire": lock.acquire(False),  # held by the parent: slow path says False
        "calls": lock.calls,
        "rlock_owned": rlock._is_owned(),
        "rlock_release": _raises(rlock.release),
        "own_lock": _own_lock_bits(seg),
    })
    lock._release_buffer()
    rlock._release_buffer()
    seg.close()


def _own_lock_bits(seg):
    lock = RecordingLock(seg, 64)
    lock.acquire()
    word = lock._word()
    lock.release()
    lock._release_buffer()
    return word


def _raises(fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - reported to the parent
        return f"{type(e).__name__}: {e}"
    return None


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_child_has_its_own_identity(shm, method):
    parent = _fast.self_ident()  # the parent's cache is filled before the fork
    lock = RecordingLock(shm, 0)
    rlock = RecordingRLock(shm, 8)
    assert lock.acquire() and rlock.acquire()
    q = mp.get_context(method).Queue()
    run_procs(method, _fork_identity, [(q, parent, shm.name)])
    r = q.get(timeout=10)
    pid, tid, start = r["ident"]
    assert r["differs"] and pid != os.getpid()
    assert r["lock_acquire"] is False and r["calls"] == [("acquire", False, -1.0)]
    assert r["rlock_owned"] is False
    assert r["rlock_release"] == "RuntimeError: cannot release un-acquired lock"
    assert r["own_lock"] == _fast.owner_bits(pid, tid, start) | LOCKED
    assert rlock._is_owned() and rlock._count() == 1
    lock.release()
    rlock.release()
    lock._release_buffer()
    rlock._release_buffer()


# ------------------------------------------------------------------------------------------------
# LockCore


class RecordingLock(_fast.LockCore):
    """LockCore whose slow paths record their calls and return `result`."""

    def __init__(self, buffer, offset=0):
        super().__init__(buffer, offset)
        self.calls = []
        self.result = False

    def _acquire_slow(self, blocking, timeout):
        self.calls.append(("acquire", blocking, timeout))
        return self.result

    _enter_slow = _acquire_slow  # __enter__'s slow path: the same, here

    def _release_slow(self):
        self.calls.append(("release", self._word()))


def me_locked():
    return _fast.self_owner_bits() | LOCKED


def test_lock_fast_paths():
    lock = RecordingLock(bytearray(8))
    assert not lock.locked() and lock._word() == 0
    assert lock.acquire() is True
    assert lock._word() == me_locked() and lock.locked()
    assert lock.release() is None and lock._word() == 0
    assert lock.acquire(False) is True and lock._word() == me_locked()
    lock.release()
    assert lock.acquire(True, 5) is True and lock.acquire(blocking=True, timeout=0) is False
    lock.release()
    assert lock.acquire(timeout=0.5) is True
    lock.release()
    with lock as entered:
        assert entered is True and lock._word() == me_locked()
    assert lock._word() == 0
    assert lock.calls == [("acquire", True, 0.0)]  # only the acquire that found it held


def test_lock_held_goes_to_the_slow_path():
    lock = RecordingLock(bytearray(8))
    other = _fast.owner_bits(1, 2, 3) | LOCKED
    lock._store_word(other)
    lock.result = "from slow"
    assert lock.acquire() == "from slow"
    assert lock.acquire(False) == "from slow"
    assert lock.acquire(0) == "from slow"
    assert lock.acquire(True, 2) == "from slow"
    assert lock.acquire(timeout=1.25) == "from slow"
    assert lock.acquire(blocking=False, timeout=-1) == "from slow"
    assert lock.__enter__() == "from slow"
    assert lock.calls == [("acquire", True, -1.0), ("acquire", False, -1.0),
                          ("acquire", False, -1.0), ("acquire", True, 2.0),
                          ("acquire", True, 1.25), ("acquire", False, -1.0),
                          ("acquire", True, -1.0)]
    assert all(type(c[2]) is float for c in lock.calls)
    assert lock._word() == other
    lock.release()  # threading.Lock may be released by anyone
    assert lock._word() == 0


def test_lock_parked_bit():
    lock = RecordingLock(bytearray(8))
    lock._store_word(PARKED | _fast.owner_bits(9, 9, 9))  # free, with parked threads (stale owner)
    assert lock.acquire() is True
    assert lock._word() == PARKED | me_locked() and lock.calls == []
    assert lock.release() is None  # PARKED: the slow path releases, the word is left alone
    assert lock.calls == [("release", PARKED | me_locked())]
    assert lock._word() == PARKED | me_locked()
    lock._store_word(PARKED)
    with lock:
        assert lock._word() == PARKED | me_locked()
    assert lock.calls[-1] == ("release", PARKED | me_locked())


def test_lock_release_unlocked():
    lock = RecordingLock(bytearray(8))
    for word in (0, PARKED):
        lock._store_word(word)
        with pytest.raises(RuntimeError, match="^release unlocked lock$"):
            lock.release()
        with pytest.raises(RuntimeError, match="^release unlocked lock$"):
            lock.__exit__(None, None, None)
    assert lock.calls == []


def test_lock_word_helpers():
    lock = RecordingLock(bytearray(16), 8)
    assert lock._cas_word(0, 5) == (True, 0)
    assert lock._cas_word(0, 6) == (False, 5)
    lock._store_word(2**64 - 1)
    assert lock._word() == 2**64 - 1
    for bad in (-1, 2**64):
        with pytest.raises(ValueError):
            lock._store_word(bad)
    assert lock._offset == 8 and isinstance(lock._address, int)
    with pytest.raises(ValueError, match="misaligned"):
        RecordingLock(bytearray(16), 4)
    with pytest.raises(ValueError):
        RecordingLock(bytearray(16), 12)


BAD_ACQUIRE_ARGS = [
    ((), {"timeout": -2}), ((), {"timeout": -0.5}), ((), {"timeout": -1.0000001}),
    ((False, 1), {}), ((False,), {"timeout": 0}), ((), {"blocking": False, "timeout": 0.5}),
    ((False, -2), {}),
    ((), {"timeout": None}), ((), {"timeout": "1"}), ((), {"timeout": float("nan")}),
    ((), {"timeout": 1e300}), ((), {"timeout": -1e300}), ((), {"timeout": 2**80}),
    ((), {"timeout": 10**12}), ((), {"timeout": 1e12}),
    ((), {"foo": 1}), ((1, 2, 3), {}), ((1,), {"blocking": 1}), ((1, 2), {"timeout": 2}),
    ((), {"blocking": 1, "foo": 2}),
]


@pytest.mark.parametrize("core,model", [(RecordingLock, threading.Lock), (None, threading.RLock)])
@pytest.mark.parametrize("args,kwargs", BAD_ACQUIRE_ARGS)
def test_acquire_arguments_fail_like_threading(core, model, args, kwargs):
    core = core or RecordingRLock
    try:
        model().acquire(*args, **kwargs)
    except Exception as e:  # noqa: BLE001
        expected = (type(e), str(e))
    else:
        pytest.fail("threading accepted it")
    lock = core(bytearray(16))
    with pytest.raises(expected[0]) as info:
        lock.acquire(*args, **kwargs)
    assert str(info.value) == expected[1]
    assert lock._word() == 0 and lock.calls == []


@pytest.mark.parametrize("args,kwargs", [
    ((), {}), ((0,), {}), ((1,), {}), ((False,), {}), ((True, -1), {}), ((1, 0), {}),
    ((True, -0.0), {}), ((), {"timeout": 3}), ((), {"timeout": True}),
    ((), {"blocking": 0, "timeout": -1}), ((), {"timeout": 2.5, "blocking": 1}),
    ((), {"timeout": threading.TIMEOUT_MAX}), ((2**31,), {}), ((-(2**40),), {}),
    # accepted from 3.12 on (blocking parsed with "p" instead of "i"):
    ((None,), {}), (("yes",), {}), ((2.5,), {}), ((2**100,), {}), (([],), {}),
])
def test_acquire_arguments_like_threading(args, kwargs):
    """What threading accepts reaches the slow path as (bool, float, -1.0 for none); what it
    refuses is refused with the same exception and message."""
    try:
        threading.Lock().acquire(*args, **kwargs)
    except Exception as e:  # noqa: BLE001
        expected = (type(e), str(e))
    else:
        blocking = args[0] if args else kwargs.get("blocking", True)
        timeout = args[1] if len(args) > 1 else kwargs.get("timeout", -1)
        expected = ("acquire", bool(blocking), float(timeout) + 0.0)
    for core in (RecordingLock, RecordingRLock):
        lock = core(bytearray(16))
        lock._store_word(_fast.owner_bits(1, 1, 1) | LOCKED)
        if isinstance(expected[0], type):
            with pytest.raises(expected[0]) as info:
                lock.acquire(*args, **kwargs)
            assert str(info.value) == expected[1]
            assert lock.calls == []
        else:
            lock.acquire(*args, **kwargs)
            assert lock.calls == [expected]
            assert type(lock.calls[0][1]) is bool and type(lock.calls[0][2]) is float


def test_unbound_core():
    lock = RecordingLock.__new__(RecordingLock)  # __init__ never ran
    for op in (lock.acquire, lock.release, lock.locked, lock._word, lock.__enter__):
        with pytest.raises(ValueError, match="not bound"):
            op()
    lock = RecordingLock(bytearray(8))
    lock._release_buffer()
    with pytest.raises(ValueError):
        lock.acquire()


class SpinningLock(_fast.LockCore):
    """LockCore with a spin-then-sleep slow path: enough for mutual exclusion tests."""

    def _acquire_slow(self, blocking, timeout):
        deadline = None if timeout < 0 else time.monotonic() + timeout
        spin = SpinWait()
        while True:
            word = self._word()
            if not word & LOCKED:
                me = _fast.self_owner_bits() | LOCKED
                if self._cas_word(word, (word & PARKED) | me)[0]:
                    return True
                continue
            if not blocking or (deadline is not None and time.monotonic() >= deadline):
                return False
            if not spin.spin():
                spin.reset()
                time.sleep(0)  # lets a holder of this process run

    _enter_slow = _acquire_slow

    def _release_slow(self):
        raise AssertionError("nobody parks in these tests")


def _count_under_lock(name, n, lock_offset, counter_offset, parties):
    seg = attach_shared_memory(name)
    lock = SpinningLock(seg, lock_offset)
    start_together(seg, parties)
    for _ in range(n):
        with lock:
            (v,) = struct.unpack_from("=Q", seg.buf, counter_offset)
            struct.pack_into("=Q", seg.buf, counter_offset, v + 1)
    lock._release_buffer()
    seg.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_lock_mutual_exclusion_across_processes(shm, method):
    n = 20_000
    run_procs(method, _count_under_lock, [(shm.name, n, 0, 8, 3)] * 3)
    assert struct.unpack_from("=Q", shm.buf, 8)[0] == 3 * n
    assert struct.unpack_from("=Q", shm.buf, 0)[0] == 0


@pytest.mark.timeout(60)
def test_lock_mutual_exclusion_across_threads(shm):
    n = 5_000
    threads = [threading.Thread(target=_count_under_lock, args=(shm.name, n, 0, 8, 4))
               for _ in range(4)]
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads inside critical sections often
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    assert struct.unpack_from("=Q", shm.buf, 8)[0] == 4 * n


def test_lock_owner_bits_are_the_acquiring_thread():
    lock = RecordingLock(bytearray(8))
    words = {}

    def worker():
        lock.acquire()
        words[threading.get_native_id()] = lock._word()
        lock.release()

    for _ in range(3):
        t = threading.Thread(target=worker)
        t.start()
        t.join()
    for tid, word in words.items():
        assert _fast.word_owner(word) == (os.getpid(), tid, _fast.self_ident()[2] & _fast.START_MASK)
        assert word & (LOCKED | PARKED) == LOCKED


# ------------------------------------------------------------------------------------------------
# RLockCore


class RecordingRLock(_fast.RLockCore):
    """RLockCore whose slow paths record their calls; acquire_slow may take the word if asked."""

    def __init__(self, buffer, offset=0):
        super().__init__(buffer, offset)
        self.calls = []
        self.take = False

    def _acquire_slow(self, blocking, timeout):
        self.calls.append(("acquire", blocking, timeout))
        if self.take:
            word = self._word()
            return self._cas_word(word, (word & PARKED) | me_locked())[0]
        return False

    def _release_slow(self):
        self.calls.append(("release", self._word(), self._count()))


def test_rlock_recursion():
    buf = bytearray(16)
    r = RecordingRLock(buf)
    assert not r._is_owned() and r._count() == 0
    assert r.acquire() is True and r._count() == 1 and r._word() == me_locked()
    assert r.acquire(False) is True and r.acquire(True, 1) is True and r._count() == 3
    with r:
        assert r._count() == 4
    assert r._count() == 3 and r._is_owned()
    assert struct.unpack_from("=QI", buf, 0) == (me_locked(), 3)
    r.release()
    r.release()
    assert r._count() == 1 and r._word() == me_locked()
    r.release()
    assert r._count() == 0 and r._word() == 0 and not r._is_owned() and not r.locked()
    with pytest.raises(RuntimeError, match="^cannot release un-acquired lock$"):
        r.release()
    assert r.calls == []


def test_rlock_owner_checks_between_threads():
    r = RecordingRLock(bytearray(16))
    held, done = threading.Event(), threading.Event()

    def owner():
        r.acquire()
        r.acquire()
        held.set()
        done.wait(10)
        r.release()
        r.release()

    t = threading.Thread(target=owner)
    t.start()
    try:
        assert held.wait(10)
        assert r.locked() and not r._is_owned() and r._count() == 2
        with pytest.raises(RuntimeError, match="cannot release un-acquired lock"):
            r.release()
        assert r.acquire(False) is False
        assert r.acquire(timeout=0.01) is False
        assert r.calls == [("acquire", False, -1.0), ("acquire", True, 0.01)]
        assert r._count() == 2  # the failed acquires did not touch the owner's count
    finally:
        done.set()
        t.join()
    assert r._word() == 0


def test_rlock_slow_path_acquire_sets_count():
    r = RecordingRLock(bytearray(16))
    other = _fast.owner_bits(5, 5, 5) | LOCKED
    r._store_word(PARKED | _fast.owner_bits(5, 5, 5))  # free with parked threads: fast path
    assert r.acquire() is True and r._count() == 1 and r._word() == PARKED | me_locked()
    assert r.calls == []

    r._store_word(other)
    r._set_count(7)  # the other owner's count
    r.take = True  # the slow path takes the word but leaves the count alone
    assert r.acquire() is True
    assert r.calls == [("acquire", True, -1.0)]
    assert r._is_owned() and r._count() == 1

    r._store_word(other)

    def take_then_raise(blocking, timeout):  # e.g. recovered from a dead owner
        r._store_word(me_locked())
        raise RuntimeError("owner died")
    r._acquire_slow = take_then_raise
    with pytest.raises(RuntimeError, match="owner died"):
        r.acquire()
    assert r._is_owned() and r._count() == 1  # held by the caller, count reset
    r.release()
    assert r._word() == 0 and r._count() == 0


def test_rlock_release_with_parked():
    r = RecordingRLock(bytearray(16))
    r.acquire()
    r.acquire()
    r._cas_word(me_locked(), me_locked() | PARKED)
    r.release()  # not the last level: no slow path
    assert r.calls == [] and r._count() == 1
    r.release()
    assert r.calls == [("release", me_locked() | PARKED, 0)]  # slow path sees count 0
    assert r._word() == me_locked() | PARKED  # and does the unlocking itself


def test_rlock_count_limits():
    r = RecordingRLock(bytearray(16))
    r.acquire()
    r._set_count(2**32 - 1)
    with pytest.raises(OverflowError):
        r.acquire()
    assert r._count() == 2**32 - 1
    with pytest.raises(ValueError):
        r._set_count(2**32)
    r._set_count(1)
    r.release()
    with pytest.raises(ValueError, match="misaligned"):
        RecordingRLock(bytearray(32), 4)
    with pytest.raises(ValueError):
        RecordingRLock(bytearray(16), 8)  # needs 16 bytes
    assert _fast.RLOCK_SIZE == 16 and _fast.LOCK_SIZE == 8


# ------------------------------------------------------------------------------------------------
# small module functions


def test_cpu_relax_and_yield():
    assert _fast.cpu_relax() is None
    assert _fast.cpu_relax(0) is None and _fast.cpu_relax(100) is None
    with pytest.raises(ValueError):
        _fast.cpu_relax(-1)
    with pytest.raises(ValueError):
        _fast.cpu_relax(2**21)
    assert _fast.thread_yield() is None
    assert (_fast.LOCKED_BIT, _fast.PARKED_BIT, _fast.START_MASK) == (1, 2, 0x3FFFF)
