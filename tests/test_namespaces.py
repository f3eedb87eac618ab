"""What a lot cannot check by itself: PID namespaces and the C library.

- Liveness is decided by pid and process start time, so it is only sound between processes of
  one PID namespace. The header records the creator's namespace (``info()['pidns']``, the inode
  of /proc/self/ns/pid); ``attach`` from another namespace works (it is shared memory) but warns
  with a RuntimeWarning that says why. Tested with ``unshare --pid --fork --mount-proc`` both
  ways (attaching from a new namespace, and to a lot created in one).
- The C library does not matter: nothing of it (no pthread mutex) lives in the segment, whose
  internal locks are the core's own futex words. A lot of the earlier layout, whose locks were
  glibc robust mutexes, is refused by its layout version (LotCorruptError naming it).
"""
import os
import shutil
import struct
import subprocess
import sys
import warnings

import pytest

import shmlot

from helpers import REPO_ROOT
from helpers.processes import python_env

pytestmark = pytest.mark.timeout(60)

VERSION_OFF = 8         # lot.h sl_header.version


def own_pidns():
    return os.stat("/proc/self/ns/pid").st_ino


def unshare_available():
    if shutil.which("unshare") is None:
        return "util-linux unshare is not installed"
    r = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        return f"unshare --pid --fork --mount-proc is not permitted here: {r.stderr.strip()}"
    return None


def in_new_pidns(code, *args):
    """Run ``python -c code args`` as pid 1 of a new PID namespace (with its own /proc)."""
    return subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", code, *args],
        capture_output=True, text=True, timeout=30, cwd=REPO_ROOT, env=python_env())


def test_header_records_the_creators_pid_namespace(make_lot):
    lot = make_lot()
    assert lot.info()["pidns"] == own_pidns()
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # same namespace: no warning
        shmlot.ParkingLot.attach(lot.name).close()


ATTACH_AND_REPORT = """
import json, os, sys, warnings
import shmlot
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    lot = shmlot.ParkingLot.attach(sys.argv[1])
    lot.unpark_all(1)                     # the lot works all the same
print(json.dumps({"pid": os.getpid(), "pidns": os.stat("/proc/self/ns/pid").st_ino,
                  "lot_pidns": lot.info()["pidns"],
                  "warnings": [(w.category.__name__, str(w.message)) for w in caught]}))
"""


def test_attach_from_another_pid_namespace_warns(make_lot):
    why = unshare_available()
    if why:
        pytest.skip(why)
    import json
    lot = make_lot()
    r = in_new_pidns(ATTACH_AND_REPORT, lot.name)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["pid"] == 1 and out["pidns"] != own_pidns()
    assert out["lot_pidns"] == own_pidns()
    assert len(out["warnings"]) == 1, out
    category, message = out["warnings"][0]
    assert category == "RuntimeWarning"
    assert lot.name in message and "another PID namespace" in message
    assert f"pid:[{own_pidns()}]" in message and f"pid:[{out['pidns']}]" in message


def test_attach_to_a_lot_created_in_another_pid_namespace_warns(lot_name):
    why = unshare_available()
    if why:
        pytest.skip(why)
    name = lot_name()
    r = in_new_pidns("import sys, shmlot; shmlot.ParkingLot.create(sys.argv[1], buckets=8, "
                     "slots=8)", name)
    assert r.returncode == 0, r.stderr
    with pytest.warns(RuntimeWarning, match="another PID namespace") as caught:
        lot = shmlot.ParkingLot.attach(name)
    assert caught[0].filename == __file__      # points at the caller of attach()
    assert lot.info()["pidns"] not in (0, own_pidns())
    lot.unlink()


# ---- another C library ------------------------------------------------------------------------

def copy_with(lot, name, offset, value):
    """A byte copy of ``lot`` named ``name`` with the u32 at ``offset`` replaced."""
    with open(f"/dev/shm/{lot.name}", "rb") as f:
        data = bytearray(f.read())
    struct.pack_into("<I", data, offset, value)
    fd = os.open(f"/dev/shm/{name}", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, bytes(data))
    finally:
        os.close(fd)


def test_lot_of_the_robust_mutex_layout_is_refused(make_lot, lot_name):
    """Layout 1 kept glibc robust mutexes in the segment; this core cannot use them (and must not
    unlock through them), so a copy claiming that layout is refused by name."""
    lot = make_lot()
    name = lot_name()
    copy_with(lot, name, VERSION_OFF, 1)
    with pytest.raises(shmlot.LotCorruptError, match="layout version 1, this shmlot reads 2"):
        shmlot.ParkingLot.attach(name)
    name2 = lot_name()
    copy_with(lot, name2, VERSION_OFF, 2)             # the unmodified copy attaches
    shmlot.ParkingLot.attach(name2).close()
