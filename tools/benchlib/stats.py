"""Confidence intervals for the figures, and the verdict on a target.

A figure is measured once per round; inside a round every subject of the scenario is measured
once, in an order that rotates from round to round, so that two subjects' figures from the same
round saw the same machine. A ratio between two subjects is therefore taken per round (paired),
and its interval is a Student t-interval on the logarithms of the per-round ratios: the ratio of
two noisy times is skewed, its logarithm much less so, and exp() of the interval's ends is again
an interval for the geometric mean ratio. Figures that may be zero (a process's share of the
throughput) get a t-interval on the values themselves.
"""
import math
import statistics

CONFIDENCE = 0.95

# two-sided 95 % Student t quantiles, by degrees of freedom
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
        9: 2.262, 10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120,
        17: 2.110, 18: 2.101, 19: 2.093, 20: 2.086, 22: 2.074, 24: 2.064, 26: 2.056, 28: 2.048,
        30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980}


def t95(df):
    """The 97.5th percentile of Student's t with `df` degrees of freedom (between tabulated
    values, the one of the next lower tabulated df: slightly wider, never narrower)."""
    if df < 1:
        return math.inf
    if df > 120:
        return 1.960
    return _T95[max(k for k in _T95 if k <= df)]


class Estimate:
    """A point estimate with its 95 % interval over `n` samples (lo == hi when n == 1 or the
    samples are equal: deterministic figures)."""

    __slots__ = ("value", "lo", "hi", "n")

    def __init__(self, value, lo, hi, n):
        self.value, self.lo, self.hi, self.n = value, lo, hi, n

    @property
    def half_width(self):
        """Half the interval's width relative to the value (e.g. 0.05: ±5 %)."""
        if self.value is None or not self.value or self.lo is None:
            return None
        return (self.hi - self.lo) / 2 / abs(self.value)

    def to_json(self):
        return {"value": self.value, "lo": self.lo, "hi": self.hi, "n": self.n}

    def __repr__(self):
        return f"Estimate({self.value:.4g} [{self.lo:.4g}, {self.hi:.4g}], n={self.n})"


def mean_interval(samples, exact=False):
    """Mean and t-interval of the samples. One sample has an unbounded interval unless the figure
    is `exact` (deterministic: the same on every run)."""
    xs = [float(x) for x in samples if x is not None and math.isfinite(x)]
    if not xs:
        return None
    m = statistics.fmean(xs)
    if exact:
        return Estimate(m, min(xs), max(xs), len(xs))
    if len(xs) < 2:
        return Estimate(m, -math.inf, math.inf, 1)
    h = t95(len(xs) - 1) * statistics.stdev(xs) / math.sqrt(len(xs))
    return Estimate(m, m - h, m + h, len(xs))


def ratio_interval(ratios, exact=False):
    """Geometric mean of positive per-round ratios and its t-interval (on the logarithms)."""
    rs = [float(r) for r in ratios if r is not None and r > 0 and math.isfinite(r)]
    if not rs:
        return None
    logs = [math.log(r) for r in rs]
    m = statistics.fmean(logs)
    if exact:
        v = rs[0] if len(rs) == 1 else math.exp(m)
        return Estimate(v, min(v, *rs), max(v, *rs), len(rs))
    if len(logs) < 2:
        return Estimate(math.exp(m), 0.0, math.inf, 1)
    h = t95(len(logs) - 1) * statistics.stdev(logs) / math.sqrt(len(logs))
    return Estimate(math.exp(m), math.exp(m - h), math.exp(m + h), len(logs))


def paired_ratios(a, b):
    """a[i] / b[i] for the rounds in which both were measured (dicts round -> value)."""
    return [a[r] / b[r] for r in sorted(a) if r in b and b[r] and a[r] is not None]


def verdict(est, op, threshold):
    """'PASS' when the whole interval meets `op threshold`, 'FAIL' when none of it does,
    'undecided' when it straddles the threshold, 'n/a' without an estimate."""
    if est is None:
        return "n/a"
    ok = (lambda x: x <= threshold) if op == "<=" else (
        (lambda x: x >= threshold) if op == ">=" else (
            (lambda x: x < threshold) if op == "<" else (lambda x: x > threshold)))
    lo_ok, hi_ok = ok(est.lo), ok(est.hi)
    if lo_ok and hi_ok:
        return "PASS"
    if not lo_ok and not hi_ok:
        return "FAIL"
    return "undecided"
