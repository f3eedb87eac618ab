"""The table on stdout, the JSON document, and the optional plot."""
import sys

from .common import log


def fmt_value(v, unit):
    if v is None:
        return "n/a"
    if unit.startswith("ns"):
        if v < 1e3:
            return f"{v:.0f} ns" if v >= 100 else f"{v:.1f} ns"
        if v < 1e6:
            return f"{v / 1e3:.2f} µs"
        if v < 1e9:
            return f"{v / 1e6:.2f} ms"
        return f"{v / 1e9:.2f} s"
    if unit == "ops/s":
        if v >= 1e6:
            return f"{v / 1e6:.2f} M/s"
        if v >= 1e3:
            return f"{v / 1e3:.1f} k/s"
        return f"{v:.0f} /s"
    if unit == "bytes":
        if v >= 1024 * 1024:
            return f"{v / 1048576:.2f} MiB"
        if v >= 10 * 1024:
            return f"{v / 1024:.1f} KiB"
        return f"{v:.0f} B"
    if unit.startswith("instr"):
        return f"{v:,.0f}"
    return f"{v:.4g}"


def fmt_ratio(r):
    if r is None:
        return ""
    if r != r or r in (float("inf"), float("-inf")):
        return "?"
    if 0 < r < 0.01:
        return f"{r:.1g}"
    if r >= 100:
        return f"{r:.0f}"
    if r >= 10:
        return f"{r:.1f}"
    return f"{r:.2f}"


def fmt_estimate(e):
    """'1.23x [1.10-1.40]' (a 95 % interval), or '1.23x' when exact."""
    if e is None:
        return ""
    if e.lo == e.hi or e.n < 2:
        return f"{fmt_ratio(e.value)}x"
    return f"{fmt_ratio(e.value)}x [{fmt_ratio(e.lo)}-{fmt_ratio(e.hi)}]"


def _notes(sc, row, env):
    out = []
    if row.status != "ok":
        if env is not None and env.shmlot_reason and row.reason == env.shmlot_reason:
            return "(see shmlot status above)"
        return row.reason
    if sc.id == "busy":
        a, x = row.extra_median("alone_ns"), row.extra_median("x_alone")
        m, am = row.extra_median("mean_ns"), row.extra_median("alone_mean_ns")
        if a is not None:
            out.append(f"alone {fmt_value(a, 'ns')}, busy/alone {x:.2f}x; wall mean "
                       f"{fmt_value(m, 'ns')} vs {fmt_value(am, 'ns')} alone")
    if sc.id.startswith("contended_"):
        s, p = row.extra_median("min_share"), row.extra_median("p99_ns")
        if s is not None:
            out.append(f"slowest {s:.2f} of mean, p99 acquire {fmt_value(p, 'ns')}")
    if sc.id == "memory":
        r = row.extra_median("heap_per_object")
        if r is not None:
            out.append(f"+ {fmt_value(r, 'bytes')} Python heap per object")
        if row.subject.startswith("shmlot.") and row.subject.count(".") == 1:
            out.append("(.SIZE)")
    for k in getattr(sc, "notes_extra", ()):
        v = row.extra_median(k)
        if v is not None:
            out.append(f"{k} {v:.4g}")
    if row.reason:
        out.append(row.reason)
    return "; ".join(out)


def _target_col(t, unit):
    if t.estimate is None:
        return f"{t.verdict}: {t.text}"
    e = t.estimate
    if unit == "bytes" and t.text.startswith(("Lock.SIZE", "<= 8 MiB")):
        val = fmt_value(e.value, "bytes")
    elif e.lo == e.hi or e.n < 2:
        val = f"{e.value:.3g}"
    else:
        val = f"{e.value:.3g} [{e.lo:.3g}-{e.hi:.3g}]"
    lvl = "" if t.level == "base" else f" ({t.level})"
    return f"{t.verdict}: {t.text}{lvl} ({val})"


