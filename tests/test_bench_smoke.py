"""Smoke test for tools/bench.py: it runs, writes JSON of the documented shape, numbers are sane;
and the statistics and the round runner of tools/benchlib, on figures made up for the test.

No timing assertions: the machines are noisy, and shmlot rows may be n/a while work is in progress.
"""
import json
import math
import os
import shutil
import subprocess
import sys
import types

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "tools", "bench.py")
sys.path.insert(0, os.path.join(ROOT, "tools"))
from benchlib import registry, stats, targets  # noqa: E402
from benchlib.results import Scenario  # noqa: E402
from benchlib.runner import run_rounds  # noqa: E402


def _run(tmp_path, *args, timeout=120):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, BENCH, "--quick", "--json", str(out), *args],
        capture_output=True, text=True, timeout=timeout, cwd=str(tmp_path),
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.returncode == 0, f"bench failed:\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc, json.loads(out.read_text())


def _check_interval(iv):
    if iv is not None:
        assert set(iv) >= {"value", "lo", "hi", "n"}
        assert iv["lo"] <= iv["value"] <= iv["hi"] and iv["n"] >= 1, iv


def _check_rows(sc):
    assert sc["rows"], sc["id"]
    assert sc["rounds"] >= 1
    for row in sc["rows"]:
        assert set(row) >= {"subject", "family", "status", "median", "samples", "extra",
                            "ratio_mp", "ratio_floor", "interval", "ratio_mp_interval",
                            "ratio_floor_interval", "rounds"}
        for k in ("interval", "ratio_mp_interval", "ratio_floor_interval"):
            _check_interval(row[k])
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
        assert set(t) >= {"subject", "text", "value", "pass", "verdict", "interval", "level"}
        assert t["pass"] in (True, False, None)
        assert t["verdict"] in ("PASS", "FAIL", "undecided", "n/a")
        assert t["pass"] is {"PASS": True, "FAIL": False}.get(t["verdict"])
        if t["interval"] is not None:
            lo, hi = t["interval"]
            assert lo <= t["value"] <= hi


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
    assert "uncontended" in proc.stdout and "Targets: " in proc.stdout
    # every figure saw the same rounds as its peers (interleaved), and the ratio columns have
    # intervals
    assert by_id["uncontended"]["rounds"] == 2
    assert unc["mp.RLock"]["ratio_mp_interval"]["n"] == 2
    # the raised target on the C floor is there, with its level
    levels = {(t["text"], t["level"]) for t in by_id["uncontended"]["targets"]}
    assert ("<= 5 x the C floor", "raised") in levels
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
    # the same loop with no lock, last: the scheduler's own share, beside the locks'
    assert list(cont)[-1] == "no lock (scheduler)"
    bare = cont["no lock (scheduler)"]
    assert bare["status"] == "ok" and 0 < bare["extra"]["min_share"] <= 1
    notify = {r["subject"]: r for r in doc["scenarios"][1]["rows"]}
    assert notify["mp.Condition"]["status"] == "ok"


