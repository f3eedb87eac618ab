"""Smoke test for tools/bench.py: it runs, writes JSON of the documented shape, numbers are sane.

No timing assertions: the machines are noisy, and shmlot rows may be n/a while work is in progress.
"""
import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "tools", "bench.py")


def _run(tmp_path, *args, timeout=120):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, BENCH, "--quick", "--json", str(out), *args],
        capture_output=True, text=True, timeout=timeout, cwd=str(tmp_path),
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.returncode == 0, f"bench failed:\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc, json.loads(out.read_text())


def _check_rows(sc):
    assert sc["rows"], sc["id"]
    for row in sc["rows"]:
        assert set(row) >= {"subject", "family", "status", "median", "samples", "extra",
                            "ratio_mp", "ratio_floor"}
        assert row["status"] in ("ok", "n/a", "error"), row
        if row["status"] == "ok":
            assert isinstance(row["median"], (int, float)), row
            # memory can be 0 shared bytes (fcntl.flock); every time and rate is positive
            low = 0 if sc["id"] == "memory" else 1e-12
            assert row["median"] >= low and math.isfinite(row["median"]), row
            assert row["samples"] and all(s >= low for s in row["samples"]), row
        else:
            assert row["median"] is None and row["reason"], row
    for t in sc["targets"]:
        assert set(t) >= {"subject", "text", "value", "pass"}
        assert t["pass"] in (True, False, None)


@pytest.mark.timeout(180)
def test_bench_quick_smoke(tmp_path):
    proc, doc = _run(tmp_path, "--only", "uncontended,pingpong,memory", "--repeat", "2")
    meta = doc["meta"]
    assert meta["quick"] is True and meta["repeat"] == 2
    assert set(meta) >= {"python", "cpus", "shmlot", "floor", "start_method", "elapsed_s"}
    ids = [sc["id"] for sc in doc["scenarios"]]
    assert ids == ["uncontended", "pingpong", "memory"]
    by_id = {sc["id"]: sc for sc in doc["scenarios"]}
    for sc in doc["scenarios"]:
        _check_rows(sc)
    # the multiprocessing peers are always there, and they measure something
    unc = {r["subject"]: r for r in by_id["uncontended"]["rows"]}
    assert unc["mp.Lock"]["status"] == "ok"
    assert unc["threading.Lock"]["status"] == "ok"
    pp = {r["subject"]: r for r in by_id["pingpong"]["rows"]}
    assert pp["mp.Semaphore"]["status"] == "ok"
    assert pp["mp.Event"]["status"] == "ok"
    mem = {r["subject"]: r for r in by_id["memory"]["rows"]}
    assert mem["mp.Lock"]["median"] >= 4096  # one page of /dev/shm per POSIX semaphore
    # shmlot rows are either measured or say why not
    for r in unc.values():
        if r["family"] == "shmlot" and r["status"] != "ok":
            assert r["reason"]
    # the table and the targets reach stdout, progress reaches stderr
    assert "uncontended" in proc.stdout and "SPEC section 7 targets" in proc.stdout
    assert "[bench" in proc.stderr
    # no lot left behind
    lot = meta["shmlot"]["lot"]
    assert lot and not os.path.exists("/dev/shm/" + lot)


@pytest.mark.timeout(180)
def test_bench_contended_and_notify_smoke(tmp_path):
    _, doc = _run(tmp_path, "--only", "contended,notify,park", "--procs", "2",
                  "--parked", "1,10", "--repeat", "1")
    ids = [sc["id"] for sc in doc["scenarios"]]
    assert ids == ["contended_2", "notify_all_32", "park"]
    for sc in doc["scenarios"]:
        _check_rows(sc)
    cont = {r["subject"]: r for r in doc["scenarios"][0]["rows"]}
    mp_lock = cont["mp.Lock"]
    assert mp_lock["status"] == "ok"
    assert 0 <= mp_lock["extra"]["min_share"] <= 1
    assert mp_lock["extra"]["p99_ns"] > 0
    notify = {r["subject"]: r for r in doc["scenarios"][1]["rows"]}
    assert notify["mp.Condition"]["status"] == "ok"


def test_bench_usage_errors(tmp_path):
    proc = subprocess.run([sys.executable, BENCH, "--only", "nosuch"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "unknown scenario" in proc.stderr
