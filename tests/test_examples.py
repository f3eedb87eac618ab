"""The README's examples run and check themselves (each exits 0 only when its result is exact)."""
import os
import subprocess
import sys
import uuid

import pytest

import shmlot

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = ["arc_mutex.py", "pool_lock.py", "job_queue.py", "async_workers.py"]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("waiter", ["futex", "semaphore"])
@pytest.mark.parametrize("example", EXAMPLES)
def test_example_runs(example, waiter):
    lot_name = f"shmlot-test-ex-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    lot = shmlot.ParkingLot.create(lot_name, waiter=waiter)
    env = dict(os.environ, SHMLOT_LOT=lot_name,
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    try:
        proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "examples", example)],
                              env=env, capture_output=True, text=True, timeout=150)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert lot.info()["slots_free"] == lot.slots  # nobody left parked
    finally:
        lot.unlink()
