"""shmlot-stat, run as ``python -m shmlot.stat`` against real processes that park
and hold locks while it looks: the default view, --objects, --json (validated against the keys
docs/stat.md documents), --reap (a dead parked process shown dead, then freed), --list, --unlink,
--watch in a pseudo-terminal interrupted by Ctrl-C, exit statuses 0/1/2 (never a traceback), and
the installed console script.
"""
import fcntl
import json
import os
import select
import shutil
import signal
import struct
import subprocess
import sys
import termios
import time

import pytest

from helpers import REPO_ROOT
from helpers.kills import kill_all, kill_and_reap
from helpers.processes import python_env, start_python
from helpers.waiting import wait_until

import shmlot
from shmlot import ParkingLot
from shmlot import cli as shstat
from shmlot.snapshot import snapshot

WIDTH = 100


def run_stat(*args, env=None, timeout=60):
    """``python -m shmlot.stat args...`` to completion."""
    return subprocess.run([sys.executable, "-m", "shmlot.stat", *map(str, args)],
                          capture_output=True, text=True, env=python_env(env), cwd=REPO_ROOT,
                          timeout=timeout)


def assert_fits(text):
    for line in text.splitlines():
        assert len(line) <= WIDTH, f"line of {len(line)} characters: {line!r}"


def assert_one_line_error(r, status=1, *fragments):
    assert r.returncode == status, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("shmlot-stat: ")
    for f in fragments:
        assert f in lines[0], lines[0]
    assert r.stdout == ""


# Holds Lock 'held', a read share of RWLock 'rw' and resource 0xFEED; two threads (the main one
# and another) wait on Event 'ev'; when it is set, releases everything and exits.
HOLDER = r"""
import sys, threading, shmlot
from shmlot import deadlock
lot = shmlot.ParkingLot.attach(sys.argv[1])
held = shmlot.Lock(name="held", lot=lot)
rw = shmlot.RWLock(name="rw", lot=lot)
ev = shmlot.Event(name="ev", lot=lot)
held.acquire()
rw.acquire_read()
deadlock.acquire_resource(0xFEED, lot=lot)
t = threading.Thread(target=ev.wait)
t.start()
print("ready", flush=True)
ev.wait()
t.join()
deadlock.release_resource(0xFEED, lot=lot)
rw.release_read()
held.release()
"""

# Blocks on Lock 'held', then releases it and exits.
WAITER = r"""
import sys, shmlot
lot = shmlot.ParkingLot.attach(sys.argv[1])
held = shmlot.Lock(name="held", lot=lot)
held.acquire()
held.release()
print("got it", flush=True)
"""


def start_holder(lot):
    p = start_python(HOLDER, lot.name)
    assert p.stdout.readline().strip() == "ready"
    wait_until(lambda: sum(1 for x in snapshot(lot).parked if x.pid == p.pid) == 2, 20,
               "the holder's two threads parked on the event")
    return p


# ---- the default view and --objects, with live processes ------------------------------------------

