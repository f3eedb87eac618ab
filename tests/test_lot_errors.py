"""Errors and bad input: every failure is a clear exception and loses or
corrupts nothing.

FileExistsError, LotNotFoundError (a FileNotFoundError), LotCorruptError naming what is wrong
(bad magic, version, sizes, truncation, broken queues), PermissionError for another user's 0600
lot, OSError at creation for a lot that does not fit, ValueError/TypeError for out-of-range keys,
tokens, timeouts, names, sizes and modes, and a hostile segment that makes calls fail instead of
crashing or hanging the process.
"""
import errno
import math
import os
import pickle
import select
import signal
import struct
import threading
import time

import pytest

import shmlot
from shmlot import LotCorruptError, LotNotFoundError, ParkingLot, FilterOp, RequeueOp
from shmlot._core import lib

from helpers import SHM_DIR
from helpers.layout import bucket_field, bucket_of, field, header_field, header_value
from helpers.processes import run_python
from helpers.waiting import ParkerThread, parked, wait_parked, wait_until

pytestmark = pytest.mark.timeout(60)

NOBODY = 65534

# header fields (sl_header): offset, struct format
H_MAGIC, H_VERSION, H_TOTAL = (header_field(f) for f in ("magic", "version", "total_size"))
H_NBUCKETS, H_SLOT_STRIDE = header_field("nbuckets"), header_field("slot_stride")
H_BUCKETS_OFF, H_SLOTS_OFF = header_field("buckets_off"), header_field("slots_off")
H_WAITER = header_field("waiter")
# sl_slot's queue link and bucket index
S_NEXT, S_BUCKET = field("sl_slot", "next")[0], field("sl_slot", "bucket")[0]


def poke(name, field, value):
    """Overwrite a header field of the segment ``name`` through the file in /dev/shm."""
    off, fmt = field
    with open(os.path.join(SHM_DIR, name), "r+b") as f:
        f.seek(off)
        f.write(struct.pack(fmt, value))


def peek(lot, field):
    off, fmt = field
    return struct.unpack_from(fmt, lot._buffer, off)[0]


# ---- create / attach / open ----------------------------------------------------------------

def test_create_existing_raises_file_exists(make_lot):
    lot = make_lot()
    with pytest.raises(FileExistsError) as info:
        ParkingLot.create(lot.name, waiter=lot.waiter)
    assert info.value.errno == errno.EEXIST
    assert lot.name in str(info.value)
    assert ParkingLot.attach(lot.name).info()["lot_id"] == lot.info()["lot_id"]  # untouched


def test_create_over_plain_segment_raises_file_exists(shm_segment):
    seg = shm_segment(4096)
    with pytest.raises(FileExistsError):
        ParkingLot.create(seg.name)
    assert os.path.getsize(os.path.join(SHM_DIR, seg.name)) == 4096  # untouched


def test_attach_missing_raises_lot_not_found(lot_name):
    name = lot_name()
    with pytest.raises(LotNotFoundError) as info:
        ParkingLot.attach(name)
    assert isinstance(info.value, FileNotFoundError)
    assert info.value.errno == errno.ENOENT
    assert name in str(info.value)
    assert not os.path.exists(os.path.join(SHM_DIR, name))  # attach never creates


# ---- LotCorruptError ------------------------------------------------------------------------

def test_garbage_segment_is_corrupt(shm_segment):
    seg = shm_segment(8192)
    seg.buf[:] = os.urandom(8192)
    seg.buf[0:8] = b"notalot!"
    with pytest.raises(LotCorruptError) as info:
        ParkingLot.attach(seg.name)
    assert isinstance(info.value, OSError)
    assert "bad magic" in str(info.value) and seg.name in str(info.value)
    with pytest.raises(LotCorruptError):
        ParkingLot.open(seg.name)  # open does not paper over it either


