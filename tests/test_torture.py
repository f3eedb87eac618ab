"""A few seconds of tools/torture.py per waiter backend, plus the owner deaths it found
made deterministic.

The torture run itself checks its invariants and exits 1 with the failures in its JSON summary
(see the tool's docstring); here we also check that it really killed workers, some of them while
holding a lock, and that every such death was reported by exactly one OwnerDiedError.
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from helpers import REPO_ROOT
from helpers.lots import new_lot_name, remove_name
from helpers.processes import python_env, start_python

TORTURE = os.path.join(REPO_ROOT, "tools", "torture.py")


def torture(*args, timeout=90):
    """Run the tool on a lot named under this session's prefix (so the leak check covers it);
    on a timeout, SIGTERM lets it kill its workers and unlink its lot before we give up."""
    name = new_lot_name("torture-")
    proc = subprocess.Popen([sys.executable, TORTURE, "--json", "--lot", name, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=REPO_ROOT, env=python_env())
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            out, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        pytest.fail(f"torture did not finish in {timeout} s\n{err[-3000:]}")
    finally:
        for entry in os.listdir("/dev/shm"):
            if entry.startswith(name):
                remove_name(entry)
    lines = out.strip().splitlines()
    assert lines, f"no summary (exit {proc.returncode})\n{err}"
    return proc.returncode, json.loads(lines[-1])


def check_run(rc, s):
    assert rc == 0, "torture failed:\n" + "\n".join(s["failures"] + s["log"])
    assert s["failures"] == [] and s["violations"] == 0 and s["anomalies"] == 0
    assert s["kills"] >= 5, s
    for group, ops in s["ops"].items():
        assert ops > 0, group
    # the deaths while holding were all reported (exact equality is checked by the tool)
    for k, n in s["deaths_holding"].items():
        assert s["owner_died_reports"][k] >= n
    assert s["slots_in_use_after_reap"] == 0


@pytest.mark.timeout(100)
@pytest.mark.parametrize("waiter,spawn", [("futex", "exec"), ("futex", "zygote"),
                                          ("semaphore", "zygote")])
def test_torture_lock_condition_semaphore_barrier(waiter, spawn):
    rc, s = torture("--duration", "4", "--workers", "9", "--waiter", waiter, "--spawn", spawn,
                    "--groups", "lock,cond,sem,barrier")
    check_run(rc, s)
    assert (s["waiter"], s["spawn"]) == (waiter, spawn)
    if spawn == "zygote":   # kills every few ms: some of them while holding a lock
        assert s["kills_per_second"] >= 20 and sum(s["deaths_holding"].values()) > 0, s


@pytest.mark.timeout(100)
def test_torture_rwlock():
    rc, s = torture("--duration", "4", "--workers", "8", "--groups", "rw,lock", "--spawn",
                    "zygote")
    check_run(rc, s)


# ---- the RWLock reader deaths, deterministically ------------------------------------------------

def kill_reader_at(lot, step):
    """A child takes a read share of the named RWLock "rw" and SIGKILLs itself in the middle of
    the core's bookkeeping step (rwstep.c's test hooks), with the RWLock's mutex held: between
    the hold and the count when taking the share ("after_share"), or when giving it back
    ("before_unshare")."""
    hook = {"after_share": "rw_read_mid", "before_unshare": "rw_unread_mid"}[step]
    code = f"""
        import shmlot
        from shmlot._core import lib
        lot = shmlot.ParkingLot.attach({lot.name!r})
        rw = shmlot.RWLock(name="rw", lot=lot)
        step = {step!r}
        if step == "after_share":
            lib.sl_test_set_die_at({hook!r}.encode())
            rw.acquire_read()
        else:
            rw.acquire_read()
            lib.sl_test_set_die_at({hook!r}.encode())
            rw.release_read()
        print("survived")
    """
    proc = start_python(textwrap.dedent(code))
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == -9, (out, err)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("step", ["after_share", "before_unshare"])
def test_rwlock_reader_killed_between_share_and_hold(make_lot, step):
    import shmlot
    lot = make_lot()
    rw = shmlot.RWLock(name="rw", lot=lot)
    kill_reader_at(lot, step)
    # the dead reader's share must be reclaimed: a writer gets in
    assert rw.acquire_write(timeout=2), f"state word {rw._words[0].load():#x}"
    rw.release_write()
