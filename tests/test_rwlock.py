"""RWLock: many readers at once, one writer alone, writers not starved by a
stream of readers, readers not starved by a stream of writers, re-entrant reads, timeouts, the
``read()`` / ``write()`` context managers; across threads and processes, both backends.
(Owner death of readers and writers: test_owner_death.py.)
"""
import multiprocessing
import os
import threading
import time

import pytest

import shmlot

from helpers.processes import join_all, start_python
from helpers.segments import attach_segment
from helpers.waiting import parked, wait_parked_at_least, wait_until

pytestmark = pytest.mark.timeout(60)

FORK = multiprocessing.get_context("fork")
READER = 4


def readers(rw):
    s = rw._words[0].load()
    return 0 if s & 1 else s // READER


# ---- sharing and exclusion -------------------------------------------------------------------

def _read_together(rw, meet):
    with rw.read():
        meet.wait(20)  # every party must be inside its read section at once


def test_many_readers_at_once_threads_and_processes(default_lot):
    """Four threads and three processes all inside read() at the same moment (a Barrier inside
    the read section only passes if they are)."""
    rw = shmlot.RWLock()
    meet = shmlot.Barrier(7)
    procs = [FORK.Process(target=_read_together, args=(rw, meet)) for _ in range(3)]
    for p in procs:
        p.start()
    threads = [threading.Thread(target=_read_together, args=(rw, meet)) for _ in range(4)]
    for t in threads:
        t.start()
    join_all(threads, procs)
    assert not meet.broken
    assert rw._words[0].load() == 0


def _writer_pairs(rw, seg_name, iters):
    seg = attach_segment(seg_name)
    for i in range(iters):
        with rw.write():
            a = seg.load(0)
            seg.store(0, a + 1)
            os.sched_yield()
            seg.store(8, a + 1)
    seg.close()


def _reader_checks(rw, seg_name, iters):
    seg = attach_segment(seg_name)
    bad = 0
    for _ in range(iters):
        with rw.read():
            a = seg.load(0)
            os.sched_yield()
            if seg.load(8) != a:
                bad += 1
    seg.close()
    assert bad == 0, f"{bad} torn reads"


def test_writer_excludes_readers_and_writers(default_lot, shm_segment):
    """Writers (a thread here, a process) keep two words equal, updating them one at a time;
    readers (threads, a process) never see them differ; the writers' count is exact."""
    rw = shmlot.RWLock()
    seg = shm_segment(64)
    iters = 300
    procs = [FORK.Process(target=_writer_pairs, args=(rw, seg.name, iters)),
             FORK.Process(target=_reader_checks, args=(rw, seg.name, iters))]
    for p in procs:
        p.start()
    threads = [threading.Thread(target=_writer_pairs, args=(rw, seg.name, iters))]
    threads += [threading.Thread(target=_reader_checks, args=(rw, seg.name, iters))
                for _ in range(2)]
    for t in threads:
        t.start()
    join_all(threads, procs, 40)
    assert seg.load(0) == seg.load(8) == 2 * iters
    assert rw._words[0].load() == 0
    assert not parked(default_lot)


def test_writer_blocks_readers_until_released(default_lot):
    rw = shmlot.RWLock()
    rw.acquire_write()
    got = []
    t = threading.Thread(target=lambda: got.append(rw.acquire_read(timeout=20)))
    t.start()
    wait_parked_at_least(default_lot, rw.key, 1)
    assert got == []
    rw.release_write()
    t.join(10)
    assert got == [True]
    assert readers(rw) == 1
    assert rw.acquire_write(blocking=False) is False  # that thread still reads


# ---- fairness ------------------------------------------------------------------------------------

def _stream_of_readers(rw, stop, hold_s):
    while not stop.is_set():
        with rw.read():
            time.sleep(hold_s)


def test_writer_not_starved_by_stream_of_readers(default_lot):
    """Readers in three threads and a process keep the lock read-held without a gap (their read
    sections overlap); a writer still gets in within a bounded time, because new readers queue
    behind a waiting writer."""
    rw = shmlot.RWLock()
    stop = shmlot.Event()
    p = FORK.Process(target=_stream_of_readers, args=(rw, stop, 0.005))
    p.start()
    threads = [threading.Thread(target=_stream_of_readers, args=(rw, stop, 0.005))
               for _ in range(3)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: readers(rw) >= 2, message="readers overlapping")
        for _ in range(3):
            t0 = time.monotonic()
            assert rw.acquire_write(timeout=5) is True
            waited = time.monotonic() - t0
            assert readers(rw) == 0
            rw.release_write()
            assert waited < 1.0, waited
            wait_until(lambda: readers(rw) >= 1, message="readers back")
    finally:
        stop.set()
        join_all(threads, [p], 10)


