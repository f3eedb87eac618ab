#!/usr/bin/env python3
"""Two runs of tools/bench.py side by side, as Markdown: every target's verdict and every row's
median, ratio to its multiprocessing twin and to the C floor (with their 95 % intervals).

    python tools/bench.py --json before.json        # (with the old build)
    python tools/bench.py --json after.json
    python tools/bench_compare.py before.json after.json

The ratios are the figures to compare: they were paired round by round inside each run, while
the absolute times of two runs also carry whatever load each run met.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from benchlib.report import fmt_value  # noqa: E402


def _ratio(r, key):
    iv = r.get(key + "_interval")
    if not iv or iv.get("value") is None:
        return ""
    return f"{iv['value']:.3g} [{iv['lo']:.3g}-{iv['hi']:.3g}]"


def _verdict(t):
    if t is None:
        return "-"
    if t.get("interval"):
        lo, hi = t["interval"]
        return f"{t['verdict']} {t['value']:.3g} [{lo:.3g}-{hi:.3g}]"
    return f"{t['verdict']} {t['value']:.3g}" if t.get("value") is not None else t["verdict"]


def _index(doc):
    return {sc["id"]: sc for sc in doc["scenarios"]}


def targets_table(before, after, out):
    out.write("| scenario | target | before | after |\n|---|---|---|---|\n")
    for sid, sc in after.items():
        old = {(t["subject"], t["text"]): t for t in before.get(sid, {}).get("targets", [])}
        for t in sc.get("targets", []):
            text = t["text"] + (" (raised)" if t.get("level") == "raised" else "")
            out.write(f"| {sid} | {t['subject']} {text} | "
                      f"{_verdict(old.get((t['subject'], t['text'])))} | {_verdict(t)} |\n")


def rows_table(before, after, out):
    out.write("| scenario | subject | before | after | x mp before | x mp after "
              "| x floor before | x floor after |\n|---|---|---|---|---|---|---|---|\n")
    for sid, sc in after.items():
        old = {r["subject"]: r for r in before.get(sid, {}).get("rows", [])}
        for r in sc["rows"]:
            o = old.get(r["subject"], {})

            def value(row):
                m = row.get("median")
                if m is None:
                    return "-"
                share = (row.get("extra") or {}).get("min_share")
                text = fmt_value(m, sc["unit"]).strip()
                return text + (f", slowest {share:.2f}" if share is not None else "")
            out.write(f"| {sid} | {r['subject']} | {value(o)} | {value(r)} | "
                      f"{_ratio(o, 'ratio_mp')} | {_ratio(r, 'ratio_mp')} | "
                      f"{_ratio(o, 'ratio_floor')} | {_ratio(r, 'ratio_floor')} |\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("before")
    ap.add_argument("after")
    args = ap.parse_args(argv)
    with open(args.before) as f:
        before = _index(json.load(f))
    with open(args.after) as f:
        after = _index(json.load(f))
    out = sys.stdout
    out.write("**Targets**\n\n")
    targets_table(before, after, out)
    out.write("\n**Every row** (median, and the slowest process's share of the mean where there is "
              "one; ratios paired by round, with their 95 % intervals)\n\n")
    rows_table(before, after, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
