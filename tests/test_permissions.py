"""Lots are private to their user unless shared on purpose.

Root ignores file modes, so the *attaching* process must be unprivileged: a helper process (root,
with shmlot already imported) creates the lot, then forks children that drop to uid/gid 65534
("nobody") before touching it.
- default mode 0600: the file is 0600 and the other user's attach raises PermissionError;
- mode 0o644 (others may read, not write): still PermissionError (a lot must be mapped writable);
- mode 0o666: the other user attaches and works with the lot and a named Lock across the user
  boundary, both ways: parks and is unparked by root, unparks root, and each side detects the
  other's death while holding the Lock (OwnerDiedError), on both waiter backends.
"""
import json
import os

import pytest

from helpers.processes import run_python

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(os.geteuid() != 0, reason="dropping to another uid needs root"),
]

NOBODY = 65534

HELPER = r"""
import json, os, signal, stat, sys, threading, time
import shmlot

name, mode, waiter = sys.argv[1], int(sys.argv[2], 8), sys.argv[3]
NOBODY = 65534
kwargs = {} if mode == 0o600 else {"mode": mode}
lot = shmlot.ParkingLot.create(name, buckets=16, slots=16, waiter=waiter, **kwargs)
lock = shmlot.Lock(name="shared-lock", lot=lot)
out = {"file_mode": oct(stat.S_IMODE(os.stat("/dev/shm/" + name).st_mode))}


def as_nobody(body):
    # run body() in a forked child that has dropped to uid/gid nobody; returns its JSON result
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        res = {}
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            res = body()
        except BaseException as exc:
            res = {"error": f"{type(exc).__name__}: {exc}"}
        os.write(w, json.dumps(res).encode())
        os._exit(0)
    os.close(w)
    data = b""
    while True:
        chunk = os.read(r, 65536)
        if not chunk:
            break
        data += chunk
    os.close(r)
    _, status = os.waitpid(pid, 0)
    return json.loads(data or b"{}"), status


def try_attach():
    try:
        other = shmlot.ParkingLot.attach(name)
    except PermissionError as exc:
        return {"attach": "PermissionError", "msg": str(exc)}
    except Exception as exc:
        return {"attach": type(exc).__name__, "msg": str(exc)}
    return {"attach": "ok", "uid": os.getuid(), "info": other.info()["name"]}


out["attach"], _ = as_nobody(try_attach)

if mode & 0o006 == 0o006:
    # shared on purpose: the other user parks and root unparks it ...
    def park_for_root():
        other = shmlot.ParkingLot.attach(name)
        r = other.park(7, timeout=10)
        return {"parked": "unparked" if r.is_unparked else "timed out", "token": r.token}

    box = {}
    t = threading.Thread(target=lambda: box.update(zip(("res", "status"),
                                                       as_nobody(park_for_root))))
    t.start()
    deadline = time.monotonic() + 10
    while not [s for s in lot._snapshot()[0] if s["key"] == 7 and s["state"] == "parked"]:
        assert time.monotonic() < deadline, "nobody's thread never parked"
        time.sleep(0.005)
    out["root_unparks"] = lot.unpark_one(7, lambda res: 42).unparked_threads
    t.join(15)
    out["nobody_parked"] = box.get("res")

    # ... and root parks while the other user unparks it
    box2 = {}
    t = threading.Thread(target=lambda: box2.setdefault("r", lot.park(8, timeout=10)))
    t.start()
    deadline = time.monotonic() + 10
    while not [s for s in lot._snapshot()[0] if s["key"] == 8 and s["state"] == "parked"]:
        assert time.monotonic() < deadline
        time.sleep(0.005)

    def unpark_root():
        other = shmlot.ParkingLot.attach(name)
        return {"unparked": other.unpark_one(8, lambda res: 43).unparked_threads}

    out["nobody_unparks"], _ = as_nobody(unpark_root)
    t.join(10)
    out["root_parked_token"] = box2["r"].token

    # the other user dies holding the shared Lock: root gets OwnerDiedError
    def die_holding():
        other = shmlot.ParkingLot.attach(name)
        shmlot.Lock(name="shared-lock", lot=other).acquire()
        os.kill(os.getpid(), signal.SIGKILL)

    _, status = as_nobody(die_holding)
    out["nobody_killed"] = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    try:
        lock.acquire(timeout=5)
        out["root_after_nobody_died"] = "acquired"
    except shmlot.OwnerDiedError:
        out["root_after_nobody_died"] = "OwnerDiedError"
    lock.release()

    # root's helper dies holding it: the other user gets OwnerDiedError
    pid = os.fork()
    if pid == 0:
        lock.acquire()
        os.kill(os.getpid(), signal.SIGKILL)
    os.waitpid(pid, 0)

    def acquire_after_root_died():
        other = shmlot.ParkingLot.attach(name)
        lk = shmlot.Lock(name="shared-lock", lot=other)
        try:
            lk.acquire(timeout=5)
            res = "acquired"
        except shmlot.OwnerDiedError:
            res = "OwnerDiedError"
        lk.release()
        return {"nobody_after_root_died": res}

    res, _ = as_nobody(acquire_after_root_died)
    out.update(res)
    out["slots_free"] = lot.info()["slots_free"]

lot.unlink()
print(json.dumps(out))
"""


def run_helper(lot_name, mode, waiter="futex"):
    r = run_python(HELPER, lot_name(), oct(mode), waiter, timeout=50)
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_default_mode_is_0600_and_refuses_another_user(lot_name):
    out = run_helper(lot_name, 0o600)
    assert out["file_mode"] == "0o600"
    assert out["attach"]["attach"] == "PermissionError", out


def test_readable_but_not_writable_is_refused_too(lot_name):
    out = run_helper(lot_name, 0o644)
    assert out["file_mode"] == "0o644"
    assert out["attach"]["attach"] == "PermissionError", out


@pytest.mark.parametrize("waiter", ["futex", "semaphore"])
def test_mode_0666_shares_with_another_user(lot_name, waiter):
    out = run_helper(lot_name, 0o666, waiter)
    assert out["file_mode"] == "0o666"
    assert out["attach"]["attach"] == "ok" and out["attach"]["uid"] == NOBODY, out
    assert out["root_unparks"] == 1
    assert out["nobody_parked"] == {"parked": "unparked", "token": 42}, out
    assert out["nobody_unparks"] == {"unparked": 1}, out
    assert out["root_parked_token"] == 43
    assert out["nobody_killed"] is True
    assert out["root_after_nobody_died"] == "OwnerDiedError", out
    assert out["nobody_after_root_died"] == "OwnerDiedError", out
    assert out["slots_free"] == 16, out
