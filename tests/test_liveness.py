"""One liveness predicate, the core's sl_process_alive, reached from Python as
_fast.process_alive: a zombie is dead, a reused pid (another start time) is another process,
our own pid is alive only with our own start time. The Python judgements (a lock word's owner,
the semaphore backend's leftover files) give the same answers."""
import os
import signal
import time

import pytest

from shmlot import _fast, _sleep, locks
from shmlot._core import lib

pytestmark = pytest.mark.timeout(60)

FULL = 2**64 - 1


def both(pid, start, mask):
    """The predicate through _fast and through the cffi core: they must agree."""
    a = _fast.process_alive(pid, start, mask)
    b = bool(lib.sl_process_alive(pid, start, mask))
    assert a == b
    return a


def lock_word(pid, start):
    return _fast.owner_bits(pid, 1, start) | _fast.LOCKED_BIT


@pytest.fixture
def child():
    """A forked child that waits until killed: (pid, its full start time). Reaped afterwards."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.write(w, repr(_fast.self_ident()[2]).encode())
            os.close(w)
            while True:
                time.sleep(1)
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        start = int(f.read())
    yield pid, start
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def wait_zombie(pid):
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                return
        time.sleep(0.005)
    pytest.fail(f"{pid} did not turn zombie")


def test_a_live_process_with_its_start_time_is_alive(child):
    pid, start = child
    assert both(pid, start, FULL)
    assert both(pid, start & _fast.START_MASK, _fast.START_MASK)
    assert both(pid, 0, 0)
    assert locks.owner_alive(lock_word(pid, start))


def test_another_start_time_is_another_process(child):
    pid, start = child
    assert not both(pid, start + 1, FULL)
    assert not locks.owner_alive(lock_word(pid, start + 1))


def test_a_zombie_is_dead_everywhere(child):
    pid, start = child
    os.kill(pid, signal.SIGKILL)
    wait_zombie(pid)
    assert not both(pid, start, FULL)
    assert not both(pid, 0, 0)
    assert not locks.owner_alive(lock_word(pid, start))
    assert not _sleep._pid_alive(pid)  # the semaphore backend's leftover files


def test_a_reaped_process_is_dead(child):
    pid, start = child
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    assert not both(pid, start, FULL)
    assert not _sleep._pid_alive(pid)


def test_our_own_pid_is_alive_only_with_our_start_time():
    pid, _tid, start = _fast.self_ident()
    assert both(pid, start, FULL)
    assert not both(pid, start + 1, FULL)
    assert locks.owner_alive(lock_word(pid, start))
    assert not locks.owner_alive(lock_word(pid, start + 1))


def test_pid_zero_is_never_alive():
    assert not both(0, 0, 0)