@pytest.mark.timeout(90)
def test_default_view_with_parked_and_holding_processes(lot):
    holder = waiter = None
    try:
        holder = start_holder(lot)
        waiter = start_python(WAITER, lot.name)
        wait_until(lambda: len(snapshot(lot).parked) == 3, 20, "three threads parked")
        r = run_stat(lot.name)
        assert r.returncode == 0, r.stderr
        out = r.stdout
        assert_fits(out)
        lines = out.splitlines()
        assert lines[0].startswith(f"lot {lot.name!r}  {lot.waiter}  ")
        assert "MiB" in lines[0] and "slots 3 used / 253 free" in lines[0]
        assert "256 buckets" in lines[0]
        assert any(line.startswith("counters: parks ") for line in lines)
        for word in ("unparks", "timeouts", "requeues", "fair handoffs",
                     "owner deaths recovered", "reaped"):
            assert word in out
        assert "PARKED THREADS: 3" in out
        header = [line for line in lines if line.split()[:2] == ["PID", "TID"]]
        assert len(header) == 1 and "PROCESS" in header[0] and "PARKED" in header[0]
        rows = lines[lines.index(header[0]) + 1:]
        ev_rows = [x for x in rows if "Event 'ev'" in x]
        lock_rows = [x for x in rows if "Lock 'held'" in x]
        assert len(ev_rows) == 2 and len(lock_rows) == 1
        assert all(x.split()[0] == str(holder.pid) for x in ev_rows)
        assert lock_rows[0].split()[:2] == [str(waiter.pid), str(waiter.pid)]
        assert all(" yes " in x for x in ev_rows + lock_rows)
        assert all(x.rstrip()[-1] == "s" for x in ev_rows + lock_rows)  # a duration

        r = run_stat(lot.name, "--objects")
        assert r.returncode == 0, r.stderr
        assert_fits(r.stdout)
        rows = {line.split()[0]: line for line in r.stdout.splitlines() if line.split()}
        assert f"locked by pid {holder.pid} tid {holder.pid}" in rows["held"]
        assert rows["held"].split()[-3:] == [str(holder.pid), "1", rows["held"].split()[-1]]
        assert "unset" in rows["ev"] and rows["ev"].split()[-2] == "2"
        assert f"1 reader (pid {holder.pid})" in rows["rw"]
        assert "RESOURCES (deadlock.acquire_resource): 1" in r.stdout
        assert "0x000000000000feed" in r.stdout

        # the processes were not disturbed: all still parked
        assert len(snapshot(lot).parked) == 3 and holder.poll() is None and waiter.poll() is None
        shmlot.Event(name="ev", lot=lot).set()
        assert waiter.stdout.readline().strip() == "got it"
        assert holder.wait(20) == 0 and waiter.wait(20) == 0
        r = run_stat(lot.name, "--all")
        assert r.returncode == 0 and "PARKED THREADS: none" in r.stdout
        assert "DEADLOCKS: none" in r.stdout and "OBJECTS: 3 of" in r.stdout
    finally:
        kill_all(holder, waiter)


# ---- --json ----------------------------------------------------------------------------------------

PARKED_KEYS = {"pid": int, "tid": int, "key": int, "park_token": int, "parked_seconds": float,
               "alive": bool, "process": (str, type(None)), "cmdline": (list, type(None)),
               "object": (str, type(None)), "kind": (str, type(None)),
               "role": (str, type(None)), "key_hex": str, "slot": int, "state": str,
               "hint": int, "hint_owner": (dict, type(None)), "bucket": int,
               "object_index": (int, type(None)), "token_text": str}
OBJECT_KEYS = {"name": (str, type(None)), "kind": str, "state": str,
               "owner_pid": (int, type(None)), "owner_tid": (int, type(None)),
               "owner_alive": (bool, type(None)), "waiters": int, "key": int, "key_hex": str,
               "index": int, "anonymous": bool, "refs": int, "details": dict, "holds": list}
HOLD_KEYS = {"pid": int, "tid": int, "alive": bool, "key": int, "key_hex": str, "count": int,
             "mode": int, "what": str}
LOT_KEYS = {"name": str, "size": int, "buckets": int, "slots": int, "slots_used": int,
            "slots_free": int, "objects": int, "objects_used": int, "holds": int,
            "waiter": str, "version": int, "lot_id": int, "created": float, "creator_pid": int,
            "unlinked": bool}
COUNTER_NAMES = {"parks", "unparks", "timeouts", "requeues", "fair_handoffs", "owner_deaths",
                 "reaped"}


def check_keys(d, spec, what):
    missing = set(spec) - set(d)
    assert not missing, f"{what} lacks {missing}"
    for k, t in spec.items():
        assert isinstance(d[k], t), f"{what}[{k!r}] = {d[k]!r} is not {t}"
        if t is int or t == (int, type(None)):
            assert not isinstance(d[k], bool), f"{what}[{k!r}] is a bool"


