"""Lots that vanish, or were never finished.

- A lot unlinked while processes use it (shmlot-stat --unlink, a /dev/shm cleaner, RemoveIPC):
  processes that open its name afterwards get a new lot, so the old ones must not go on as if
  nothing happened. Resolving a name through the old handle (a named object, default_lot())
  raises LotUnlinkedError, and so does a wait once the name leads to another lot.
- A lot whose creator was killed before it finished creating it (SIGKILL at a named step of
  sl_create, through the core's test hook) is replaced by the next open(), also by several
  openers racing; a creator that is still at work (it holds the segment's flock) is waited for,
  never replaced; ``shmlot-stat --unlink`` removes a segment that does not attach.
"""
import fcntl
import os
import struct
import subprocess
import sys
import time

import pytest

import shmlot
from shmlot import LotCorruptError, LotNotFoundError, LotUnlinkedError, ParkingLot

from helpers import REPO_ROOT, SHM_DIR
from helpers.processes import python_env, run_python, start_python

# ---- unlinked while in use ----------------------------------------------------------------------

# Holds named Lock "x" of the lot (argv[1]; or of the default lot when argv[1] is "default"),
# says "held", and on "go" reports what the old handle does now, one line per check.
OLD_PROCESS = r"""
import sys, threading, time, shmlot
default = sys.argv[1] == "default"
lot = None if default else shmlot.ParkingLot.attach(sys.argv[1])
x = shmlot.Lock(name="x", lot=lot)
x.acquire()
print("held", flush=True)
sys.stdin.readline()

def report(what, fn):
    try:
        fn()
        print(what, "ok", flush=True)
    except shmlot.LotUnlinkedError as exc:
        assert isinstance(exc, shmlot.LotNotFoundError)
        print(what, "LotUnlinkedError", flush=True)

# a named object, through the handle (or default_lot())
report("open", lambda: shmlot.Lock(name="y", lot=lot))
# an anonymous one through default_lot() (a handle of its own: only the named open above)
if default:
    report("default_lot", shmlot.default_lot)
# a wait on the lock this process holds: a slow path, which looks now and then
out = []
def waiter():
    try:
        out.append(x.acquire(timeout=10))
    except shmlot.LotUnlinkedError:
        out.append("LotUnlinkedError")
t = threading.Thread(target=waiter)
t0 = time.monotonic()
t.start(); t.join()
print("wait", out[0], round(time.monotonic() - t0, 1), flush=True)
"""


def stat_unlink(name):
    r = subprocess.run([sys.executable, "-m", "shmlot.stat", "--unlink", name],
                       capture_output=True, text=True, env=python_env(), cwd=REPO_ROOT, timeout=60)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("how", ["named", "default"])
def test_a_lot_unlinked_and_remade_under_its_name_is_not_shared_silently(lot_name, waiter, how):
    name = lot_name()
    ParkingLot.create(name, waiter=waiter)
    env = {"SHMLOT_LOT": name, "SHMLOT_WAITER": waiter}
    old = start_python(OLD_PROCESS, "default" if how == "default" else name, env=env)
    try:
        assert old.stdout.readline().strip() == "held"
        stat_unlink(name)
        # a new process opens the name: a new lot, where "x" is free
        new = run_python("""
import sys, shmlot
x = shmlot.Lock(name="x", lot=shmlot.ParkingLot.open(sys.argv[1]))
print(x.acquire(timeout=0))
""", name, env=env)
        assert new.stdout.strip() == "True"
        out, err = old.communicate("go\n", timeout=30)
        assert old.returncode == 0, err
        lines = out.split("\n")
        assert "open LotUnlinkedError" in lines
        if how == "default":
            assert "default_lot LotUnlinkedError" in lines
        [wait] = [line for line in lines if line.startswith("wait")]
        _, result, seconds = wait.split()
        assert result == "LotUnlinkedError" and float(seconds) < 3, wait
    finally:
        if old.poll() is None:
            old.kill()
        try:
            ParkingLot.attach(name).unlink()
        except LotNotFoundError:
            pass


def test_a_lot_unlinked_but_not_remade_keeps_working_for_its_processes(make_lot):
    """Only resolving a name fails: the processes that share the nameless lot still do."""
    lot = make_lot()
    other = ParkingLot.attach(lot.name)
    lock = shmlot.Lock(lot=lot)
    lot.unlink()
    with pytest.raises(LotUnlinkedError):
        shmlot.Event(name="ev", lot=other)
    lock.acquire()
    assert not lock.acquire(timeout=0.05)  # a wait: the name is gone, not taken by another lot
    lock.release()
    assert shmlot.Event(lot=other).wait(0.01) is False  # anonymous objects still work