def test_bench_usage_errors(tmp_path):
    proc = subprocess.run([sys.executable, BENCH, "--only", "nosuch"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "unknown scenario" in proc.stderr


@pytest.mark.timeout(300)
@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind not installed")
def test_bench_instructions_smoke(tmp_path):
    _, doc = _run(tmp_path, "--only", "instructions", "--subjects", "threading,floor",
                  "--callgrind-ops", "2000", timeout=280)
    ids = [sc["id"] for sc in doc["scenarios"]]
    assert ids == ["instructions_lock", "instructions_event"]
    for sc in doc["scenarios"]:
        _check_rows(sc)
        assert sc["exact"] is True
    rows = {r["subject"]: r for r in doc["scenarios"][0]["rows"]}
    # a Python `with lock:` costs more instructions than the C lock loop, and both are counted
    assert rows["threading.Lock"]["status"] == "ok", rows["threading.Lock"]
    assert rows["floor (C futex)"]["status"] == "ok", rows["floor (C futex)"]
    assert rows["threading.Lock"]["median"] > rows["floor (C futex)"]["median"] > 0
    ev = {r["subject"]: r for r in doc["scenarios"][1]["rows"]}
    assert ev["threading.Event is_set()"]["median"] > 0


# ---- the statistics and the runner, on made-up figures ------------------------------------------


def test_t95_and_intervals():
    assert stats.t95(1) == pytest.approx(12.706)
    assert stats.t95(21) == stats.t95(20)          # between table entries: the wider one
    assert stats.t95(1000) == pytest.approx(1.96)
    e = stats.ratio_interval([2.0, 2.0, 2.0])
    assert e.value == pytest.approx(2.0) and e.lo == pytest.approx(2.0) == e.hi
    e = stats.ratio_interval([1.8, 2.2, 2.0, 1.9, 2.1])
    assert e.lo < 2.0 < e.hi and e.n == 5
    one = stats.ratio_interval([3.0])
    assert one.lo == 0 and one.hi == math.inf      # one timing says nothing about its spread
    assert stats.ratio_interval([3.0], exact=True).lo == 3.0
    assert stats.paired_ratios({0: 4.0, 1: 6.0, 2: 9.0}, {0: 2.0, 2: 3.0}) == [2.0, 3.0]


def test_verdicts():
    E = stats.Estimate
    assert stats.verdict(E(1.0, 0.9, 1.1, 5), "<=", 1.2) == "PASS"
    assert stats.verdict(E(1.0, 0.9, 1.1, 5), "<=", 0.8) == "FAIL"
    assert stats.verdict(E(1.0, 0.9, 1.1, 5), "<=", 1.0) == "undecided"
    assert stats.verdict(E(1.0, 0.9, 1.1, 5), ">=", 0.5) == "PASS"
    assert stats.verdict(None, ">=", 0.5) == "n/a"


def _cfg(**kw):
    base = dict(repeat=3, max_repeat=12, scenario_budget=60.0, watchdog=30.0, verbose=False)
    base.update(kw)
    return types.SimpleNamespace(**base)


def _fake(values_a, values_b, threshold):
    """A scenario of two made-up subjects whose figures come from the given lists, in turn."""
    sc = Scenario(None, "fake", "fake", "ns")
    sc.row("a", "x")
    sc.row("b", "x")
    sc.targets = [targets.Target("a", f"<= {threshold} x b", "<=", threshold,
                                 targets.ratio("a", "b"))]
    order = []
    src = {"a": iter(values_a), "b": iter(values_b)}

    def one(name, row, rnd):
        order.append(name)
        row.add(rnd, next(src[name]))
    return sc, one, order


def test_runner_interleaves_and_stops_when_decided():
    sc, one, order = _fake([1.0] * 20, [2.0] * 20, 0.8)
    run_rounds(sc, _cfg(), ["a", "b"], one)
    assert sc.rounds == 3                            # decided (0.5 <= 0.8) at the minimum
    assert order == ["a", "b", "b", "a", "a", "b"]   # A B, B A, A B: rotated every round
    assert sc.targets[0].verdict == "PASS"


def test_runner_goes_on_while_undecided_then_says_so():
    noisy = [1.0, 1.6, 0.7, 1.5, 0.6, 1.4, 0.8, 1.6, 0.7, 1.5, 0.6, 1.4]
    sc, one, _ = _fake(noisy, [1.0] * 12, 1.0)
    run_rounds(sc, _cfg(max_repeat=8), ["a", "b"], one)
    assert sc.rounds == 8                            # went on to the bound
    assert sc.targets[0].verdict == "undecided"
    assert sc.to_json()["targets"][0]["pass"] is None


def test_registry_names_the_families():
    import benchlib.scenarios  # noqa: F401  (registers them)
    names = registry.names()
    for n in ("uncontended", "busy", "pingpong", "contended", "notify", "park", "memory",
              "instructions", "scale"):
        assert n in names
    assert registry.resolve("notify_all") == "notify"
    # the scale rows take minutes: in the full run, not in --quick
    assert "scale" in registry.default_names() and "scale" not in registry.default_names(True)
    cfg = types.SimpleNamespace(procs=[2, 8], parked=[1])
    assert [label for label, _ in registry.get("contended").expand(cfg)] == [
        "contended (2 procs)", "contended (8 procs)"]
    assert len(registry.get("scale").expand(cfg)) == 5


def test_external_rows_become_paired_scenarios():
    from benchlib.scenarios.external import rows_to_scenarios
    rows = [
        {"scenario": "async_pingpong", "title": "async ping-pong", "unit": "ns/rt",
         "subject": "shmlot.Event", "family": "shmlot", "samples": [10.0, 11.0, 10.5]},
        {"scenario": "async_pingpong", "subject": "shmlot.aio.Event", "family": "shmlot",
         "samples": [20.0, 22.0, 21.0],
         "target": {"ref": "shmlot.Event", "op": "<=", "threshold": 3.0,
                    "text": "<= 3 x the synchronous one"}},
        {"scenario": "async_lock", "subject": "filelock.AsyncFileLock", "status": "n/a",
         "reason": "filelock not installed"},
    ]
    scs = {sc.id: sc for sc in rows_to_scenarios(rows, None)}
    pp = scs["async_pingpong"]
    assert pp.rounds == 3 and pp.unit == "ns/rt"
    (t,) = pp.targets
    assert t.verdict == "PASS" and t.estimate.value == pytest.approx(2.0)
    row = scs["async_lock"].rows["filelock.AsyncFileLock"]
    assert row.status == "n/a" and "filelock" in row.reason


@pytest.mark.timeout(300)
def test_bench_async_scenarios_in_the_main_run(tmp_path):
    """tools/bench.py runs tools/bench_async.py's scenarios with paired rounds and judges their
    targets like its own."""
    proc, doc = _run(tmp_path, "--only", "async", timeout=280)
    by_id = {sc["id"]: sc for sc in doc["scenarios"]}
    assert set(by_id) == {"async_pingpong", "async_pingpong_parking", "async_contended",
                          "async_wakeup"}, list(by_id)
    subjects = {r["subject"] for r in by_id["async_contended"]["rows"]}
    assert subjects == {"shmlot.aio.Lock", "filelock.AsyncFileLock", "run_in_executor(mp.Lock)"}
    texts = {t["text"] for sc in by_id.values() for t in sc["targets"]}
    assert texts == {"<= 3 x the synchronous one", "ahead of filelock.AsyncFileLock",
                     "ahead of run_in_executor(mp.Lock)", "<= 1.5 x with no other task parked"}
    for sc in by_id.values():
        for t in sc["targets"]:
            assert t["verdict"] in ("PASS", "FAIL", "undecided"), t
            _check_interval(t["interval"] and dict(zip(("lo", "hi"), t["interval"]),
                                                   value=t["value"], n=t["n"]))