def validate_document(doc):
    """The schema docs/stat.md documents for the default --json document."""
    assert set(doc) >= {"schema", "time", "lot", "counters", "parked", "in_transit", "objects",
                        "holds", "deadlocks"}
    assert doc["schema"] == 1 and isinstance(doc["time"], float)
    check_keys(doc["lot"], LOT_KEYS, "lot")
    assert COUNTER_NAMES <= set(doc["counters"])
    assert all(isinstance(v, int) for v in doc["counters"].values())
    for p in doc["parked"] + doc["in_transit"]:
        check_keys(p, PARKED_KEYS, "parked entry")
    for p in doc["parked"]:
        check_keys(p, {"held_by": list}, "parked entry")
    for o in doc["objects"]:
        check_keys(o, OBJECT_KEYS, "object")
        for h in o["holds"]:
            check_keys(h, HOLD_KEYS, "object hold")
    for h in doc["holds"]:
        check_keys(h, HOLD_KEYS, "hold")
    assert isinstance(doc["deadlocks"], list)


@pytest.mark.timeout(90)
def test_json_document_has_the_documented_keys(futex_lot):
    holder = None
    try:
        holder = start_holder(futex_lot)
        anon = shmlot.Semaphore(2, lot=futex_lot)  # an anonymous object
        r = run_stat(futex_lot.name, "--json")
        assert r.returncode == 0, r.stderr
        doc = json.loads(r.stdout)
        validate_document(doc)
        assert doc["lot"]["name"] == futex_lot.name and doc["lot"]["slots_used"] == 2
        assert {(p["pid"], p["object"], p["kind"], p["alive"]) for p in doc["parked"]} == \
            {(holder.pid, "ev", "Event", True)}
        assert all(p["parked_seconds"] >= 0 for p in doc["parked"])
        objs = {o["name"]: o for o in doc["objects"]}
        assert objs["held"]["owner_pid"] == holder.pid and objs["held"]["kind"] == "Lock"
        assert objs["held"]["state"] == f"locked by pid {holder.pid} tid {holder.pid}"
        assert objs["ev"]["waiters"] == 2 and objs["ev"]["state"] == "unset"
        assert objs[None]["kind"] == "Semaphore" and objs[None]["anonymous"] is True
        assert objs[None]["state"] == "value 2" and objs[None]["owner_pid"] is None
        assert objs["rw"]["details"]["readers"] == 1
        assert [h["what"] for h in objs["rw"]["holds"]] == ["read"]
        assert {h["what"] for h in doc["holds"]} == {"read", "resource"}
        assert doc["deadlocks"] == []
        del anon
    finally:
        kill_all(holder)


# ---- a dead process: shown dead, then reaped ------------------------------------------------------