@pytest.mark.timeout(30)
@pytest.mark.parametrize("size", [100, 8192])
def test_unfinished_segment_is_corrupt(shm_segment, size):
    """All zeros (or too small for a header), and not marked "being created" by a shmlot
    creator: attach waits a bounded time, then gives up, and leaves the segment alone.
    (Segments a dead creator left: test_unfinished_lots.)"""
    seg = shm_segment(size)
    with pytest.raises(LotCorruptError) as info:
        ParkingLot.attach(seg.name)
    msg = str(info.value)
    assert ("too small" in msg) if size < 4096 else "bad magic" in msg
    assert os.path.exists(os.path.join(SHM_DIR, seg.name))


def test_empty_segment_is_a_dead_creators(shm_segment):
    """Size 0: a creator that died before its first write (no one else makes an empty
    segment); attach removes it."""
    seg = shm_segment(1)
    os.truncate(os.path.join(SHM_DIR, seg.name), 0)
    with pytest.raises(LotNotFoundError, match="never finished"):
        ParkingLot.attach(seg.name)
    assert not os.path.exists(os.path.join(SHM_DIR, seg.name))


@pytest.mark.parametrize("field, value, words", [
    (H_MAGIC, 0x1234, "bad magic"),
    (H_VERSION, 99, "layout version 99"),
    (H_NBUCKETS, 0, "buckets must be in"),
    (H_NBUCKETS, 2**21, "buckets must be in"),
    (H_TOTAL, 12345, "total size 12345"),
    (H_WAITER, 7, "unknown waiter backend 7"),
    (H_SLOT_STRIDE, 8, "record sizes"),
    (H_SLOTS_OFF, 2**40, "offsets"),
])
def test_bad_header_is_corrupt_and_named(make_lot, field, value, words):
    lot = make_lot()
    poke(lot.name, field, value)
    with pytest.raises(LotCorruptError) as info:
        ParkingLot.attach(lot.name)
    assert words in str(info.value), str(info.value)


