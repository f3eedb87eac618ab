"""One word, one queue: a key names a word by the object mapped (device, inode) and the offset in
it, so a segment re-created under an old name gets new keys; ``Kind.at`` takes what users hold
(``shm.buf``, an ``mmap`` of a data file opened by unrelated processes, an anonymous ``mmap``
shared by fork, a NumPy array over shared memory); an explicit ``key=`` is checked at once; and a
lock is handed over only to a waiter parked for that same word, even when two words share a
key. Real processes, both backends."""
import mmap
import multiprocessing
import os
import pickle

import pytest

import shmlot

from helpers.lots import new_lot_name
from helpers.processes import run_python, start_python
from helpers.waiting import wait_parked_at_least

pytestmark = pytest.mark.timeout(90)

FORK = multiprocessing.get_context("fork")


def _shm(name=None, size=4096):
    from multiprocessing import shared_memory
    return shared_memory.SharedMemory(name=name, create=True, size=size)


def _close(shm):
    """Unlink; close too unless a failed test's locks still use the mapping."""
    try:
        shm.close()
    except BufferError:
        pass
    shm.unlink()


def _readline(proc):
    line = proc.stdout.readline()
    assert line, proc.stderr.read()
    return line.strip()


# ---- keys from the mapped object -------------------------------------------------------------

def test_recreated_segment_gets_new_keys(default_lot):
    """A process maps a segment and holds a Lock in it; the name is unlinked and re-created
    while that process still maps the old segment. The new segment's words get other keys (in
    a second process as here), so the old process's lock and the new one's are two locks with
    two queues; each process's keys agree with ``key_for`` there."""
    name = new_lot_name("seg-")
    old = _shm(name)
    holder = start_python("""
        import sys, shmlot
        from shmlot._placement import _attach_shm  # not unlinked by a resource tracker
        shm = _attach_shm(sys.argv[1])
        lk = shmlot.Lock.at(shm, 8)
        lk.acquire()
        print(lk.key, shmlot.key_for(shm, 8), shmlot.key_for(shm.buf, 8), flush=True)
        sys.stdin.readline()
        print(shmlot.key_for(shm, 8), lk.locked(), flush=True)
        lk.release()
    """, name, env={"SHMLOT_LOT": default_lot.name, "SHMLOT_WAITER": default_lot.waiter})
    k_old, k_old2, k_old3 = map(int, _readline(holder).split())
    assert k_old == k_old2 == k_old3 == shmlot.key_for(old, 8) == shmlot.key_for(name, 8)
    old.close()
    old.unlink()
    new = _shm(name)  # same name, same size: another segment
    try:
        k_new = shmlot.key_for(new, 8)
        assert k_new == shmlot.key_for(name, 8) != k_old
        r = run_python("""
            import sys, shmlot
            from shmlot._placement import _attach_shm  # not unlinked by a resource tracker
            shm = _attach_shm(sys.argv[1])
            lk = shmlot.Lock.at(shm, 8)
            print(lk.key, lk.acquire(timeout=5), flush=True)  # another lock: free
            lk.release()
        """, name, env={"SHMLOT_LOT": default_lot.name, "SHMLOT_WAITER": default_lot.waiter})
        key, got = r.stdout.split()
        assert int(key) == k_new and got == "True"
        holder.stdin.write("\n")
        holder.stdin.flush()
        still, locked = _readline(holder).split()
        assert int(still) == k_old and locked == "True"  # the old mapping keeps its keys
        assert holder.wait(20) == 0
    finally:
        new.close()
        new.unlink()


def test_explicit_key_is_checked_at_construction(default_lot):
    """A bad ``key=`` fails at once (it used to fail only under contention, leaving the lock
    stuck)."""
    shm = _shm()
    try:
        for kind in ("Lock", "RLock", "RWLock", "Event", "Semaphore"):
            cls = getattr(shmlot, kind)
            for bad, exc in ((-1, ValueError), (2**64, ValueError), (1.5, TypeError),
                             ("k", TypeError), (True, TypeError)):
                with pytest.raises(exc):
                    cls.at(shm, 8, key=bad)
            assert cls.at(shm, 8, key=2**64 - 1).key == 2**64 - 1
    finally:
        shm.close()
        shm.unlink()


# ---- Kind.at on what users hold -----------------------------------------------------------------

def test_at_on_a_memoryview_of_shared_memory(default_lot):
    """``Lock.at(shm.buf, 8)`` is the same lock as ``Lock.at(shm, 8)`` in an unrelated process
    that opens the segment by name."""
    shm = _shm()
    try:
        lk = shmlot.Lock.at(shm.buf, 8)
        assert lk.key == shmlot.key_for(shm, 8) == shmlot.Lock.at(shm, 8).key
        lk.acquire()
        child = start_python("""
            import sys, shmlot
            from shmlot._placement import _attach_shm  # not unlinked by a resource tracker
            shm = _attach_shm(sys.argv[1])
            lk = shmlot.Lock.at(shm, 8)
            print(lk.acquire(blocking=False), flush=True)
            print(lk.acquire(timeout=30), flush=True)
            lk.release()
        """, shm.name, env={"SHMLOT_LOT": default_lot.name, "SHMLOT_WAITER": default_lot.waiter})
        assert _readline(child) == "False"
        wait_parked_at_least(default_lot, lk.key, 1)
        lk.release()
        assert _readline(child) == "True"
        assert child.wait(20) == 0
        del lk
    finally:
        shm.close()
        shm.unlink()