@pytest.mark.timeout(90)
def test_dead_parked_process_shown_dead_then_reaped(lot):
    holder = start_holder(lot)
    try:
        kill_and_reap(holder)
        r = run_stat(lot.name)
        assert r.returncode == 0, r.stderr
        dead_rows = [x for x in r.stdout.splitlines() if x.split()[:1] == [str(holder.pid)]]
        assert len(dead_rows) == 2 and all(" DEAD " in x for x in dead_rows)
        assert "2 parked slots of dead processes: --reap frees them" in r.stdout

        r = run_stat(lot.name, "--objects")
        held_row = [x for x in r.stdout.splitlines() if x.startswith("held ")][0]
        assert f"locked by pid {holder.pid} tid {holder.pid} DEAD" in held_row

        r = run_stat(lot.name, "--reap")
        assert r.returncode == 0, r.stderr
        assert_fits(r.stdout)
        out = r.stdout
        assert out.startswith(f"reaped lot {lot.name!r}: 2 slots and 1 hold of dead processes")
        assert out.count(f"pid {holder.pid} tid ") >= 3  # two slots, the resource hold
        assert "Event 'ev'" in out
        assert f"RWLock 'rw': 1 read share of dead pid {holder.pid} reclaimed" in out
        assert "left held (the next acquirer gets OwnerDiedError" in out
        assert f"Lock 'held' held by dead pid {holder.pid} tid {holder.pid}" in out

        s = snapshot(lot)
        assert s.parked == [] and s.holds == []
        assert s.find_object("rw").state == "unlocked"
        held = s.find_object("held")
        assert held.owner == (holder.pid, holder.pid) and held.owner_alive is False  # kept
        lock = shmlot.Lock(name="held", lot=lot)
        with pytest.raises(shmlot.OwnerDiedError):
            lock.acquire(blocking=False)
        lock.release()
        rw = shmlot.RWLock(name="rw", lot=lot)
        assert rw.acquire_write(timeout=5)
        rw.release_write()

        r = run_stat(lot.name, "--reap")
        assert r.returncode == 0 and r.stdout.startswith(
            f"reaped lot {lot.name!r}: 0 slots and 0 holds")
    finally:
        kill_all(holder)


@pytest.mark.timeout(60)
def test_reap_json(futex_lot):
    holder = start_holder(futex_lot)
    try:
        kill_and_reap(holder)
        r = run_stat(futex_lot.name, "--reap", "--json")
        assert r.returncode == 0, r.stderr
        doc = json.loads(r.stdout)
        assert doc["schema"] == 1
        rep = doc["reap"]
        assert rep["lot"] == futex_lot.name and rep["slots_freed"] == 2 and rep["holds_freed"] == 1
        assert {p["pid"] for p in rep["slots"]} == {holder.pid}
        for p in rep["slots"]:
            check_keys(p, PARKED_KEYS, "reaped slot")
            assert p["alive"] is False
        assert [h["what"] for h in rep["holds"]] == ["resource"]
        assert rep["read_shares_reclaimed"][0]["object"] == "rw"
        assert rep["read_shares_reclaimed"][0]["shares"] == 1
        assert rep["dead_lock_owners"] == [{"object": "held", "index": rep["dead_lock_owners"][0]
                                            ["index"], "label": "Lock 'held'", "kind": "Lock",
                                            "pid": holder.pid, "tid": holder.pid}]
    finally:
        kill_all(holder)


# ---- --list and --unlink ---------------------------------------------------------------------------

def test_list_shows_lots_and_only_lots(futex_lot, make_lot, shm_segment):
    other = make_lot()
    plain = shm_segment(8192)  # zero-filled: not a lot
    with open(f"/dev/shm/{plain.name}", "r+b") as f:
        f.write(b"garbage!")
    r = run_stat("--list")
    assert r.returncode == 0, r.stderr
    assert_fits(r.stdout)
    names = [line.split()[0] for line in r.stdout.splitlines()[1:]]
    assert futex_lot.name in names and other.name in names and plain.name not in names
    row = [line for line in r.stdout.splitlines() if line.startswith(futex_lot.name)][0]
    assert " futex " in row and "MiB" in row and "0600" in row
    r = run_stat("--list", "--json")
    assert r.returncode == 0
    lots = {x["name"]: x for x in json.loads(r.stdout)["lots"]}
    assert lots[futex_lot.name]["buckets"] == 256 and lots[futex_lot.name]["mode"] == "0600"
    assert lots[other.name]["waiter"] == other.waiter and plain.name not in lots
    for x in lots.values():
        assert {"name", "size", "buckets", "slots", "slots_used", "objects_used", "waiter",
                "uid", "user", "mode", "created"} <= set(x)