def _stream_of_writers(rw, stop):
    while not stop.is_set():
        with rw.write():
            time.sleep(0.002)


def test_reader_not_starved_by_stream_of_writers(default_lot):
    """Writers in two threads and a process take the write lock back to back; a reader still
    gets in within a bounded time (a writer's release lets the waiting readers in first)."""
    rw = shmlot.RWLock()
    stop = shmlot.Event()
    p = FORK.Process(target=_stream_of_writers, args=(rw, stop))
    p.start()
    threads = [threading.Thread(target=_stream_of_writers, args=(rw, stop)) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: rw._words[2].load() >= 1, message="writers queueing")
        for _ in range(5):
            t0 = time.monotonic()
            assert rw.acquire_read(timeout=5) is True
            waited = time.monotonic() - t0
            rw.release_read()
            assert waited < 1.0, waited
    finally:
        stop.set()
        join_all(threads, [p], 10)


def test_reentrant_read_while_writer_waits(default_lot):
    """A thread holding a read share may take another even though a writer waits (refusing it
    would deadlock); a new reader without a share queues behind the writer."""
    rw = shmlot.RWLock()
    rw.acquire_read()
    writer = threading.Thread(target=lambda: (rw.acquire_write(timeout=20), rw.release_write()))
    writer.start()
    wait_parked_at_least(default_lot, rw._wkey, 1)
    assert rw.acquire_read(timeout=2) is True  # re-entrant: granted at once
    other = []
    t = threading.Thread(target=lambda: other.append(rw.acquire_read(blocking=False)))
    t.start()
    t.join()
    assert other == [False]  # a fresh reader waits for the writer
    with rw.read():  # and the context manager re-enters too
        assert readers(rw) == 3
    rw.release_read()
    rw.release_read()
    writer.join(10)
    assert not writer.is_alive()
    assert rw._words[0].load() == 0


# ---- timeouts and contexts -------------------------------------------------------------------------

def test_waiting_for_itself_is_refused(default_lot):
    """There is no upgrade: a thread holding a read share that asks for the write lock (or one
    holding the write lock that asks for either side) would wait for itself forever, so a
    blocking or timed acquire raises RuntimeError; a non-blocking one just says False. Nothing
    is left changed, and the right order works."""
    rw = shmlot.RWLock()
    rw.acquire_read()
    with pytest.raises(RuntimeError, match="holding a read share"):
        rw.acquire_write()
    with pytest.raises(RuntimeError, match="holding a read share"):
        rw.acquire_write(timeout=0.05)
    assert rw.acquire_write(blocking=False) is False
    assert rw.acquire_read(blocking=False) is True  # reads stay re-entrant
    rw.release_read()
    rw.release_read()
    assert rw.acquire_write(timeout=1) is True
    for attempt in (rw.acquire_write, rw.acquire_read, lambda: rw.acquire_read(timeout=0.05)):
        with pytest.raises(RuntimeError, match="holding the write lock"):
            attempt()
    assert rw.acquire_write(blocking=False) is False
    assert rw.acquire_read(blocking=False) is False
    rw.release_write()
    assert [rw._words[i].load() for i in range(3)] == [0, 0, 0]
    assert not parked(default_lot)
    # another thread's write lock is waited for as usual
    with rw.write():
        t = threading.Thread(target=lambda: rw.acquire_read(timeout=0.05))
        t.start()
        t.join(10)


def test_timeouts(default_lot):
    rw = shmlot.RWLock()
    rw.acquire_write()
    out = []

    def timed(fn):
        t0 = time.monotonic()
        r = fn()
        out.append((r, time.monotonic() - t0))

    t = threading.Thread(target=timed, args=(lambda: rw.acquire_read(timeout=0.2),))
    t.start()
    t.join(10)
    t = threading.Thread(target=timed, args=(lambda: rw.acquire_write(timeout=0.2),))
    t.start()
    t.join(10)
    t = threading.Thread(target=timed, args=(lambda: rw.acquire_read(blocking=False),))
    t.start()
    t.join(10)
    assert [r for r, _ in out] == [False, False, False]
    assert all(0.18 <= dt < 1.5 for _, dt in out[:2]), out
    assert out[2][1] < 0.2
    assert not parked(default_lot)
    assert rw._words[1].load() == rw._words[2].load() == 0  # no waiter counted any more
    rw.release_write()
    rw.acquire_read()
    t = threading.Thread(target=timed, args=(lambda: rw.acquire_write(timeout=0.2),))
    t.start()
    t.join(10)
    assert out[3][0] is False and 0.18 <= out[3][1] < 1.5, out
    assert rw.acquire_write(timeout=0) is False  # (a timed wait for itself: RuntimeError)
    rw.release_read()
    assert rw._words[0].load() == 0