# ---- never finished -----------------------------------------------------------------------------

pytestmark = pytest.mark.timeout(60)

CREATING = struct.pack("<Q", 0x30544f4c4d485300)  # lot.c SL_MAGIC_CREATING: "\0SHMLOT0"

DIE_CREATING = r"""
import sys
from shmlot import ParkingLot
from shmlot._core import lib
lib.sl_test_set_die_at(sys.argv[2].encode())
ParkingLot.create(sys.argv[1], waiter=sys.argv[3])
"""


def creator_dies(name, step, waiter):
    r = run_python(DIE_CREATING, name, step, waiter, check=False)
    assert r.returncode == -9, (r.returncode, r.stderr)
    assert os.path.exists(os.path.join(SHM_DIR, name))  # left behind, unfinished


@pytest.mark.parametrize("step", ["create_opened", "create_before_magic"])
def test_open_replaces_a_dead_creators_segment(lot_name, waiter, step):
    name = lot_name()
    creator_dies(name, step, waiter)
    t0 = time.monotonic()
    lot = ParkingLot.open(name, waiter=waiter)
    assert time.monotonic() - t0 < 1.5  # no waiting out the creator: it is known dead
    try:
        assert lot.info()["creator_pid"] == os.getpid()
        lock = shmlot.Lock(name="works", lot=lot)
        with lock:
            pass
        assert ParkingLot.attach(name).info()["lot_id"] == lot.info()["lot_id"]
    finally:
        lot.unlink()


def test_attach_alone_removes_it_and_says_so(lot_name, waiter):
    name = lot_name()
    creator_dies(name, "create_before_magic", waiter)
    with pytest.raises(LotNotFoundError, match="never finished"):
        ParkingLot.attach(name)
    assert not os.path.exists(os.path.join(SHM_DIR, name))


def test_racing_openers_all_get_one_new_lot(lot_name, waiter):
    name = lot_name()
    creator_dies(name, "create_before_magic", waiter)
    code = r"""
import sys
from shmlot import ParkingLot
sys.stdin.readline()
print(ParkingLot.open(sys.argv[1]).info()["lot_id"], flush=True)
"""
    procs = [start_python(code, name, env={"SHMLOT_WAITER": waiter}) for _ in range(4)]
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    ids = set()
    for p in procs:
        out, err = p.communicate(timeout=30)
        assert p.returncode == 0, err
        ids.add(int(out))
    lot = ParkingLot.attach(name)
    try:
        assert ids == {lot.info()["lot_id"]}
    finally:
        lot.unlink()


def test_a_living_creator_is_waited_for_not_replaced(lot_name):
    """The flock says a creator is at work (here: this process holds it on a segment marked
    "being created"): attach waits its bounded time and gives up, leaving the segment; once the
    flock is free (the creator gone) the next open replaces it."""
    name = lot_name()
    path = os.path.join(SHM_DIR, name)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, CREATING)
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(LotCorruptError, match="stopped before finishing|too small"):
            ParkingLot.attach(name)
        assert os.path.exists(path)
    finally:
        os.close(fd)  # drops the flock, as a dying creator's kernel does
    lot = ParkingLot.open(name)
    lot.unlink()


def test_a_foreign_zero_segment_is_never_removed(shm_segment):
    seg = shm_segment(8192)  # all zeros, no "being created" mark: not begun by a shmlot creator
    with pytest.raises(LotCorruptError):
        ParkingLot.attach(seg.name)
    assert os.path.exists(os.path.join(SHM_DIR, seg.name))


def run_stat(*args):
    return subprocess.run([sys.executable, "-m", "shmlot.stat", *args], capture_output=True,
                          text=True, env=python_env(), cwd=REPO_ROOT, timeout=60)


def test_stat_unlink_removes_a_segment_that_does_not_attach(lot_name, shm_segment):
    seg = shm_segment(8192)
    with open(os.path.join(SHM_DIR, seg.name), "r+b") as f:
        f.write(b"garbage!")
    r = run_stat("--unlink", seg.name)
    assert r.returncode == 0, r.stderr
    assert "not a usable lot" in r.stdout and "bad magic" in r.stdout
    assert not os.path.exists(os.path.join(SHM_DIR, seg.name))