_FILE_CHILD = """
    import mmap, os, sys, shmlot
    fd = os.open(sys.argv[1], os.O_RDWR)
    mm = mmap.mmap(fd, 4096)
    lk = shmlot.Lock.at(mm, 64)
    st = os.fstat(fd)
    print(lk.key, flush=True)
    if sys.argv[2] == "hold":
        lk.acquire()
        print("held", flush=True)
        sys.stdin.readline()
        lk.release()
    else:
        print(lk.acquire(blocking=False), flush=True)
        print(lk.acquire(timeout=30), flush=True)
        lk.release()
"""


def test_at_on_an_mmap_of_a_data_file_in_unrelated_processes(default_lot, tmp_path):
    """Locks inside a memory-mapped data file: two unrelated processes map the file; the word's
    key comes from the file (device, inode) and the offset, so both name the same lock."""
    path = tmp_path / "data.bin"
    path.write_bytes(b"\0" * 4096)
    env = {"SHMLOT_LOT": default_lot.name, "SHMLOT_WAITER": default_lot.waiter}
    holder = start_python(_FILE_CHILD, path, "hold", env=env)
    key = int(_readline(holder))
    assert _readline(holder) == "held"
    st = os.stat(path)
    with open(path, "r+b") as f, mmap.mmap(f.fileno(), 4096) as mm:
        assert shmlot.key_for(mm, 64) == key
    waiter = start_python(_FILE_CHILD, path, "wait", env=env)
    assert int(_readline(waiter)) == key
    assert _readline(waiter) == "False"
    wait_parked_at_least(default_lot, key, 1)
    holder.stdin.write("\n")
    holder.stdin.flush()
    assert _readline(waiter) == "True"
    assert holder.wait(20) == 0 and waiter.wait(20) == 0
    assert st.st_ino == os.stat(path).st_ino


def _fork_child_on_anonymous_mmap(mm, q):
    lk = shmlot.Lock.at(mm, 0)
    q.put(lk.key)
    q.put(lk.acquire(blocking=False))
    q.put(lk.acquire(timeout=30))
    lk.release()


def test_at_on_an_anonymous_mmap_shared_by_fork(default_lot):
    """An anonymous shared mmap inherited across fork: parent and child compute the same key
    (its mapping has an inode of its own) and share the lock."""
    mm = mmap.mmap(-1, 4096)
    lk = shmlot.Lock.at(mm, 0)
    assert lk.key == shmlot.key_for(mm, 0)
    lk.acquire()
    q = FORK.Queue()
    p = FORK.Process(target=_fork_child_on_anonymous_mmap, args=(mm, q))
    p.start()
    assert q.get(timeout=20) == lk.key
    assert q.get(timeout=20) is False
    wait_parked_at_least(default_lot, lk.key, 1)
    lk.release()
    assert q.get(timeout=20) is True
    p.join(20)
    assert p.exitcode == 0


def test_at_on_a_numpy_array_over_shared_memory(default_lot):
    """A NumPy array over a SharedMemory: the word at byte 8 of the array is the word at byte
    8 + the array's offset in the segment (an optional extra: skipped without numpy)."""
    np = pytest.importorskip("numpy")
    shm = _shm()
    try:
        whole = np.ndarray((512,), dtype=np.uint64, buffer=shm.buf)
        part = whole[16:]  # starts at byte 128 of the segment
        lk = shmlot.Lock.at(part, 8)
        assert lk.key == shmlot.key_for(shm, 136) == shmlot.Lock.at(shm, 136).key
        lk.acquire()
        r = run_python("""
            import sys, shmlot
            from shmlot._placement import _attach_shm  # not unlinked by a resource tracker
            shm = _attach_shm(sys.argv[1])
            print(shmlot.Lock.at(shm, 136).acquire(blocking=False))
        """, shm.name, env={"SHMLOT_LOT": default_lot.name, "SHMLOT_WAITER": default_lot.waiter})
        assert r.stdout.strip() == "False"
        lk.release()
    finally:
        # not shm.close(): NumPy keeps no buffer export, so closing would unmap the memory
        # under the arrays (which a failure's traceback keeps alive); the mapping goes with shm
        shm.unlink()


