"""Scenarios measured by modules outside this package, beside tools/bench.py.

tools/bench_async.py (the asyncio primitives) plugs in here: it exposes `run(...)`, which is
called with whichever of these keyword arguments its signature names:
    cfg    the run's Config (repeat, max_repeat, quick, window, ...)
    env    the run's Env (env.ctx, env.lot, env.lot_name, env.tmp, env.wanted(subject), ...)
    quick, repeat, lot_name    the same, as plain values
and returns results.Scenario objects, or rows as dicts, one per subject:
    {"scenario": "async_pingpong", "title": "...", "unit": "ns/rt", "better": "lower",
     "subject": "shmlot.aio.Event", "family": "shmlot", "samples": [one figure per round],
     "reference": "mp.Event" (optional), "status": "n/a", "reason": "..." (optional),
     "target": {"ref": "shmlot.Event", "op": "<=", "threshold": 3.0,
                "text": "<= 3 x the synchronous one", "level": "raised"} (optional; or a list
     of them as "targets")}
A module with `scenario_rows(...)` is called through it instead of `run(...)`.
Samples of the same index are taken as the same round, so ratios are paired (keep subjects
interleaved round by round). Without the module the scenario says so and the run goes on."""
import importlib
import inspect

from .. import targets as T
from ..common import Unavailable
from ..registry import scenario
from ..results import Scenario


def rows_to_scenarios(rows, env):
    scs = {}
    for r in rows:
        sid = r.get("scenario", "async")
        sc = scs.get(sid)
        if sc is None:
            sc = scs[sid] = Scenario(env, sid, r.get("title", sid), r.get("unit", ""),
                                     better=r.get("better", "lower"),
                                     reference=r.get("reference"))
        row = sc.row(r["subject"], r.get("family", r["subject"].split(".")[0]))
        if r.get("status", "ok") != "ok":
            row.fail(Unavailable(r.get("reason") or r["status"]) if r["status"] == "n/a"
                     else RuntimeError(r.get("reason") or r["status"]))
            continue
        for i, v in enumerate(r.get("samples", [])):
            row.add(i, v)
        for t in r.get("targets") or ([r["target"]] if r.get("target") else []):
            sc.targets.append(T.Target(r["subject"], t["text"], t["op"], t["threshold"],
                                       T.ratio(r["subject"], t["ref"]),
                                       level=t.get("level", "raised")))
    for sc in scs.values():
        sc.rounds = max((len(x.values) for x in sc.rows.values()), default=0)
        for t in sc.targets:
            t.evaluate(sc)
    return list(scs.values())


def run_external(module, cfg, env):
    """The scenarios of tools/<module>.py, or one that says why there are none."""
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        if getattr(e, "name", None) != module:
            raise
        sc = Scenario(env, module, f"{module}.py", "")
        sc.note = f"skipped: tools/{module}.py is not there"
        sc.row(module, "shmlot").fail(Unavailable(f"tools/{module}.py is not there"))
        return [sc]
    offered = {"cfg": cfg, "env": env, "quick": cfg.quick, "repeat": cfg.repeat,
               "lot_name": getattr(env, "lot_name", None)}
    entry = getattr(mod, "scenario_rows", None) or mod.run  # rows per round, when it has them
    params = inspect.signature(entry).parameters
    out = entry(**{k: v for k, v in offered.items() if k in params})
    out = list(out) if not isinstance(out, Scenario) else [out]
    if out and not all(isinstance(x, Scenario) for x in out):
        out = rows_to_scenarios(out, env)
    return out


@scenario("async", "asyncio primitives (from tools/bench_async.py when it is there): async "
                   "Event ping-pong, contended async Lock", aliases=("aio", "asyncio"))
def async_scenarios(cfg, env):
    return run_external("bench_async", cfg, env)