def test_truncated_lot_is_corrupt(make_lot):
    lot = make_lot()
    size = lot.info()["size"]
    os.truncate(os.path.join(SHM_DIR, lot.name), size // 2)
    with pytest.raises(LotCorruptError) as info:
        ParkingLot.attach(lot.name)
    assert f"segment is {size // 2} bytes, header says {size}" in str(info.value)


def _bucket_field(lot, key, name):
    """Byte offset in the segment of field ``name`` of ``key``'s bucket."""
    return bucket_field(lot, bucket_of(lot, key), name)[0]


def test_broken_queue_raises_instead_of_crashing(lot):
    key = 0xBAD
    head = _bucket_field(lot, key, "head")
    struct.pack_into("<I", lot._buffer, head, 0xFFFFFFF0)  # a link far outside the slot pool
    for op in (lambda: lot.unpark_one(key), lambda: lot.unpark_all(key),
               lambda: lot.unpark_filter(key, lambda t: FilterOp.UNPARK),
               lambda: lot.unpark_requeue(key, key + 1, lambda: RequeueOp.REQUEUE_ALL)):
        with pytest.raises(LotCorruptError) as info:
            op()
        assert "out of range" in str(info.value)
    struct.pack_into("<I", lot._buffer, head, 0)  # repaired: all is well again
    assert lot.unpark_one(key).unparked_threads == 0


def test_queue_loop_raises_instead_of_hanging(lot):
    key = 0xBAD
    ts = [ParkerThread(lot, key).start() for _ in range(2)]
    p1, p2 = wait_parked(lot, key, 2)
    stride = peek(lot, H_SLOT_STRIDE)
    slots_off = peek(lot, H_SLOTS_OFF)
    next_field = slots_off + p2.index * stride + S_NEXT
    saved = struct.unpack_from("<I", lot._buffer, next_field)[0]
    assert saved == 0  # it is the tail
    struct.pack_into("<I", lot._buffer, next_field, p1.index + 1)  # tail -> head: a loop
    try:
        for op in (lambda: lot.unpark_filter(key, lambda t: FilterOp.SKIP),
                   lambda: lot.unpark_requeue(key, key + 1, lambda: RequeueOp.REQUEUE_ALL)):
            with pytest.raises(LotCorruptError) as info:
                op()
            assert "loop" in str(info.value)
    finally:
        struct.pack_into("<I", lot._buffer, next_field, saved)
    assert lot.unpark_all(key) == 2
    for t in ts:
        t.outcome()


def test_scribbled_slot_of_a_timing_out_parker_fails_cleanly(lot):
    """A parker whose slot was scribbled on (its bucket index) must not spin forever when it
    times out: it gets an error."""
    key = 0xBAD
    t = ParkerThread(lot, key, timeout=0.3).start()
    [p] = wait_parked(lot, key, 1)
    stride = peek(lot, H_SLOT_STRIDE)
    bucket_field = peek(lot, H_SLOTS_OFF) + p.index * stride + S_BUCKET
    struct.pack_into("<I", lot._buffer, bucket_field, 0xFFFF)
    t.join(10)
    assert not t.is_alive(), "the parker hangs in its timeout path"
    assert isinstance(t.error, LotCorruptError), repr(t.error)


@pytest.mark.timeout(120)
def test_random_scribbles_never_crash(waiter, lot_name):
    """Random bytes over the queues and slots (not the bucket locks: a scribbled lock word can
    name a live holder, which no check can tell from a slow one) make operations fail with an
    exception or succeed, never crash or hang the process. Runs in a child interpreter."""
    name = lot_name()
    code = """
        import os, random, struct, sys, threading
        from shmlot import ParkingLot, FilterOp, RequeueOp
        lot = ParkingLot.create(sys.argv[1], buckets=8, slots=16, waiter=sys.argv[2])
        buf = lot._buffer
        from helpers.layout import field, header_value
        lock = field("sl_bucket", "head")[0]  # the bucket's fields after its lock
        boff, bstride = header_value(lot, "buckets_off"), header_value(lot, "bucket_stride")
        soff, sstride = header_value(lot, "slots_off"), header_value(lot, "slot_stride")
        nslots = header_value(lot, "nslots")
        failures = 0
        for seed in range(300):
            rnd = random.Random(seed)
            for _ in range(rnd.randrange(1, 6)):
                if rnd.random() < 0.5:  # a bucket's head/tail/count/seed/fair timeout
                    off = (boff + rnd.randrange(8) * bstride + lock
                           + rnd.randrange(0, bstride - lock - 4))
                else:                   # anywhere in a slot
                    off = soff + rnd.randrange(nslots) * sstride + rnd.randrange(0, sstride - 4)
                val = rnd.choice([0, 1, 2, 3, nslots, nslots + 1, 0xFFFFFFFF,
                                  rnd.getrandbits(32)])
                struct.pack_into("<I", buf, off, val)
            key = rnd.randrange(64)
            ops = [lambda: lot.park(key, timeout=0.001),
                   lambda: lot.unpark_one(key), lambda: lot.unpark_all(key),
                   lambda: lot.unpark_filter(key, lambda t: FilterOp.UNPARK),
                   lambda: lot.unpark_requeue(key, key + 1, lambda: RequeueOp.REQUEUE_ALL),
                   lambda: lot.info(), lambda: lot.reap()]
            for op in rnd.sample(ops, len(ops)):
                try:
                    op()
                except Exception:
                    failures += 1
        print("ok", failures)
        lot.unlink()
    """
    out = run_python(code, name, waiter, timeout=100).stdout
    assert out.startswith("ok")


# ---- PermissionError ------------------------------------------------------------------------

class ForkedAs:
    """``fn(*args)`` in a forked child that first drops to ``uid`` (no exec: the interpreter and
    the checkout need not be readable by that user). ``.result(timeout)`` returns what ``fn``
    returned, or ("raised", type name, errno, message)."""

    def __init__(self, uid, fn, *args):
        self._r, w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # child
            code = 0
            try:
                os.close(self._r)
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)
                out = ("returned", fn(*args))
            except BaseException as exc:  # noqa: B902 - reported to the parent
                out = ("raised", type(exc).__name__, getattr(exc, "errno", None), str(exc))
                code = 1
            try:
                data = pickle.dumps(out)
            except Exception as exc:
                data = pickle.dumps(("raised", "PicklingError", None, repr(exc)))
            view = memoryview(data)
            while view:
                view = view[os.write(w, view):]
            os._exit(code)
        os.close(w)

    def result(self, timeout=30):
        deadline = time.monotonic() + timeout
        chunks = []
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self._r], [], [], left)[0]:
                    os.kill(self.pid, signal.SIGKILL)
                    pytest.fail(f"child (uid-dropped) still running after {timeout} s")
                chunk = os.read(self._r, 65536)
                if not chunk:
                    break
                chunks.append(chunk)
        finally:
            os.close(self._r)
            os.waitpid(self.pid, 0)
        out = pickle.loads(b"".join(chunks))
        return out[1] if out[0] == "returned" else out