def test_private_memory_needs_a_key(default_lot):
    """Memory private to this process (a bytearray) cannot be named by another process: no key
    is made up for it (TypeError); with ``key=`` it works between this process's threads."""
    buf = bytearray(64)
    with pytest.raises(TypeError, match="not in shared memory"):
        shmlot.Lock.at(buf, 8)
    lk = shmlot.Lock.at(buf, 8, key=12345)
    assert lk.acquire(blocking=False) and not lk.acquire(blocking=False)
    lk.release()


# ---- a hand-off goes only to a waiter of the same word ----------------------------------------

def _acquire_and_report(lk, tag, out):
    got = lk.acquire(timeout=30)
    out.put((tag, got))
    if got:
        lk.release()


def test_two_words_sharing_a_key_never_cross_deliver(default_lot):
    """``Lock.at(buf_a, 0, key=1)`` and ``Lock.at(buf_b, 0, key=1)``, both held here; a process
    waits for B, then another for A (one queue: the same key). Releasing A wakes A's waiter
    and hands A over (the lot is fresh, so this first unlock is a fair hand-off); B's waiter
    stays queued until B is released (before, it got the hand-off of A, and its acquire of B
    returned True while B was held here)."""
    a, b = _shm(), _shm()
    try:
        lock_a = shmlot.Lock.at(a, 0, key=1)
        lock_b = shmlot.Lock.at(b, 0, key=1)
        assert lock_a.key == lock_b.key == 1
        lock_a.acquire()
        lock_b.acquire()
        out = FORK.Queue()
        pb = FORK.Process(target=_acquire_and_report, args=(lock_b, "B", out))
        pb.start()
        wait_parked_at_least(default_lot, 1, 1)
        pa = FORK.Process(target=_acquire_and_report, args=(lock_a, "A", out))
        pa.start()
        wait_parked_at_least(default_lot, 1, 2)
        lock_a.release()
        assert out.get(timeout=20) == ("A", True)
        assert lock_b._owner() == (os.getpid(), lock_b._owner()[1])  # still ours
        wait_parked_at_least(default_lot, 1, 1)  # B's waiter: still queued
        assert out.empty()
        lock_b.release()
        assert out.get(timeout=20) == ("B", True)
        for p in (pa, pb):
            p.join(20)
            assert p.exitcode == 0
        del lock_a, lock_b
    finally:
        for s in (a, b):
            _close(s)


def _cond_wait(cond, out):
    with cond:
        out.put(("waiting", None))
        out.put(("notified", cond.wait(30)))


def test_condition_waiters_requeued_onto_a_shared_key_get_only_their_lock(default_lot):
    """A Condition on lock A (key 7) whose waiter a notify moves onto A's queue, where a waiter
    of lock B (also key 7) is queued ahead of it: releasing A hands A to the Condition's
    waiter, never to B's (which would have its acquire of B return True while B is held)."""
    a, b = _shm(), _shm()
    try:
        lock_a = shmlot.Lock.at(a, 0, key=7)
        lock_b = shmlot.Lock.at(b, 0, key=7)
        cond = shmlot.Condition(lock_a)
        out = FORK.Queue()
        pc = FORK.Process(target=_cond_wait, args=(cond, out))
        pc.start()
        assert out.get(timeout=20) == ("waiting", None)
        wait_parked_at_least(default_lot, cond.key, 1)
        lock_b.acquire()
        pb = FORK.Process(target=_acquire_and_report, args=(lock_b, "B", out))
        pb.start()
        wait_parked_at_least(default_lot, 7, 1)
        with cond:
            cond.notify()  # moves the waiter onto key 7, behind B's waiter
            wait_parked_at_least(default_lot, 7, 2)
        assert out.get(timeout=20) == ("notified", True)
        assert out.empty()
        assert lock_b._owner()[0] == os.getpid()
        lock_b.release()
        assert out.get(timeout=20) == ("B", True)
        for p in (pb, pc):
            p.join(20)
            assert p.exitcode == 0
        del lock_a, lock_b, cond
    finally:
        for s in (a, b):
            _close(s)


def test_pickled_handle_keeps_an_explicit_key(default_lot):
    """A lock placed in a SharedMemory with ``key=`` pickles with that key (a receiver that
    computed the natural key would park on another queue than the sender's)."""
    shm = _shm()
    try:
        lk = shmlot.Lock.at(shm, 8, key=99)
        natural = shmlot.Lock.at(shm, 16)
        r = run_python(f"""
            import pickle
            lk, natural = pickle.loads(bytes.fromhex({pickle.dumps((lk, natural)).hex()!r}))
            print(lk.key, lk._place.word, natural.key)
        """, env={"SHMLOT_LOT": default_lot.name, "SHMLOT_WAITER": default_lot.waiter})
        key, word, natural_key = map(int, r.stdout.split())
        assert key == 99 and word == shmlot.key_for(shm, 8) == lk._place.word
        assert natural_key == shmlot.key_for(shm, 16) == natural.key
        del lk, natural
    finally:
        _close(shm)
