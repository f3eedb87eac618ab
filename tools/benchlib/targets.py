"""Targets: a figure drawn from a scenario's rows, a threshold, and a verdict from the figure's
interval (stats.verdict): PASS, FAIL, or "undecided" while the interval straddles the threshold.

`level` is "base" for the project's first figures and "raised" for the next round's."""
from . import stats


class Target:
    def __init__(self, subject, text, op, threshold, figure, level="base"):
        self.subject, self.text, self.op, self.threshold = subject, text, op, threshold
        self.figure, self.level = figure, level   # figure(scenario) -> stats.Estimate or None
        self.estimate, self.verdict = None, "n/a"

    def evaluate(self, sc):
        try:
            self.estimate = self.figure(sc)
        except (ZeroDivisionError, ValueError):
            self.estimate = None
        self.verdict = stats.verdict(self.estimate, self.op, self.threshold)
        return self.verdict

    @property
    def passed(self):
        return {"PASS": True, "FAIL": False}.get(self.verdict)

    def to_json(self):
        e = self.estimate
        return {"subject": self.subject, "text": self.text, "level": self.level,
                "op": self.op, "threshold": self.threshold,
                "value": None if e is None else round(e.value, 4),
                "interval": None if e is None else [e.lo, e.hi], "n": None if e is None else e.n,
                "verdict": self.verdict, "pass": self.passed}


# ---- figures ----------------------------------------------------------------------------------

def ratio(subject, ref):
    """subject / ref, paired by round."""
    return lambda sc: sc.ratio(subject, ref)


def ratio_floor(subject):
    return lambda sc: sc.ratio_floor(subject)


def extra(subject, key, as_ratio=False):
    """A side figure of one row: a ratio (log interval) or a plain value (t-interval)."""
    def fig(sc):
        row = sc.rows.get(subject)
        if row is None or not row.ok:
            return None
        vals = row.extra_values(key)
        if as_ratio:
            return stats.ratio_interval(vals, exact=sc.exact)
        return stats.mean_interval(vals, exact=sc.exact)
    return fig


def value(subject):
    return lambda sc: sc.interval(subject)


def undecided(targets):
    return [t for t in targets if t.verdict == "undecided"]
