"""The README's examples run and check themselves (each exits 0 only when its result is exact)."""
import os
import subprocess
import sys

import pytest

import shmlot

from helpers.lots import new_lot_name
from helpers.processes import python_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = ["arc_mutex.py", "pool_lock.py", "job_queue.py", "async_workers.py"]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("waiter", ["futex", "semaphore"])
@pytest.mark.parametrize("example", EXAMPLES)
def test_example_runs(example, waiter):
    lot_name = new_lot_name("ex-")
    lot = shmlot.ParkingLot.create(lot_name, waiter=waiter)
    env = python_env({"SHMLOT_LOT": lot_name})
    try:
        proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "examples", example)],
                              env=env, capture_output=True, text=True, timeout=150)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert lot.info()["slots_free"] == lot.slots  # nobody left parked
    finally:
        lot.unlink()


@pytest.mark.timeout(180)
def test_job_queue_steps_run_on_their_own():
    """job_queue.py's steps, started as separate programs as its docstring says: a worker first
    (nothing exists yet), then the producer, then stats and remove."""
    lot_name = new_lot_name("ex-")
    lot = shmlot.ParkingLot.create(lot_name)
    queue = new_lot_name("jobs-")
    env = python_env({"SHMLOT_LOT": lot_name})
    script = [sys.executable, os.path.join(ROOT, "tools", "examples", "job_queue.py")]

    def step(*args):
        return subprocess.run(script + list(args), env=env, capture_output=True, text=True,
                              timeout=120)

    try:
        worker = subprocess.Popen(script + ["work", queue], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        try:
            produced = step("produce", queue, "50")
            assert produced.returncode == 0, produced.stderr
            out, err = worker.communicate(timeout=120)
        finally:
            worker.kill()
            worker.wait()
        assert worker.returncode == 0, err
        assert "worker processed 50 jobs" in out
        stats = step("stats", queue)
        assert stats.returncode == 0, stats.stderr
        assert f"jobs done: 50, sum of results: {sum(j * j for j in range(1, 51))}" in stats.stdout
        assert step("remove", queue).returncode == 0
        assert not os.path.exists(f"/dev/shm/{queue}")
    finally:
        if os.path.exists(f"/dev/shm/{queue}"):
            os.unlink(f"/dev/shm/{queue}")
        lot.unlink()