def test_unlink(lot_name, waiter):
    name = lot_name()
    lot = ParkingLot.create(name, buckets=16, slots=16, waiter=waiter)
    lot_id = lot._lot_id
    r = run_stat("--unlink", name)
    assert r.returncode == 0 and r.stdout.strip() == f"unlinked lot {name!r}"
    assert not os.path.exists(f"/dev/shm/{name}")
    assert not [e for e in os.listdir("/dev/shm") if e.startswith(f"sem.sl{lot_id:016x}.")]
    assert_one_line_error(run_stat("--unlink", name), 1, "no lot named")
    assert_one_line_error(run_stat(name), 1, "no lot named")


# ---- exit statuses ---------------------------------------------------------------------------------

def test_missing_lot_is_exit_1_and_never_created(lot_name):
    name = lot_name()
    assert_one_line_error(run_stat(name), 1, f"no lot named {name!r}")
    assert_one_line_error(run_stat(name, "--json"), 1)
    assert_one_line_error(run_stat(name, "--reap"), 1)
    # the default lot too: attach only
    assert_one_line_error(run_stat(env={"SHMLOT_LOT": name}), 1, name)
    assert not os.path.exists(f"/dev/shm/{name}")


def test_default_lot_is_used_without_argument(futex_lot):
    r = run_stat(env={"SHMLOT_LOT": futex_lot.name})
    assert r.returncode == 0 and r.stdout.startswith(f"lot {futex_lot.name!r}")


def test_corrupt_lot_is_exit_1(futex_lot, shm_segment):
    with open(f"/dev/shm/{futex_lot.name}", "r+b") as f:
        f.seek(8)
        version = f.read(4)
        f.seek(8)
        f.write(struct.pack("<I", 99))  # layout version
    assert_one_line_error(run_stat(futex_lot.name), 1, "corrupt", "version 99")
    with open(f"/dev/shm/{futex_lot.name}", "r+b") as f:
        f.seek(8)
        f.write(version)
    assert run_stat(futex_lot.name).returncode == 0
    seg = shm_segment(8192)
    with open(f"/dev/shm/{seg.name}", "r+b") as f:
        f.write(b"garbage!")
    assert_one_line_error(run_stat(seg.name), 1, "corrupt or not a lot", "bad magic")
    r = run_stat("--unlink", seg.name)  # a segment that does not attach is removed too
    assert r.returncode == 0 and "not a usable lot" in r.stdout, (r.stdout, r.stderr)
    assert not os.path.exists(f"/dev/shm/{seg.name}")


