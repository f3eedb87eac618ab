"""A corrupted or hostile segment makes calls fail, never crash or hang (docs/design.md).

- A bounded run of tools/fuzz_lot.py per waiter backend, in a subprocess (a crash is a signal
  exit, a hang the driver's faulthandler watchdog: "Timeout" and every stack): bytes written over every region of a live lot,
  then every operation; errors are allowed, a crash, a hang or a timed call that overruns its
  timeout are not.
- Scribbled internal lock words, made deterministic: a word naming a holder that cannot hold it
  (no holder at all, or a live process that does not map the lot) fails with LotCorruptError
  instead of waiting forever; one naming a process that does not exist is a dead holder's,
  taken over; timed calls keep their deadline.
"""
import json
import os
import struct
import subprocess
import sys

import pytest

from helpers import REPO_ROOT
from helpers.lots import NAME_PREFIX, remove_name
from helpers.processes import python_env, run_python

FUZZ = os.path.join(REPO_ROOT, "tools", "fuzz_lot.py")
BUCKETS_OFF = 4096      # lot.h: the buckets follow the 4 KiB header
REGISTRY_LOCK = 488     # offsetof(sl_header, registry_lock)


def _cleanup(prefix):
    for entry in os.listdir("/dev/shm"):
        if entry.startswith(prefix):
            remove_name(entry)


@pytest.mark.timeout(110)
@pytest.mark.parametrize("waiter,examples", [("futex", 200), ("semaphore", 80)])
def test_fuzzed_segments_never_crash_or_hang(waiter, examples):
    prefix = f"{NAME_PREFIX}fuzz-"
    try:
        proc = subprocess.run(
            [sys.executable, FUZZ, "--examples", str(examples), "--waiter", waiter,
             "--derandomize", "--prefix", prefix],
            capture_output=True, text=True, timeout=100, cwd=REPO_ROOT, env=python_env())
    finally:
        _cleanup(prefix)
    last = [line for line in proc.stderr.splitlines() if line.startswith("EXAMPLE")][-1:]
    tail = "\n".join(line for line in proc.stderr.splitlines()[-40:]
                     if not line.startswith("EXAMPLE"))
    if proc.returncode < 0:
        pytest.fail(f"fuzz driver crashed with signal {-proc.returncode} on\n{last}\n{tail}")
    if "Timeout (" in proc.stderr:
        pytest.fail(f"fuzz driver hung on\n{last}\n{tail}")
    assert proc.returncode == 0, f"exit {proc.returncode}\n{tail}"
    assert "no crash, hang or unexpected error" in proc.stdout


# ---- the hangs the fuzzer found, deterministically ----------------------------------------------

SCRIBBLED_LOCK_CHILD = """
import json, mmap, struct, sys, threading, time
import shmlot

name, pos, word, waiter = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
lot = shmlot.ParkingLot.create(name, buckets=1, slots=8, waiter=waiter)
lock = shmlot.Lock(name="l", lot=lot)
helper = {}

def park_then_cancel():
    # parked before the scribble; timing out must take the (now scribbled) bucket lock again
    t0 = time.monotonic()
    try:
        r = lot.park(5, timeout=0.3)
        helper["outcome"] = "timed out" if r.is_timed_out else "unparked"
    except Exception as exc:
        helper["outcome"] = type(exc).__name__
    helper["took"] = time.monotonic() - t0

t = threading.Thread(target=park_then_cancel)
t.start()
while lot.info()["slots_free"] == 8:
    time.sleep(0.001)
time.sleep(0.01)
with open("/dev/shm/" + name, "r+b") as f:
    m = mmap.mmap(f.fileno(), 0)
    struct.pack_into("<Q", m, pos, word)
results = {}

def timed(what, fn):
    t0 = time.monotonic()
    try:
        fn()
        outcome = "ok"
    except Exception as exc:
        outcome = type(exc).__name__
    results[what] = (outcome, round(time.monotonic() - t0, 3))

timed("park(timeout=0.2)", lambda: lot.park(7, timeout=0.2))
timed("unpark_one", lambda: lot.unpark_one(7))
timed("unpark_all", lambda: lot.unpark_all(7))
timed("reap", lot.reap)
timed("Lock(name=)", lambda: shmlot.Lock(name="other", lot=lot))
timed("Lock.acquire(timeout=0.2)", lambda: lock.acquire(timeout=0.2))
t.join(10)
results["helper"] = (helper.get("outcome"), round(helper.get("took", 99), 3))
lot.unlink()
print(json.dumps(results))
"""


def scribbled_lock_run(lot_name, pos, word, waiter="futex"):
    r = run_python(SCRIBBLED_LOCK_CHILD, lot_name(), pos, word, waiter, timeout=60)
    return json.loads(r.stdout.strip().splitlines()[-1])


def lock_word(pid, tid, start):
    """An internal lock word (ident.h layout): LOCKED, the holder's pid, tid, start time bits."""
    return 1 | (pid << 2) | (tid << 24) | ((start & 0x3FFFF) << 46)


def start_of(pid):
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rpartition(")")[2].split()[19])


@pytest.fixture
def bystander():
    """A live process that does not map any lot (its pid and start time)."""
    proc = subprocess.Popen(["sleep", "60"])
    try:
        yield proc.pid, start_of(proc.pid)
    finally:
        proc.kill()
        proc.wait()


def bogus_words(bystander):
    pid, start = bystander
    return {
        "no-holder": (1, "LotCorruptError"),                       # LOCKED, no owner bits
        "live-process-not-mapping": (lock_word(pid, pid, start), "LotCorruptError"),
        "no-such-process": (lock_word(4_000_000, 4_000_000, 5), "ok"),   # a dead holder's
        "waiters-bit-only": (2, "ok"),                             # not held at all
    }


@pytest.mark.timeout(60)
@pytest.mark.parametrize("which", ["no-holder", "live-process-not-mapping", "no-such-process",
                                   "waiters-bit-only"])
def test_bucket_lock_naming_an_impossible_holder(lot_name, bystander, which):
    word, expect = bogus_words(bystander)[which]
    res = scribbled_lock_run(lot_name, BUCKETS_OFF, word)   # the only bucket
    for what, (outcome, took) in res.items():
        if what == "park(timeout=0.2)" or what == "Lock.acquire(timeout=0.2)":
            assert took < 0.2 + 0.5, (what, outcome, took)
        elif what == "helper":
            # parked with timeout 0.3: its cancel takes the scribbled lock
            assert took < 0.3 + 0.5, (what, outcome, took)
            assert outcome in ("LotCorruptError", "timed out"), res
        elif what in ("unpark_one", "unpark_all"):
            assert outcome == expect and took < 1.0, (what, outcome, took)
        else:
            assert took < 2.0, (what, outcome, took)


@pytest.mark.timeout(60)
def test_registry_lock_naming_an_impossible_holder(lot_name, bystander):
    word, _ = bogus_words(bystander)["live-process-not-mapping"]
    res = scribbled_lock_run(lot_name, REGISTRY_LOCK, word)
    outcome, took = res["Lock(name=)"]
    assert outcome == "LotCorruptError" and took < 1.0, res
    # the buckets are untouched: the lot still parks and unparks
    assert res["unpark_one"][0] == "ok" and res["helper"][0] == "timed out", res
