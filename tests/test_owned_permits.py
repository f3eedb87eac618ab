"""A BoundedSemaphore's permits are owned by the process that took them: a process SIGKILLed
while holding some does not take them along. The next acquirer that finds none free gives them
back (one already waiting included), and so does ``shmlot-stat --reap``. A plain Semaphore is a
counter anyone may release: its permits are not owned, and it says so."""
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

import shmlot

from _prim_helpers import child_env, plot, wait_parked_on  # noqa: F401
from conftest import REPO_ROOT, python_env, start_python

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
    os.kill(p.pid, signal.SIGKILL)
    p.wait(10)


def test_next_acquirer_gets_a_dead_holders_permits(plot):
    sem = shmlot.BoundedSemaphore(2, name="pool", lot=plot)
    holder_dies(plot)
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


def test_a_waiting_acquirer_gets_them_when_the_holder_dies(plot):
    sem = shmlot.BoundedSemaphore(2, name="pool", lot=plot)
    p = start_python(HOLDER, plot.name, env=child_env(plot))
    assert p.stdout.readline().strip() == "holding"
    got = []
    t = threading.Thread(target=lambda: got.append((sem.acquire(timeout=20), time.monotonic())))
    t.start()
    wait_parked_on(plot, sem.key, 1)
    os.kill(p.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    p.wait(10)
    t.join(20)
    assert got and got[0][0] is True and got[0][1] - killed_at < 1.0
    sem.release()


def test_reap_gives_them_back(plot):
    sem = shmlot.BoundedSemaphore(2, name="pool", lot=plot)
    holder_dies(plot)
    r = subprocess.run([sys.executable, "-m", "shmlot.stat", plot.name, "--reap", "--json"],
                       capture_output=True, text=True, env=python_env(), cwd=REPO_ROOT,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    given = json.loads(r.stdout)["reap"]["permits_given_back"]
    assert [(g["object"], g["permits"]) for g in given] == [("pool", 2)]
    assert sem._value() == 2


def test_a_release_by_another_process_is_an_anonymous_unit(plot):
    """threading lets any thread release; the acquirer's permit then stays recorded as its
    own, and once it is gone, giving it back stops at the bound."""
    sem = shmlot.BoundedSemaphore(1, name="one", lot=plot)
    assert sem.acquire(blocking=False)
    code = r"""
import sys, shmlot
lot = shmlot.ParkingLot.attach(sys.argv[1])
shmlot.BoundedSemaphore(1, name="one", lot=lot).release()
"""
    r = subprocess.run([sys.executable, "-c", code, plot.name], env=child_env(plot),
                       cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert sem._value() == 1


def test_plain_semaphore_says_its_permits_are_not_owned():
    assert "not owned" in shmlot.Semaphore.__doc__
    readme = open(os.path.join(REPO_ROOT, "README.md")).read()
    assert "not owned" in readme