def test_truncated_lot_is_exit_1(futex_lot):
    """A lot whose file is shorter than its header says (someone truncated it): one line, exit 1,
    and never a SIGBUS from reading past the end."""
    size = os.path.getsize(f"/dev/shm/{futex_lot.name}")
    os.truncate(f"/dev/shm/{futex_lot.name}", size // 2)
    for args in ([futex_lot.name], ["--reap", futex_lot.name], ["-a", futex_lot.name]):
        assert_one_line_error(run_stat(*args), 1, "corrupt", f"segment is {size // 2} bytes",
                              f"header says {size}", "truncated")


def test_lot_truncated_while_watched_is_exit_1(futex_lot):
    """Truncated after shmlot-stat attached: the next refresh says so (exit 1, one line)
    instead of reading past the end of the file (SIGBUS)."""
    proc = subprocess.Popen([sys.executable, "-m", "shmlot.stat", "--watch", "0.5", "--json",
                             futex_lot.name], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=REPO_ROOT, env=python_env())
    try:
        assert json.loads(proc.stdout.readline())["lot"]  # the first look, then a 0.5 s sleep
        size = os.path.getsize(f"/dev/shm/{futex_lot.name}")
        os.truncate(f"/dev/shm/{futex_lot.name}", size // 2)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1, (proc.returncode, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "truncated" in lines[0] and "Traceback" not in err, err


def test_not_permitted_is_exit_1(futex_lot, monkeypatch, capsys):
    def forbidden(name):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(shstat, "_attach", forbidden)
    assert shstat.main([futex_lot.name]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err == f"shmlot-stat: not permitted to open lot {futex_lot.name!r} (it " \
        "belongs to another user or its mode forbids it)\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_not_permitted_as_another_user(futex_lot):
    """A 0600 lot of root, read by 'nobody' (when nobody can run this interpreter)."""
    import pwd
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user nobody")

    def drop():
        os.setgid(nobody.pw_gid)
        os.setuid(nobody.pw_uid)

    try:
        probe = subprocess.run([sys.executable, "-c", "import shmlot.stat"], cwd=REPO_ROOT,
                               env=python_env(), preexec_fn=drop, capture_output=True,
                               timeout=60)
    except (OSError, subprocess.SubprocessError):
        probe = None
    if probe is None or probe.returncode != 0:
        pytest.skip("user nobody cannot run this interpreter or read the checkout")
    r = subprocess.run([sys.executable, "-m", "shmlot.stat", futex_lot.name], cwd=REPO_ROOT,
                       env=python_env(), preexec_fn=drop, capture_output=True, text=True,
                       timeout=60)
    assert_one_line_error(r, 1, "not permitted")


@pytest.mark.parametrize("args", [["--bogus"], ["--watch", "0"], ["--watch", "abc"],
                                  ["--list", "somelot"], ["bad/name"], ["--reap", "--list"],
                                  ["--unlink", "x", "y"]])
def test_usage_errors_are_exit_2(args):
    r = run_stat(*args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "usage:" in r.stderr and "Traceback" not in r.stderr


def test_help():
    r = run_stat("--help")
    assert r.returncode == 0
    for opt in ("--objects", "--deadlocks", "--reap", "--list", "--unlink", "--watch",
                "--json"):
        assert opt in r.stdout


def test_console_script_installed():
    """``pip install -e .`` puts shmlot-stat next to the interpreter."""
    from importlib import metadata
    try:
        eps = metadata.entry_points(group="console_scripts")
    except TypeError:  # Python < 3.10
        eps = metadata.entry_points().get("console_scripts", [])
    ours = [ep for ep in eps if ep.name == "shmlot-stat"]
    if not ours:
        pytest.skip("shmlot is not installed in this interpreter's environment")
    assert ours[0].value == "shmlot.cli:main"
    exe = shutil.which("shmlot-stat", path=os.path.dirname(sys.executable))
    assert exe, "console script missing next to the interpreter"
    r = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60,
                       env=python_env())
    assert r.returncode == 0 and r.stdout.startswith("usage: shmlot-stat")


# ---- --watch in a pseudo-terminal ----------------------------------------------------------------

@pytest.mark.timeout(60)
def test_watch_in_a_pty_until_ctrl_c(futex_lot):
    holder = start_holder(futex_lot)
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))

    def controlling_tty():
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen([sys.executable, "-m", "shmlot.stat", futex_lot.name, "--watch", "0.2"],
                            stdin=slave, stdout=slave, stderr=slave, env=python_env(),
                            cwd=REPO_ROOT, preexec_fn=controlling_tty)
    os.close(slave)
    out = b""
    try:
        deadline = time.monotonic() + 30
        while out.count(shstat.CLEAR.encode()) < 3 or not out.endswith(b"quit\r\n"):
            assert time.monotonic() < deadline, out[-2000:]
            ready, _, _ = select.select([master], [], [], 1)
            if ready:
                out += os.read(master, 65536)
        screens = out.decode().split(shstat.CLEAR)[1:]
        assert len(screens) >= 3
        for screen in screens[:3]:
            assert f"lot {futex_lot.name!r}" in screen and "PARKED THREADS: 2" in screen
            assert str(holder.pid) in screen and "Ctrl-C to quit" in screen
        os.write(master, b"\x03")  # Ctrl-C through the terminal: SIGINT to its process group
        assert proc.wait(20) == 0
        try:
            while True:
                ready, _, _ = select.select([master], [], [], 0.5)
                if not ready:
                    break
                chunk = os.read(master, 65536)
                if not chunk:
                    break
                out += chunk
        except OSError:  # EIO once the child side is closed
            pass
        assert b"Traceback" not in out and b"KeyboardInterrupt" not in out
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        os.close(master)
        kill_all(holder)


@pytest.mark.timeout(60)
def test_watch_json_lines_and_sigint(futex_lot):
    proc = subprocess.Popen([sys.executable, "-m", "shmlot.stat", futex_lot.name, "--watch", "0.1",
                             "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=python_env(), cwd=REPO_ROOT, text=True)
    try:
        docs = [json.loads(proc.stdout.readline()) for _ in range(3)]
        for d in docs:
            validate_document(d)
        assert docs[0]["time"] < docs[2]["time"]
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
        assert proc.returncode == 0 and "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


# ---- formatting ------------------------------------------------------------------------------

def test_human_friendly_numbers():
    f = shstat.fmt_duration
    assert [f(0.0004), f(0.35), f(1.23), f(42.4), f(184), f(3600 + 5 * 60), f(3 * 86400 + 4 * 3600)] \
        == ["0ms", "350ms", "1.2s", "42s", "3m04s", "1h05m", "3d04h"]
    s = shstat.fmt_size
    assert [s(512), s(4096), s(2.1 * 2**20), s(1.5 * 2**30)] == \
        ["512 B", "4.0 KiB", "2.1 MiB", "1.5 GiB"]


def test_long_names_still_fit(futex_lot):
    long = "x" * 190
    lk = shmlot.Lock(name=long, lot=futex_lot)
    lk.acquire()
    try:
        import threading
        t = threading.Thread(target=lambda: (lk.acquire(), lk.release()), daemon=True)
        t.start()
        wait_until(lambda: snapshot(futex_lot).parked, 10, "a waiter")
        text = shstat.render(snapshot(futex_lot), {"counters", "parked", "objects", "deadlocks"})
        assert_fits(text)
        assert ".." in text
    finally:
        lk.release()
    t.join(10)


def test_list_never_clips_a_lot_name():
    now = time.time()
    lots = [{"name": n, "size": 2 << 20, "slots_used": 1, "slots": 4096, "objects_used": 0,
             "waiter": "futex", "user": "root", "mode": "0600", "created": now - 5}
            for n in ("short", "n" * 150)]
    lines = shstat._list_lines(lots)
    assert_fits("\n".join(lines[:2] + lines[3:]))  # the long name has a line of its own
    assert lines[2] == "n" * 150 and lines[3].split()[0] == "futex"
    assert lines[1].split()[:2] == ["short", "futex"]


@pytest.mark.parametrize("name", [".", "..", "", "DIR"])
def test_names_that_cannot_be_a_lot_are_usage_errors(name, lot_name):
    made = None
    if name == "DIR":
        name = made = lot_name()
        os.mkdir(f"/dev/shm/{made}")
    try:
        for args in ([name], ["--unlink", name], ["--reap", name]):
            r = run_stat(*args, env={"SHMLOT_LOT": "shmlot-test-never-used"})
            assert r.returncode == 2, (args, r.stdout, r.stderr)
            assert "Traceback" not in r.stderr and r.stdout == ""
            assert r.stderr.strip().splitlines()[-1].startswith("shmlot-stat: error: invalid lot")
    finally:
        if made:
            os.rmdir(f"/dev/shm/{made}")


NASTY = "evil\x1b[31m\nPID TID forged\r\x07\u202e"


def test_control_characters_in_names_never_reach_the_terminal(make_lot, lot_name):
    lot = make_lot(lot_name() + "\x1b[2J\x07")
    lk = shmlot.Lock(name=NASTY, lot=lot)
    lk.acquire()
    proc = start_python(r"""
import sys, ctypes, shmlot
libc = ctypes.CDLL(None)
libc.prctl(15, b"py\x1b[1m\nfake", 0, 0, 0)   # PR_SET_NAME: the process name psutil reports
lot = shmlot.ParkingLot.attach(sys.argv[1])
lk = shmlot.Lock(name=sys.argv[2], lot=lot)
print("go", flush=True)
lk.acquire()
lk.release()
""", lot.name, NASTY)
    try:
        assert proc.stdout.readline().strip() == "go"
        wait_until(lambda: snapshot(lot).parked, 20, "the waiter to park")
        outputs = [run_stat(lot.name, "--all"), run_stat("--list"), run_stat(lot.name, "--reap")]
        for r in outputs:
            assert r.returncode in (0, 3), r.stderr
            for bad in ("\x1b", "\x07", "\r", "\u202e"):
                assert bad not in r.stdout
        default, listing = outputs[0].stdout, outputs[1].stdout
        assert not any(line.startswith("PID TID forged") for line in default.splitlines())
        assert "\\x1b[31m\\nPID" in default          # the object name, escaped
        assert "\\x1b[1m" in default                  # the process name, escaped
        assert "\\x1b[2J\\x07" in listing           # the lot name in --list
    finally:
        lk.release()
        assert proc.wait(20) == 0


def test_default_view_uses_the_terminal_width_decodes_tokens_and_names_holders(lot):
    """COLUMNS=200: a 60-character RWLock name is shown whole with its role; the park tokens
    read "writer", "reader", "waiter"; each parked row names who holds what it waits for."""
    long = "config-" + "x" * 53
    rw = shmlot.RWLock(name=long, lot=lot)
    cond = shmlot.Condition(name="cv", lot=lot)
    rw.acquire_read()  # held by this process: the writer below waits for it
    child = start_python(r"""
import sys, threading, shmlot
lot = shmlot.ParkingLot.attach(sys.argv[1])
rw = shmlot.RWLock(name=sys.argv[2], lot=lot)
cond = shmlot.Condition(name="cv", lot=lot)
def wait_cv():
    with cond:
        cond.wait(30)
t = threading.Thread(target=wait_cv)
t.start()
print("go", flush=True)
rw.acquire_write(timeout=30)   # waits for this test's read share
rw.release_write()
t.join()
""", lot.name, long)
    try:
        assert child.stdout.readline().strip() == "go"
        wait_until(lambda: len(snapshot(lot).parked) == 2, 20, "the writer and the waiter")
        me = os.getpid()
        r = run_stat(lot.name, env={"COLUMNS": "200"})
        assert r.returncode == 0, r.stderr
        rows = [line for line in r.stdout.splitlines() if line.strip().startswith(str(child.pid))]
        assert all(len(line) <= 200 for line in r.stdout.splitlines())
        [writer] = [x for x in rows if long in x]
        assert f"RWLock '{long}' (write)" in writer and " writer " in writer
        assert f"pid {me} tid {me}" in writer          # the reader it waits for
        [waiter] = [x for x in rows if "Condition 'cv'" in x]
        assert "(wait)" in waiter and " waiter " in waiter
        narrow = run_stat(lot.name, env={"COLUMNS": "80"})
        assert all(len(line) <= 80 for line in narrow.stdout.splitlines()), narrow.stdout
        doc = json.loads(run_stat(lot.name, "--json").stdout)
        [w] = [p for p in doc["parked"] if p["role"] == "write"]
        assert w["token_text"] == "writer"
        assert w["held_by"] == [{"pid": me, "tid": me, "alive": True}]
        [c] = [p for p in doc["parked"] if p["role"] == "wait"]
        assert c["token_text"] == "waiter" and c["held_by"] == []
    finally:
        rw.release_read()
        with cond:
            cond.notify_all()
        assert child.wait(30) == 0
