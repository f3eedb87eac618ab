"""The command line: options, the run plan from the registry, and the report."""
import argparse
import json
import os
import platform
import time

from . import registry, report, scenarios  # noqa: F401  (scenarios: registers them)
from .common import FLOOR, log
from .env import Env


class Config:
    """The run's knobs, fixed once the options are read."""

    def __init__(self, args):
        q = args.quick
        self.quick = q
        self.repeat = args.repeat or (3 if q else 5)
        self.max_repeat = args.max_repeat or (self.repeat if q else max(self.repeat, 15))
        self.scenario_budget = args.budget or (60.0 if q else 240.0)
        self.loop_budget = int((0.04 if q else 0.25) * 1e9)
        self.pp_budget = int((0.04 if q else 0.25) * 1e9)
        self.window = 0.1 if q else 0.5
        self.notify_rounds = 2 if q else 5
        self.park_budget = int((0.04 if q else 0.25) * 1e9)
        self.mem_objects = 200 if q else 1000
        self.floor_lock_iters = 2_000_000 if q else 10_000_000
        self.floor_pp_iters = 20_000 if q else 100_000
        self.procs = args.procs
        self.parked = args.parked
        self.watchdog = args.watchdog
        self.verbose = args.verbose
        self.callgrind_ops = args.callgrind_ops


def _int_list(s):
    try:
        vals = [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {s!r}")
    if not vals or any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"want positive integers: {s!r}")
    return vals


def _scenario_list(s):
    names = [registry.resolve(x.strip()) for x in s.split(",") if x.strip()]
    bad = [n for n in names if n not in registry.names()]
    if bad or not names:
        raise argparse.ArgumentTypeError(
            f"unknown scenario(s) {', '.join(bad) or '(none)'}; "
            f"choose from {', '.join(registry.names())}")
    return names


def parse_args(argv):
    ap = argparse.ArgumentParser(
        prog="bench.py", description="shmlot vs multiprocessing & co., with the project's "
                                     "targets decided on 95 % intervals",
        epilog="scenarios:\n" + registry.help_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short run (about a minute)")
    ap.add_argument("--only", type=_scenario_list, metavar="SCENARIO[,..]",
                    help="run only these scenarios")
    ap.add_argument("--repeat", type=int, metavar="N",
                    help="minimum rounds per scenario (default 5, --quick 3)")
    ap.add_argument("--max-repeat", type=int, metavar="M",
                    help="rounds go on while a target is undecided, up to M (default 15; "
                         "--quick: no extra rounds)")
    ap.add_argument("--budget", type=float, metavar="S",
                    help="no new round for a scenario after S seconds (default 240, --quick 60)")
    ap.add_argument("--json", metavar="FILE", help="write the results as JSON")
    ap.add_argument("--plot", metavar="FILE.png", help="draw the results (needs matplotlib)")
    ap.add_argument("--procs", type=_int_list, default=[2, 8, 32], metavar="N[,..]",
                    help="process counts for 'contended' (default 2,8,32)")
    ap.add_argument("--parked", type=_int_list, default=[1, 100, 2000], metavar="N[,..]",
                    help="parked-thread counts for 'park' (default 1,100,2000)")
    ap.add_argument("--subjects", metavar="TEXT[,..]",
                    help="measure only subjects whose name contains one of these "
                         "(case-insensitive), e.g. 'shmlot,mp.Lock,floor'")
    ap.add_argument("--start-method", choices=["fork", "spawn", "forkserver"], default="fork",
                    help="how child processes start (default fork)")
    ap.add_argument("--waiter", choices=["futex", "semaphore"],
                    help="shmlot waiter backend of the benchmark's lot (default: shmlot's)")
    ap.add_argument("--watchdog", type=float, default=300.0, metavar="S",
                    help="give up on one measurement after S seconds (default 300)")
    ap.add_argument("--callgrind-ops", type=int, default=20_000, metavar="N",
                    help="operations counted per subject under callgrind (default 20000)")
    ap.add_argument("-v", "--verbose", action="store_true", help="tracebacks for errors")
    args = ap.parse_args(argv)
    if args.repeat is not None and args.repeat < 1:
        ap.error("--repeat must be >= 1")
    if args.max_repeat is not None and args.max_repeat < 1:
        ap.error("--max-repeat must be >= 1")
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            ap.exit(2, "bench.py: error: --plot needs matplotlib, which is not installed "
                       "(pip install matplotlib, or pip install 'shmlot[plot]')\n")
    return args


def _as_list(result):
    return result if isinstance(result, list) else [result]


def main(argv=None):
    args = parse_args(argv)
    cfg = Config(args)
    names = args.only or registry.default_names(cfg.quick)
    subjects = [x.strip() for x in (args.subjects or "").split(",") if x.strip()]
    t_begin = time.monotonic()
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    env = None
    try:
        env = Env(args.start_method, args.waiter, subjects)
        plan = [item for n in names for item in registry.get(n).expand(cfg)]
        results = []
        for i, (label, fn) in enumerate(plan, 1):
            t0 = time.monotonic()
            log(f"[bench {t0 - t_begin:6.1f}s] ({i}/{len(plan)}) {label} ...")
            scs = _as_list(fn(cfg, env))
            for sc in scs:
                sc.elapsed = (time.monotonic() - t0) / len(scs)
            results.extend(scs)
            log(f"[bench {time.monotonic() - t_begin:6.1f}s] ({i}/{len(plan)}) {label} done "
                f"in {time.monotonic() - t0:.1f}s")
        by_id = {sc.id: sc for sc in results}
        if "busy" in by_id and "uncontended" in by_id:
            by_id["busy"].floor_constant = by_id["uncontended"].median(FLOOR)
        meta = {
            "tool": "shmlot tools/bench.py", "format": 2,
            "started": started,
            "python": platform.python_version(), "platform": platform.platform(),
            "machine": platform.machine(), "cpus": os.cpu_count(),
            "loadavg": os.getloadavg(),
            "quick": cfg.quick, "repeat": cfg.repeat, "max_repeat": cfg.max_repeat,
            "start_method": args.start_method, "scenarios": names, "procs": cfg.procs,
            "parked": cfg.parked, **env.meta(),
            "elapsed_s": round(time.monotonic() - t_begin, 2),
        }
        report.print_table(results, meta, env)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(report.to_json(results, meta), f, indent=1, default=float)
            log(f"[bench] wrote {args.json}")
        if args.plot:
            report.plot(results, args.plot)
            log(f"[bench] wrote {args.plot}")
        return 0
    except KeyboardInterrupt:
        log("[bench] interrupted")
        return 130
    finally:
        if env is not None:
            env.close()
