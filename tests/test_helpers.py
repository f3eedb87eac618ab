"""The test helpers (tests/helpers) do what the suite relies on: names are unique, a killed child
is reaped, a hanging child is killed at its timeout, segments are shared, the default lot reaches
children."""
import multiprocessing
import os
import time

import psutil
import pytest

import shmlot
from shmlot import ParkingLot

from helpers import SHM_DIR
from helpers.kills import kill_all, kill_and_reap
from helpers.lots import NAME_PREFIX, fresh_default_lot, new_lot_name, remove_name
from helpers.processes import child_env, python_env, run_procs, run_python, start_python
from helpers.segments import Segment, attach_segment
from helpers.waiting import (ParkerThread, park_in_order, raised_in_thread, wait_parked,
                             wait_parked_at_least, wait_until)

pytestmark = pytest.mark.timeout(60)

FORK = multiprocessing.get_context("fork")
SLEEPER = "import sys, time; print('up', flush=True); time.sleep(60)"


def gone(pid):
    """No process (not even a zombie) has ``pid``."""
    return not psutil.pid_exists(pid)


def test_new_lot_names_are_unique_and_under_the_session_prefix():
    names = [new_lot_name("tag-") for _ in range(10_000)]
    assert len(set(names)) == len(names)
    assert all(n.startswith(NAME_PREFIX + "tag-") for n in names)
    assert all(len(n) <= 63 and "/" not in n for n in names)


def test_lot_name_factory_issues_unique_names(lot_name):
    names = {lot_name() for _ in range(1000)}
    assert len(names) == 1000


def test_remove_name_removes_a_lot_and_a_plain_segment(lot_name):
    lot = ParkingLot.create(lot_name(), buckets=16, slots=16, waiter="semaphore")
    seg = Segment(lot_name("seg-"), create=True, size=64)
    seg.close()
    for name in (lot.name, seg.name):
        assert os.path.exists(os.path.join(SHM_DIR, name))
        remove_name(name)
        assert not os.path.exists(os.path.join(SHM_DIR, name))
    remove_name(lot.name)  # a name already gone is no error


def test_kill_and_reap_leaves_no_process_of_a_python_child():
    proc = start_python(SLEEPER)
    assert proc.stdout.readline().strip() == "up"
    before = time.monotonic()
    killed_at = kill_and_reap(proc)
    assert before <= killed_at <= time.monotonic()
    assert gone(proc.pid)


def test_kill_and_reap_leaves_no_process_of_a_forked_child():
    p = FORK.Process(target=time.sleep, args=(60,), daemon=True)
    p.start()
    kill_and_reap(p)
    assert p.exitcode == -9 and gone(p.pid)


def test_kill_and_reap_fails_on_a_child_that_was_not_killed():
    proc = start_python("pass")
    # exited, not yet reaped: the SIGKILL reaches a zombie and changes nothing
    wait_until(lambda: psutil.Process(proc.pid).status() == psutil.STATUS_ZOMBIE, 30, "exit")
    with pytest.raises(AssertionError, match="not by SIGKILL"):
        kill_and_reap(proc)
    assert gone(proc.pid)


def test_kill_all_kills_what_runs_and_skips_the_rest():
    running = start_python(SLEEPER)
    assert running.stdout.readline().strip() == "up"
    finished = start_python("pass")
    finished.wait(30)
    forked = FORK.Process(target=time.sleep, args=(60,), daemon=True)
    forked.start()
    kill_all(running, None, finished, forked)
    assert running.returncode == -9 and finished.returncode == 0 and forked.exitcode == -9
    assert gone(running.pid) and gone(forked.pid)


def test_run_python_kills_a_hanging_child_at_its_timeout():
    before = set(psutil.Process().children())
    t0 = time.monotonic()
    with pytest.raises(pytest.fail.Exception, match="timed out after 1 s"):
        run_python("import time; time.sleep(60)", timeout=1)
    assert time.monotonic() - t0 < 20
    assert set(psutil.Process().children()) <= before


def test_run_python_fails_on_a_nonzero_exit_unless_told():
    with pytest.raises(pytest.fail.Exception, match="exited with 3"):
        run_python("import sys; print('out'); sys.exit(3)")
    r = run_python("import sys; print('out'); sys.exit(3)", check=False)
    assert r.returncode == 3 and r.stdout == "out\n"