@pytest.fixture
def as_root():
    if os.geteuid() != 0:
        pytest.skip("needs root to act as another user (uid nobody)")


def _try_as_other_user(name):
    assert os.getuid() == NOBODY
    out = []
    for how in (ParkingLot.attach, ParkingLot.open):
        try:
            how(name)
        except PermissionError as exc:
            out.append(("PermissionError", exc.errno, str(exc)))
        else:
            out.append(("attached",))
    try:
        ParkingLot.create(name)
    except FileExistsError:
        out.append(("FileExistsError",))
    return out


@pytest.mark.timeout(60)
def test_other_users_0600_lot_is_permission_error(make_lot, as_root):
    lot = make_lot()
    out = ForkedAs(NOBODY, _try_as_other_user, lot.name).result()
    assert [o[0] for o in out] == ["PermissionError", "PermissionError", "FileExistsError"], out
    assert out[0][1] == errno.EACCES
    assert lot.name in out[0][2]


def _park_then_unpark_as_other_user(name):
    lot = ParkingLot.attach(name)
    r = lot.park(1, timeout=30)
    n = lot.unpark_one(2, lambda res: 8).unparked_threads
    return r.is_unparked, r.token, n


@pytest.mark.timeout(60)
def test_shared_mode_lot_works_across_users(make_lot, as_root):
    """mode=0o666: another user attaches, parks and is unparked by root, and unparks root."""
    lot = make_lot(mode=0o666)
    child = ForkedAs(NOBODY, _park_then_unpark_as_other_user, lot.name)
    try:
        [p] = wait_parked(lot, 1, 1)
        assert p.pid == child.pid
        t = ParkerThread(lot, 2, timeout=30).start()
        wait_parked(lot, 2, 1)
        assert lot.unpark_one(1, lambda r: 7).unparked_threads == 1
    finally:
        out = child.result()
    assert out == (True, 7, 1)
    assert t.outcome().token == 8


# ---- lot too big --------------------------------------------------------------------------

def _max_lot_size(lot):
    """Bytes of the biggest lot ParkingLot.create accepts (every count at its 2**20 maximum),
    from the record sizes of ``lot``."""
    strides = sum(header_value(lot, f"{kind}_stride")
                  for kind in ("bucket", "slot", "object", "hold"))
    return lib.SL_HEADER_SIZE + (1 << 20) * strides


