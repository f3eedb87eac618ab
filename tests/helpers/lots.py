"""Lot names, backends, and removing what a test made in /dev/shm."""
import contextlib
import os
import uuid

from shmlot import ParkingLot
from shmlot import lot as _lotmod

from helpers import SHM_DIR

BACKENDS = ("futex", "semaphore")
NAME_PREFIX = f"shmlot-test-{os.getpid()}-"

# lot id of every lot this session created or attached under one of its names -> the test that
# did it first (for the leak check of the semaphore backend's /dev/shm/sem.sl<lot_id>.<slot>)
session_lot_ids = {}


def remember_lot(lot_id):
    """Note a lot of this session, and the test that made or attached it first."""
    session_lot_ids.setdefault(lot_id, os.environ.get("PYTEST_CURRENT_TEST"))


def new_lot_name(tag=""):
    """A unique lot/segment name under this session's prefix."""
    return f"{NAME_PREFIX}{tag}{uuid.uuid4().hex[:8]}"


def _read_magic(name):
    try:
        with open(os.path.join(SHM_DIR, name), "rb") as f:
            return f.read(8)
    except OSError:
        return b""


def remove_name(name):
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
            remember_lot(lot._lot_id)
            lot.unlink()
            return
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def remove_semaphores(lot_id):
    """Remove the semaphore files of lot ``lot_id`` (the semaphore backend's)."""
    prefix = f"sem.sl{lot_id:016x}."
    for entry in list_shm():
        if entry.startswith(prefix):
            try:
                os.unlink(os.path.join(SHM_DIR, entry))
            except FileNotFoundError:
                pass


def list_shm():
    """The names in /dev/shm."""
    try:
        return set(os.listdir(SHM_DIR))
    except OSError:
        return set()


_DEFAULT_LOT_VARS = ("SHMLOT_LOT", "SHMLOT_WAITER")


@contextlib.contextmanager
def fresh_default_lot(waiter, **create_kwargs):
    """A fresh lot with a unique name on backend ``waiter``, made the default lot of this process
    *and* of every child (``SHMLOT_LOT`` / ``SHMLOT_WAITER`` in ``os.environ``, which children
    inherit); unlinked afterwards."""
    name = new_lot_name(f"prim-{waiter[:3]}-")
    lot = ParkingLot.create(name, waiter=waiter, **create_kwargs)
    saved = {k: os.environ.get(k) for k in _DEFAULT_LOT_VARS}
    os.environ["SHMLOT_LOT"] = name
    os.environ["SHMLOT_WAITER"] = waiter
    _lotmod._default_lots[name] = lot  # default_lot() must return this very handle
    try:
        yield lot
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        _lotmod._default_lots.pop(name, None)
        lot.unlink()


def default_lot_vars(lot):
    """The environment variables that make ``lot`` a child's default lot."""
    return {"SHMLOT_LOT": lot.name, "SHMLOT_WAITER": lot.waiter}