def _exit_with(code):
    os._exit(code)


def test_run_procs_kills_a_hanging_child_at_its_timeout():
    t0 = time.monotonic()
    with pytest.raises(AssertionError, match="still running after 1 s"):
        run_procs("fork", time.sleep, [(60,)], timeout=1)
    assert time.monotonic() - t0 < 20
    assert multiprocessing.active_children() == []


def test_run_procs_fails_on_a_nonzero_exit():
    with pytest.raises(AssertionError):
        run_procs(FORK, _exit_with, [(0,), (3,)])
    procs = run_procs("spawn", _exit_with, [(0,)] * 2)
    assert [p.exitcode for p in procs] == [0, 0]


def test_wait_until_returns_the_value_or_fails_at_its_deadline():
    assert wait_until(lambda: 7) == 7
    t0 = time.monotonic()
    with pytest.raises(pytest.fail.Exception, match="the thing"):
        wait_until(lambda: False, timeout=0.2, message="the thing")
    assert 0.2 <= time.monotonic() - t0 < 5


def _add(name, n):
    seg = attach_segment(name)
    for _ in range(n):
        seg.fetch_add(8, 1)
    seg.close()


def test_segment_atomics_are_shared_with_children(shm_segment):
    seg = shm_segment(64)
    seg.store(0, -5)
    assert seg.load(0) == -5 and seg.fetch_add(0, 7) == -5 and seg.load(0) == 2
    assert seg.key(8) == shmlot.key_for(seg.name, 8)
    run_python(f"""
        from helpers.segments import attach_segment
        seg = attach_segment({seg.name!r})
        for _ in range(2000):
            seg.fetch_add(8, 1)
        seg.close()
    """, timeout=60)
    run_procs("fork", _add, [(seg.name, 2000)] * 2)
    assert seg.load(8) == 6000


def test_fresh_default_lot_is_the_default_here_and_in_children():
    saved = {k: os.environ.get(k) for k in ("SHMLOT_LOT", "SHMLOT_WAITER")}
    with fresh_default_lot("semaphore") as lot:
        assert shmlot.default_lot() is lot and lot.waiter == "semaphore"
        out = run_python("import shmlot; l = shmlot.default_lot(); print(l.name, l.waiter)")
        assert out.stdout.split() == [lot.name, "semaphore"]
        env = child_env(lot, {"X_EXTRA": "1"})
        assert env["SHMLOT_LOT"] == lot.name and env["X_EXTRA"] == "1"
    assert {k: os.environ.get(k) for k in saved} == saved
    assert not os.path.exists(os.path.join(SHM_DIR, lot.name))


def test_python_env_puts_the_checkout_and_the_helpers_first():
    r = run_python("import shmlot, helpers; print(shmlot.__file__); print(helpers.__file__)",
                   env={"X_EXTRA": 1})
    shmlot_file, helpers_file = r.stdout.split()
    assert helpers_file == os.path.join(helpers_root(), "__init__.py")
    assert python_env({"X_EXTRA": 1})["X_EXTRA"] == "1"
    assert shmlot_file.startswith(os.path.dirname(os.path.dirname(helpers_root())))


def helpers_root():
    import helpers
    return os.path.dirname(helpers.__file__)


def test_wait_parked_counts_exactly_and_at_least(lot):
    threads = park_in_order(lot, 0x51, 3)
    assert [p.park_token for p in wait_parked(lot, 0x51, 3)] == [0, 1, 2]
    assert len(wait_parked_at_least(lot, 0x51, 2)) == 3
    with pytest.raises(pytest.fail.Exception):
        wait_parked(lot, 0x51, 2, timeout=0.2)
    extra = ParkerThread(lot, 0x52, timeout=0.05).start()
    assert extra.outcome().is_timed_out
    lot.unpark_all(0x51)
    assert all(t.outcome().is_unparked for t in threads)


def test_raised_in_thread_returns_what_the_other_thread_raised():
    import threading
    lock = threading.Lock()
    assert raised_in_thread(lock.acquire) is None
    assert raised_in_thread(lock.release) is None  # any thread may release a Lock
    rlock = threading.RLock()
    rlock.acquire()
    assert isinstance(raised_in_thread(rlock.release), RuntimeError)
    rlock.release()
    with pytest.raises(AssertionError, match="still running"):
        raised_in_thread(lambda: time.sleep(1), timeout=0.1)