@pytest.mark.timeout(60)
def test_lot_that_does_not_fit_fails_at_creation(waiter, lot_name, lot):
    """The biggest lot allowed (~544 MiB) fits in this machine's /dev/shm, so the test makes the
    space run out with RLIMIT_FSIZE in a child instead: creation must fail there and then with
    an OSError (never SIGBUS later) and leave nothing behind."""
    name = lot_name()
    code = """
        import os, resource, sys
        from shmlot import ParkingLot
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
        try:
            ParkingLot.create(sys.argv[1], buckets=4096, slots=4096, waiter=sys.argv[2])
        except OSError as e:
            print(type(e).__name__, e.errno, e)
        else:
            print("created")
        print(os.path.exists("/dev/shm/" + sys.argv[1]))
    """
    out = run_python(code, name, waiter).stdout.splitlines()
    assert out[0].split()[:2] == ["OSError", str(errno.EFBIG)], out
    assert "cannot allocate" in out[0] and name in out[0]
    assert out[1] == "False"
    st = os.statvfs(SHM_DIR)
    free = st.f_bavail * st.f_frsize
    if free < _max_lot_size(lot):
        # this machine's /dev/shm is small enough to test the real thing
        with pytest.raises(OSError) as info:
            ParkingLot.create(lot_name(), buckets=1 << 20, slots=1 << 20, objects=1 << 20,
                              holds=1 << 20, waiter=waiter)
        assert info.value.errno == errno.ENOSPC


# ---- bad arguments ------------------------------------------------------------------------

BAD_U64 = [(-1, ValueError), (2**64, ValueError), (1.0, TypeError), ("1", TypeError),
           (None, TypeError), (True, TypeError)]


@pytest.mark.parametrize("bad, exc", BAD_U64)
def test_bad_keys(lot, bad, exc):
    ok = lambda: True  # noqa: E731
    calls = [
        lambda: lot.park(bad, timeout=0),
        lambda: lot.unpark_one(bad),
        lambda: lot.unpark_all(bad),
        lambda: lot.unpark_filter(bad, lambda t: FilterOp.UNPARK),
        lambda: lot.unpark_requeue(bad, 1, lambda: RequeueOp.ABORT),
        lambda: lot.unpark_requeue(1, bad, lambda: RequeueOp.ABORT),
    ]
    for call in calls:
        with pytest.raises(exc):
            call()
    del ok
    assert lot.info()["slots_free"] == lot.slots and parked(lot) == []


@pytest.mark.parametrize("bad, exc", BAD_U64)
def test_bad_tokens(lot, bad, exc):
    with pytest.raises(exc):
        lot.park(1, park_token=bad, timeout=0)
    with pytest.raises(exc):
        lot.unpark_all(1, bad)
    assert lot.info()["slots_free"] == lot.slots


@pytest.mark.parametrize("bad, exc", [(-1, ValueError), (-0.001, ValueError),
                                      (-math.inf, ValueError), (math.nan, ValueError),
                                      ("1", TypeError), (True, TypeError), ([], TypeError)])
def test_bad_timeouts(lot, bad, exc):
    validated = []
    with pytest.raises(exc):
        lot.park(1, validate=lambda: validated.append(1) or True, timeout=bad)
    assert validated == [] and lot.info()["slots_free"] == lot.slots


def test_infinite_and_huge_timeouts_are_fine(lot):
    for timeout in (math.inf, 1e300, 10**30):
        t = ParkerThread(lot, 1, timeout=timeout).start()
        wait_parked(lot, 1, 1)
        lot.unpark_one(1, lambda r: 4)
        assert t.outcome().token == 4


