"""What SIGKILLed processes leave is reclaimable.

- A BoundedSemaphore's permits are owned by the process that took them: a process killed while
  holding some does not take them along. The next acquirer that finds none free gives them back
  (one already waiting included), and so does ``shmlot-stat --reap``. A plain Semaphore is a
  counter anyone may release: its permits are not owned, and it says so.
- An RWLock reader killed inside its bookkeeping leaves a hold that ``--reap`` takes back.
"""
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

import shmlot

from helpers import REPO_ROOT
from helpers.kills import kill_and_reap
from helpers.processes import child_env, python_env, start_python
from helpers.waiting import wait_parked_at_least

pytestmark = pytest.mark.timeout(60)

HOLDER = r"""
import sys, shmlot
lot = shmlot.ParkingLot.attach(sys.argv[1])
sem = shmlot.BoundedSemaphore(2, name="pool", lot=lot)
sem.acquire()
sem.acquire()
print("holding", flush=True)
sys.stdin.readline()
"""


def holder_dies(lot):
    p = start_python(HOLDER, lot.name, env=child_env(lot))
    assert p.stdout.readline().strip() == "holding"
    kill_and_reap(p)


def test_next_acquirer_gets_a_dead_holders_permits(default_lot):
    sem = shmlot.BoundedSemaphore(2, name="pool", lot=default_lot)
    holder_dies(default_lot)
    assert sem._value() == 0
    t0 = time.monotonic()
    assert sem.acquire(timeout=5)
    assert time.monotonic() - t0 < 1
    assert sem.acquire(blocking=False)  # both came back
    assert not sem.acquire(blocking=False)
    sem.release(2)
    assert sem._value() == 2
    with pytest.raises(ValueError):
        sem.release()  # never beyond the bound


def test_a_waiting_acquirer_gets_them_when_the_holder_dies(default_lot):
    sem = shmlot.BoundedSemaphore(2, name="pool", lot=default_lot)
    p = start_python(HOLDER, default_lot.name, env=child_env(default_lot))
    assert p.stdout.readline().strip() == "holding"
    got = []
    t = threading.Thread(target=lambda: got.append((sem.acquire(timeout=20), time.monotonic())))
    t.start()
    wait_parked_at_least(default_lot, sem.key, 1)
    killed_at = kill_and_reap(p)
    t.join(20)
    assert got and got[0][0] is True and got[0][1] - killed_at < 1.0
    sem.release()


def test_reap_gives_them_back(default_lot):
    sem = shmlot.BoundedSemaphore(2, name="pool", lot=default_lot)
    holder_dies(default_lot)
    r = subprocess.run([sys.executable, "-m", "shmlot.stat", default_lot.name, "--reap", "--json"],
                       capture_output=True, text=True, env=python_env(), cwd=REPO_ROOT,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    given = json.loads(r.stdout)["reap"]["permits_given_back"]
    assert [(g["object"], g["permits"]) for g in given] == [("pool", 2)]
    assert sem._value() == 2


def test_a_release_by_another_process_is_an_anonymous_unit(default_lot):
    """threading lets any thread release; the acquirer's permit then stays recorded as its
    own, and once it is gone, giving it back stops at the bound."""
    sem = shmlot.BoundedSemaphore(1, name="one", lot=default_lot)
    assert sem.acquire(blocking=False)
    code = r"""
import sys, shmlot
lot = shmlot.ParkingLot.attach(sys.argv[1])
shmlot.BoundedSemaphore(1, name="one", lot=lot).release()
"""
    r = subprocess.run([sys.executable, "-c", code, default_lot.name], env=child_env(default_lot),
                       cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert sem._value() == 1


def test_plain_semaphore_says_its_permits_are_not_owned():
    assert "not owned" in shmlot.Semaphore.__doc__
    readme = open(os.path.join(REPO_ROOT, "README.md")).read()
    assert "not owned" in readme


@pytest.mark.parametrize("step", ["rw_read_mid", "rw_unread_mid"])
def test_reap_takes_back_a_dead_readers_hold_whatever_the_count_says(default_lot, step):
    """A reader killed inside its bookkeeping step (its hold and the count disagree, the
    RWLock's mutex held by the dead): shmlot-stat --reap leaves no hold of it, and a writer
    gets in at once."""
    rw = shmlot.RWLock(name="rw", lot=default_lot)
    r = subprocess.run([sys.executable, "-c", r"""
import sys, shmlot
from shmlot._core import lib
lot = shmlot.ParkingLot.attach(sys.argv[1])
rw = shmlot.RWLock(name="rw", lot=lot)
if sys.argv[2] == "rw_unread_mid":
    rw.acquire_read()
lib.sl_test_set_die_at(sys.argv[2].encode())
rw.acquire_read() if sys.argv[2] == "rw_read_mid" else rw.release_read()
""", default_lot.name, step], env=child_env(default_lot), cwd=REPO_ROOT, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == -signal.SIGKILL, r.stderr
    r = subprocess.run([sys.executable, "-m", "shmlot.stat", default_lot.name, "--reap"],
                       capture_output=True, text=True, env=python_env(), cwd=REPO_ROOT,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert not [h for h in default_lot._snapshot_holds() if h["key"] == rw.key]
    assert rw.acquire_write(blocking=False)
    rw.release_write()
