"""Smoke test for tools/bench_async.py: it runs alone, writes its result dicts as JSON, every
figure is there and positive, and no lock it timed lost exclusion. No timing assertions: the
machines are noisy."""
import json
import math
import os
import subprocess
import sys

import pytest

from helpers.processes import python_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "tools", "bench_async.py")


@pytest.mark.timeout(300)
def test_bench_async_runs(tmp_path, lot_name):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, BENCH, "--quick", "--repeat", "1", "--json", str(out)],
                          capture_output=True, text=True, timeout=280, cwd=str(tmp_path),
                          env=python_env({"SHMLOT_LOT": lot_name("bench-aio-")}))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = json.loads(out.read_text())
    names = {r["name"] for r in rows}
    assert names == {
        "pingpong: shmlot.Event (threads)", "pingpong: shmlot.aio.Event (tasks)",
        "pingpong, parking: shmlot.Event (threads)",
        "pingpong, parking: shmlot.aio.Event (tasks)",
        "contended: shmlot.aio.Lock", "contended: filelock.AsyncFileLock",
        "contended: run_in_executor(multiprocessing.Lock)", "wakeup: 1 parked task",
        "wakeup: 1 of 1,000 parked tasks"}
    for r in rows:
        assert set(r) == {"name", "value", "unit", "peer", "ratio", "target", "ok", "notes"}
        assert isinstance(r["value"], (int, float)) and r["value"] > 0, r
        assert math.isfinite(r["value"]), r
        assert "EXCLUSION" not in r["notes"], r
        if r["peer"] is not None:
            assert r["ratio"] > 0, r
        if r["target"] is not None:
            assert isinstance(r["ok"], bool), r
    assert sum(1 for r in rows if r["name"] == "contended: shmlot.aio.Lock") == 2
    assert "pingpong: shmlot.aio.Event (tasks)" in proc.stdout
