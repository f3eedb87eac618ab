"""Rounds: every subject of a scenario measured once per round, in an order that rotates from
round to round (A B C, B C A, C A B, ...), so that load that comes and goes hits them alike and
ratios can be paired by round. After the minimum number of rounds, rounds go on while a target's
interval still straddles its threshold, up to the maximum and the scenario's time budget."""
import time
import traceback

from . import targets as _targets
from .common import Unavailable, log, watchdog


def rotate(seq, i):
    seq = list(seq)
    if not seq:
        return seq
    i %= len(seq)
    return seq[i:] + seq[:i]


def run_rounds(sc, cfg, names, measure_one, min_rounds=None, max_rounds=None):
    """measure_one(name, row, rnd) adds the round's figure to `row` (or raises: the row fails
    and is skipped from then on). Rounds: cfg.repeat to cfg.max_repeat unless given."""
    t0 = time.monotonic()
    lo = min_rounds or cfg.repeat
    hi = max(lo, max_rounds or cfg.max_repeat)
    if sc.exact:
        lo = hi = 1
    rnd = 0
    while True:
        for name in rotate([n for n in names if n in sc.rows], rnd):
            row = sc.rows[name]
            if row.status != "ok":
                continue
            try:
                with watchdog(cfg.watchdog):
                    measure_one(name, row, rnd)
            except KeyboardInterrupt:
                raise
            except Exception as e:
                row.fail(e)
                if cfg.verbose and not isinstance(e, Unavailable):
                    traceback.print_exc()
        rnd += 1
        sc.rounds = rnd
        for t in sc.targets:
            t.evaluate(sc)
        if rnd < lo:
            continue
        open_ = _targets.undecided(sc.targets)
        if not open_ or rnd >= hi:
            break
        if time.monotonic() - t0 > cfg.scenario_budget:
            log(f"[bench] {sc.id}: time budget spent after {rnd} rounds, "
                f"{len(open_)} target(s) undecided")
            break
        if not any(r.ok for r in sc.rows.values()):
            break
        log(f"[bench] {sc.id}: round {rnd + 1} (undecided: "
            f"{', '.join(t.subject + ' ' + t.text for t in open_)})")
    return sc
