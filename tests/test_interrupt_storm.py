"""A storm of asynchronous exceptions (real SIGINTs, KeyboardInterrupt, every 50-250 microseconds,
thousands of them) while a process takes and gives back an
RWLock's read shares and write lock through ``read()`` / ``write()``, with another process
contending: afterwards no share is torn. What the stormed thread still holds (an exception that
struck as a ``with`` block's ``__exit__`` began, which no Python ``__exit__`` can prevent) agrees
everywhere: its own count, its hold and the lock's readers count; no waiting writer is left
counted but the thread's own mark (cleared as its next acquire_write would); once it gives back what its count says, the lock is free and a writer of another
process gets in."""
import json
import os
import random
import signal
import time

import pytest

import shmlot

from helpers.processes import ARMED_SIGINT, start_python

pytestmark = pytest.mark.timeout(120)

STORMED = r"""
import faulthandler
faulthandler.dump_traceback_later(40, exit=True)  # a stuck child says where, on stderr
import json, os, select, signal, sys, time
import shmlot
from shmlot._core import lib
lot = shmlot.ParkingLot.attach(sys.argv[1])
rw = shmlot.RWLock(name="rw", lot=lot)
pid = os.getpid()
stop_file = sys.argv[2]
me = shmlot._fast.self_owner_bits() | 1
caught = [0]
done = [0]

def body(i):
    k = i % 4
    if k == 0:
        with rw.read():
            pass
    elif k == 1:
        with rw.read():
            with rw.read():
                done[0] += 1
    elif k == 2:
        if not rw._my_reads():  # a share left by a skipped __exit__ would refuse the write
            with rw.write():
                pass
    else:
        with rw.read(timeout=0.001):
            pass

# Ctrl-C's KeyboardInterrupt only while the loop below is armed, once per arming (ARMED_SIGINT,
# spliced in below): it strikes anywhere in an iteration, never in the loop's own handler,
# whatever the scheduler makes of the signals' timing.
@ARMED_SIGINT@

def storm():
    i = 0
    while not os.path.exists(stop_file):  # until the test says stop
        try:
            armed[0] = True
            # a share left by an __exit__ the storm struck as it began is whole and ours:
            # give it back, as a program that caught the KeyboardInterrupt would
            if rw._my_reads() and i % 4 == 0:
                check_whole()
                rw.release_read()
            if rw._words[0].load() == me:  # the same for the write lock
                rw.release_write()
            body(i)
            done[0] += 1
            armed[0] = False
        except (KeyboardInterrupt, TimeoutError):
            armed[0] = False
            caught[0] += 1
        i += 1

torn = []

def check_whole():
    # the thread's count, its hold and the lock's readers agree (another process may read too)
    held = sum(h["count"] for h in lot._snapshot_holds() if h["pid"] == pid and h["mode"] == 257)
    if held != rw._my_reads():
        torn.append((held, rw._my_reads()))

t0 = time.monotonic()

print("ready", flush=True)
storm()
sys.stdin.readline()  # the contender has exited: what is counted now is this process's own
# A waiting-writer mark an exception left in acquire_write's finally (see the README's Limits):
# the thread's next acquire_write clears it first; clear it the same way here.
rw._wait_cell()
out = {"caught": caught[0], "done": done[0], "seconds": time.monotonic() - t0, "torn": torn}
out["left"] = {"my_reads": rw._my_reads(), "state": rw._words[0].load(),
               "writers": rw._words[2].load(),
               "holds": [h["count"] for h in lot._snapshot_holds() if h["pid"] == pid]}
write_held = rw._words[0].load() == (shmlot._fast.self_owner_bits() | 1)
if write_held:
    rw.release_write()
for _ in range(rw._my_reads()):
    rw.release_read()
out["after"] = {"my_reads": rw._my_reads(), "state": rw._words[0].load(),
                "writers": rw._words[2].load(),
                "holds": [h["count"] for h in lot._snapshot_holds() if h["pid"] == pid],
                "write_held": write_held}
print(json.dumps(out), flush=True)
sys.stdin.readline()
"""




STORMED = STORMED.replace("@ARMED_SIGINT@", ARMED_SIGINT)

CONTENDER = r"""
import os, sys, time, shmlot
lot = shmlot.ParkingLot.attach(sys.argv[1])
rw = shmlot.RWLock(name="rw", lot=lot)
print("ready", flush=True)
n = 0
while not os.path.exists(sys.argv[2]):
    with rw.write():
        n += 1
    with rw.read():
        n += 1
    time.sleep(0.002)
print(n, flush=True)
"""


def test_interrupt_storm_leaves_no_share_behind(make_lot, tmp_path):
    lot = make_lot()
    rw = shmlot.RWLock(name="rw", lot=lot)
    stop_file = os.path.join(str(tmp_path), "stop")
    contender = start_python(CONTENDER, lot.name, stop_file)  # contends, unstormed
    assert contender.stdout.readline().strip() == "ready"
    stormed = start_python(STORMED, lot.name, stop_file)
    assert stormed.stdout.readline().strip() == "ready"
    # real SIGINTs (Ctrl-C: KeyboardInterrupt), one every 50-250 microseconds, for 4 s
    sent = 0
    end = time.monotonic() + 4
    while time.monotonic() < end:
        os.kill(stormed.pid, signal.SIGINT)
        sent += 1
        time.sleep(random.uniform(0.00005, 0.00025))
    time.sleep(0.1)
    assert stormed.poll() is None, stormed.communicate()
    open(stop_file, "w").close()
    out, err = contender.communicate(timeout=30)
    assert contender.returncode == 0 and int(out) > 0, err
    stormed.stdin.write("contender gone\n")
    stormed.stdin.flush()
    line = stormed.stdout.readline()
    while line and not line.startswith("{"):  # "ready" again, if a signal struck after it
        line = stormed.stdout.readline()
    assert line, stormed.communicate(timeout=30)
    out = json.loads(line)
    assert out["caught"] >= 1000 and out["done"] > 0 and out["torn"] == [], (sent, out)
    left = out["left"]
    assert left["writers"] == 0, out
    if not out["after"]["write_held"]:
        assert left["state"] == 4 * left["my_reads"], out  # READER per share
        assert sum(left["holds"]) == left["my_reads"], out
    after = out["after"]
    assert after == {"my_reads": 0, "state": 0, "writers": 0, "holds": [],
                     "write_held": after["write_held"]}, out
    # and a writer of another process gets in, while the stormed process still lives
    assert rw.acquire_write(timeout=5)
    rw.release_write()
    stormed.stdin.write("bye\n")
    stormed.stdin.flush()
    assert stormed.wait(30) == 0