def print_table(scs, meta, env=None, out=sys.stdout):
    w = out.write
    w(f"\nshmlot benchmark  {meta['started']}  python {meta['python']}  "
      f"{meta['cpus']} cpus  start={meta['start_method']}  rounds={meta['repeat']}.."
      f"{meta['max_repeat']}{'  (quick)' if meta['quick'] else ''}\n")
    w(f"shmlot: {meta['shmlot']['status']}   floor: {meta['floor']['status']}\n")
    for sc in scs:
        better = "lower is better" if sc.better == "lower" else "higher is better"
        w(f"\n== {sc.title}  [{sc.unit}, {better}; {sc.rounds} round"
          f"{'' if sc.rounds == 1 else 's'}] ==\n")
        if sc.note:
            w(f"  {sc.note}\n")
        w(f"  {'subject':<32} {'median':>11} {'±95%':>6} {'x mp [95%]':>20} "
          f"{'x floor [95%]':>20}  notes\n")
        tg = {}
        for t in sc.targets:
            tg.setdefault(t.subject, []).append(t)
        for row in sc.rows.values():
            ref = sc.mp_ref(row.subject)
            rmp = sc.ratio_mp(row.subject) if row.subject != ref else None
            rf = sc.ratio_floor(row.subject) if row.family != "floor" else None
            mcol = fmt_value(row.median, sc.unit) if row.status == "ok" else row.status
            iv = sc.interval(row.subject)
            hw = iv.half_width if iv is not None and iv.n > 1 else None
            hw_s = "" if hw is None or hw != hw or hw == float("inf") else f"±{hw * 100:.0f}%"
            w(f"  {row.subject:<32} {mcol:>11} {hw_s:>6} {fmt_estimate(rmp):>20} "
              f"{fmt_estimate(rf):>20}  {_notes(sc, row, env)}\n")
            for t in tg.get(row.subject, []):
                w(f"  {'':<32}   -> {_target_col(t, sc.unit)}\n")
        if sc.reference or sc.floor:
            w(f"  (±95%: half the 95 % interval of the mean over rounds / the median; x mp: "
              f"paired ratio to the multiprocessing twin, else {sc.reference}; x floor: times "
              f"the C floor's cost; [lo-hi]: 95 % interval of the geometric mean ratio)\n")
    targets = [t for sc in scs for t in sc.targets]
    count = {v: sum(1 for t in targets if t.verdict == v)
             for v in ("PASS", "FAIL", "undecided", "n/a")}
    w(f"\nTargets: {count['PASS']} PASS, {count['FAIL']} FAIL, "
      f"{count['undecided']} undecided, {count['n/a']} n/a   (total {meta['elapsed_s']:.0f} s)\n")
    for t in targets:
        if t.verdict == "undecided":
            e = t.estimate
            w(f"  undecided: {t.subject} {t.text}: interval [{e.lo:.3g}, {e.hi:.3g}] holds "
              f"the threshold {t.threshold:g} after {e.n} rounds\n")


def to_json(scs, meta):
    return {"meta": meta, "scenarios": [sc.to_json() for sc in scs]}


def plot(scs, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    shown = [sc for sc in scs if any(r.median for r in sc.rows.values())]
    if not shown:
        log("plot: nothing to draw")
        return
    colors = {"shmlot": "tab:green", "mp": "tab:blue", "posix_ipc": "tab:orange",
              "fcntl": "tab:purple", "filelock": "tab:brown", "threading": "tab:gray",
              "floor": "black"}
    cols = 2
    rows = (len(shown) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(13, 3.2 * rows), squeeze=False)
    for ax, sc in zip(axes.flat, shown):
        items = [(r.subject, r.median, r.family) for r in sc.rows.values()]
        labels = [s if m is not None else f"{s} (n/a)" for s, m, _ in items]
        vals = [m or 0 for _, m, _ in items]
        ax.barh(labels, vals, color=[colors.get(f, "tab:gray") for _, _, f in items])
        ax.invert_yaxis()
        positive = [v for v in vals if v > 0]
        if positive and max(positive) / min(positive) > 20:
            ax.set_xscale("log")
        ax.set_title(f"{sc.short} [{sc.unit}, {sc.better} is better]", fontsize=9)
        ax.tick_params(labelsize=8)
        for i, (s, m, _) in enumerate(items):
            if m is not None:
                ax.text(m, i, " " + fmt_value(m, sc.unit), va="center", fontsize=7)
    for ax in list(axes.flat)[len(shown):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
