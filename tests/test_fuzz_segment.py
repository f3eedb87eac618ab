"""A corrupted or hostile segment makes calls fail, never crash or hang (SPEC sections 1 and 6,
issue 5).

- A bounded run of tools/fuzz_lot.py per waiter backend, in a subprocess (a crash is a signal
  exit, a hang the driver's faulthandler watchdog: "Timeout" and every stack): bytes written over every region of a live lot,
  then every operation; errors are allowed, a crash, a hang or a timed call that overruns its
  timeout are not.
- The scribbles the fuzzer found hanging the process, made deterministic: a robust mutex whose
  word names a thread that cannot hold it (no such thread, a process that does not map the lot,
  only the waiters bit) fails with LotCorruptError instead of waiting forever, and timed calls
  keep their deadline.
"""
import json
import os
import struct
import subprocess
import sys

import pytest

from conftest import NAME_PREFIX, REPO_ROOT, _remove_name, python_env, run_python

FUZZ = os.path.join(REPO_ROOT, "tools", "fuzz_lot.py")
BUCKETS_OFF = 4096      # lot.h: the buckets follow the 4 KiB header
REGISTRY_MUTEX = 488    # offsetof(sl_header, registry_mutex) on x86-64 glibc


def _cleanup(prefix):
    for entry in os.listdir("/dev/shm"):
        if entry.startswith(prefix):
            _remove_name(entry)


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

SCRIBBLED_MUTEX_CHILD = """
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
    struct.pack_into("<I", m, pos, word)
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


def scribbled_mutex_run(lot_name, pos, word, waiter="futex"):
    r = run_python(SCRIBBLED_MUTEX_CHILD, lot_name(), pos, word, waiter, timeout=60)
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.timeout(60)
@pytest.mark.parametrize("word", [4_000_000, 1, 0x80000000],
                         ids=["no-such-thread", "init", "waiters-bit-only"])
def test_bucket_mutex_naming_an_impossible_holder(lot_name, word):
    res = scribbled_mutex_run(lot_name, BUCKETS_OFF, word)   # the only bucket
    for what, (outcome, took) in res.items():
        if what == "park(timeout=0.2)" or what == "Lock.acquire(timeout=0.2)":
            assert took < 0.2 + 0.5, (what, outcome, took)
        elif what == "helper":
            # parked with timeout 0.3: its cancel takes the scribbled lock
            assert took < 0.3 + 0.5, (what, outcome, took)
            assert outcome in ("LotCorruptError", "timed out"), res
        elif what in ("unpark_one", "unpark_all"):
            assert outcome == "LotCorruptError" and took < 1.0, (what, outcome, took)
        else:
            assert took < 2.0, (what, outcome, took)


@pytest.mark.timeout(60)
def test_registry_mutex_naming_an_impossible_holder(lot_name):
    res = scribbled_mutex_run(lot_name, REGISTRY_MUTEX, 4_000_000)
    outcome, took = res["Lock(name=)"]
    assert outcome == "LotCorruptError" and took < 1.0, res
    # the buckets are untouched: the lot still parks and unparks
    assert res["unpark_one"][0] == "ok" and res["helper"][0] == "timed out", res


@pytest.mark.timeout(60)
def test_scribbled_mutex_kind_in_the_header_is_refused_at_attach(make_lot):
    """A new handle checks the recorded mutex kind against this C library's: a scribbled kind
    (or another libc's lot) is LotCorruptError, not a lock call into an unknown mutex type."""
    import mmap

    import shmlot
    lot = make_lot()
    with open(f"/dev/shm/{lot.name}", "r+b") as f:
        m = mmap.mmap(f.fileno(), 0)
    try:
        kind = struct.unpack_from("<I", m, 124)[0]        # sl_header.mutex_kind
        struct.pack_into("<I", m, 124, kind ^ 0x20)       # PTHREAD_MUTEX_PI_NP flipped
        with pytest.raises(shmlot.LotCorruptError, match="mutex kind"):
            shmlot.ParkingLot.attach(lot.name)
        struct.pack_into("<I", m, 124, kind)
        shmlot.ParkingLot.attach(lot.name).close()
    finally:
        m.close()