@pytest.mark.parametrize("bad, exc", [("", ValueError), ("a/b", ValueError), ("/x", ValueError),
                                      ("x" * (lib.SL_NAME_MAX + 1), ValueError),
                                      ("é" * (lib.SL_NAME_MAX // 2 + 1), ValueError),
                                      ("a\0b", ValueError), (None, TypeError), (b"x", TypeError),
                                      (7, TypeError)])
def test_bad_names(bad, exc):
    for call in (ParkingLot.create, ParkingLot.attach, ParkingLot.open):
        with pytest.raises(exc):
            call(bad)


def test_longest_name_is_fine(make_lot, lot_name):
    base = lot_name()
    name = base + "x" * (lib.SL_NAME_MAX - len(base))
    lot = make_lot(name)
    assert ParkingLot.attach(name).name == name


@pytest.mark.parametrize("kwargs, exc", [
    ({"buckets": 0}, ValueError), ({"buckets": 2**20 + 1}, ValueError),
    ({"slots": 0}, ValueError), ({"slots": 2**20 + 1}, ValueError),
    ({"buckets": 1.5}, TypeError), ({"slots": "4"}, TypeError), ({"slots": True}, TypeError),
    ({"mode": -1}, ValueError), ({"mode": 0o1000}, ValueError), ({"mode": "600"}, TypeError),
    ({"waiter": "spin"}, ValueError), ({"waiter": 1}, TypeError),
])
def test_bad_create_arguments_create_nothing(lot_name, kwargs, exc):
    name = lot_name()
    with pytest.raises(exc):
        ParkingLot.create(name, **kwargs)
    assert not os.path.exists(os.path.join(SHM_DIR, name))


def test_closed_lot_refuses_operations(make_lot):
    lot = make_lot()
    lot.close()
    for call in (lambda: lot.park(1, timeout=0), lambda: lot.unpark_one(1),
                 lambda: lot.unpark_all(1), lambda: lot.unpark_filter(1, lambda t: FilterOp.SKIP),
                 lambda: lot.unpark_requeue(1, 2, lambda: RequeueOp.ABORT), lambda: lot.info()):
        with pytest.raises(ValueError, match="closed"):
            call()


def test_errors_are_exported():
    assert issubclass(shmlot.LotNotFoundError, FileNotFoundError)
    assert issubclass(shmlot.LotCorruptError, OSError)
    assert issubclass(shmlot.LotFullError, RuntimeError)
    assert issubclass(shmlot.OwnerDiedError, RuntimeError)


def test_failed_operations_leave_the_lot_consistent(lot):
    """After a pile of refused calls, the lot still parks and unparks normally."""
    for bad in (-1, 2**64, "k"):
        for call in (lambda: lot.park(bad), lambda: lot.unpark_one(bad)):
            with pytest.raises((ValueError, TypeError)):
                call()
    t = ParkerThread(lot, 3).start()
    wait_parked(lot, 3, 1)
    assert lot.unpark_one(3).unparked_threads == 1
    t.outcome()
    wait_until(lambda: lot.info()["slots_free"] == lot.slots, message="slots freed")
    assert threading.active_count() >= 1


# ---- the core's error messages and deadlines ----------------------------------------------

def test_error_message_belongs_to_its_own_call(lot):
    """Each call of the core starts with a clean message: after a failure, a call that succeeds
    leaves none, and the next failure carries only its own."""
    from shmlot._core import ffi, lib
    key = 0xBAD
    head = _bucket_field(lot, key, "head")
    struct.pack_into("<I", lot._buffer, head, 0xFFFFFFF0)
    with pytest.raises(LotCorruptError, match="out of range"):
        lot.unpark_one(key)
    struct.pack_into("<I", lot._buffer, head, 0)
    assert lot.unpark_one(key).unparked_threads == 0
    assert ffi.string(lib.sl_last_error()) == b""
    assert lib.sl_futex_wait(lot._h(), 2**31, 0) == lib.SL_ECORRUPT
    assert ffi.string(lib.sl_last_error()) == b"slot index 2147483648 out of range"
    assert lib.sl_object_kind(lot._h(), 0) == 0
    assert ffi.string(lib.sl_last_error()) == b""


@pytest.mark.timeout(30)
def test_semaphore_wait_without_deadline_waits(make_lot):
    """sl_sem_wait takes a deadline of 0 as "none" (api.h), not as one long past."""
    import posix_ipc
    from shmlot._core import lib
    from shmlot._engine import sem_name
    lot = make_lot(waiter="semaphore")
    lot_id = lot.info()["lot_id"]
    name = sem_name(lot_id, 0)
    sem = posix_ipc.Semaphore(name, posix_ipc.O_CREX, initial_value=0)
    try:
        timer = threading.Timer(0.3, sem.release)
        timer.start()
        t0 = time.monotonic()
        assert lib.sl_sem_wait(lot._h(), 0, lot_id, 0) == 0
        assert time.monotonic() - t0 >= 0.25
        timer.join()
    finally:
        sem.unlink()
        sem.close()