def test_writer_timeout_lets_queued_readers_in(default_lot):
    """A reader holds; a writer waits (with a timeout); a second reader queues behind the
    writer. When the writer gives up, the queued reader gets in at once."""
    rw = shmlot.RWLock()
    rw.acquire_read()
    wout, rout = [], []
    w = threading.Thread(target=lambda: wout.append(rw.acquire_write(timeout=0.5)))
    w.start()
    wait_parked_at_least(default_lot, rw._wkey, 1)
    r = threading.Thread(target=lambda: rout.append((rw.acquire_read(timeout=10),
                                                     time.monotonic())))
    r.start()
    wait_parked_at_least(default_lot, rw.key, 1)
    w.join(10)
    gave_up = time.monotonic()
    r.join(10)
    assert wout == [False]
    assert rout[0][0] is True
    assert rout[0][1] - gave_up < 0.5
    assert readers(rw) == 2


def test_context_managers(default_lot):
    rw = shmlot.RWLock()
    with rw.read() as same:
        assert same is rw
        assert readers(rw) == 1
    with rw.write():
        assert rw._words[0].load() & 1
        out = []
        t = threading.Thread(target=lambda: out.append(pytest.raises(TimeoutError,
                                                                     _enter, rw.read, 0.1)))
        t.start()
        t.join(10)
        assert len(out) == 1
    with pytest.raises(KeyError):
        with rw.write():
            raise KeyError
    with pytest.raises(KeyError):
        with rw.read():
            raise KeyError
    assert rw._words[0].load() == 0
    rw.acquire_read()
    t = threading.Thread(target=lambda: out.append(pytest.raises(TimeoutError,
                                                                 _enter, rw.write, 0.1)))
    t.start()
    t.join(10)
    assert len(out) == 2
    rw.release_read()


def _enter(cm, timeout):
    with cm(timeout=timeout):
        pass


def test_named_rwlock_across_unrelated_processes(default_lot):
    """A ``python -c`` process holds the write lock by name; readers here wait for it."""
    name = f"rw-{os.getpid()}-{time.monotonic_ns()}"
    rw = shmlot.RWLock(name=name)
    child = start_python(f"""
        import sys, shmlot
        rw = shmlot.RWLock(name={name!r})
        rw.acquire_write()
        print("writing", flush=True)
        sys.stdin.readline()
        rw.release_write()
        print(rw.acquire_read(timeout=5), flush=True)
        rw.release_read()
    """, env={"SHMLOT_LOT": default_lot.name, "SHMLOT_WAITER": default_lot.waiter})
    assert child.stdout.readline().strip() == "writing"
    assert rw.acquire_read(blocking=False) is False
    got = []
    t = threading.Thread(target=lambda: got.append(rw.acquire_read(timeout=20)))
    t.start()
    wait_parked_at_least(default_lot, rw.key, 1)
    child.stdin.write("\n")
    child.stdin.flush()
    t.join(20)
    assert got == [True]
    out, err = child.communicate(timeout=20)
    assert out.strip() == "True", err
    shmlot.unlink_object(name)


def test_reentrant_read_through_another_handle(default_lot):
    """Re-entrancy is per lock, not per handle: a second handle on the same named RWLock (or an
    unpickled copy) may re-read while a writer waits."""
    name = f"rw2-{os.getpid()}-{time.monotonic_ns()}"
    a = shmlot.RWLock(name=name)
    b = shmlot.RWLock(name=name)
    a.acquire_read()
    writer = threading.Thread(target=lambda: (b.acquire_write(timeout=20), b.release_write()))
    writer.start()
    wait_parked_at_least(default_lot, a._wkey, 1)
    assert b.acquire_read(timeout=2) is True
    b.release_read()
    a.release_read()
    writer.join(10)
    assert not writer.is_alive()
    shmlot.unlink_object(name)


def _child_read_shares(rw, out):
    out.value = rw._my_reads()
    # and so the child waits for the parent's share like anyone else, instead of refusing
    out.value += 10 * (rw.acquire_write(timeout=0.05) is False)


def test_fork_child_does_not_inherit_read_shares(default_lot):
    """A fork child of a thread holding a read share holds none itself (the share is the
    parent's, recorded under its pid): it waits for it like any other thread."""
    rw = shmlot.RWLock()
    rw.acquire_read()
    ctx = multiprocessing.get_context("fork")
    out = ctx.RawValue("q", -1)
    p = ctx.Process(target=_child_read_shares, args=(rw, out))
    p.start()
    p.join(20)
    assert p.exitcode == 0 and out.value == 10
    rw.release_read()
    assert rw.acquire_write(timeout=1) is True
    rw.release_write()
