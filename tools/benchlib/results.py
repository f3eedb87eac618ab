"""Rows and scenarios: the figures as measured, round by round, and the intervals drawn from them.

A Row keeps one figure per round (round number -> value) and any side figures (a process's share
of the throughput, a latency percentile) the same way, so that ratios between rows pair the
figures of the same round (see stats)."""
import statistics

from . import stats
from .common import Unavailable


class Row:
    def __init__(self, subject, family):
        self.subject, self.family = subject, family
        self.values = {}           # round -> figure
        self.extra = {}            # name -> {round -> value}
        self.status, self.reason = "ok", ""

    def add(self, rnd, value, **extra):
        self.values[rnd] = value
        for k, v in extra.items():
            self.extra.setdefault(k, {})[rnd] = v

    @property
    def ok(self):
        return self.status == "ok" and bool(self.values)

    @property
    def samples(self):
        return [self.values[r] for r in sorted(self.values)]

    @property
    def median(self):
        return statistics.median(self.samples) if self.ok else None

    def extra_values(self, k):
        d = self.extra.get(k, {})
        return [d[r] for r in sorted(d)]

    def extra_median(self, k):
        vals = self.extra_values(k)
        return statistics.median(vals) if vals and self.ok else None

    def fail(self, exc):
        if isinstance(exc, Unavailable):
            self.status, self.reason = "n/a", str(exc)
        else:
            self.status = "error"
            self.reason = f"{type(exc).__name__}: {exc}".strip().splitlines()[0][:160]


class Scenario:
    """One table of the report. `reference`: the subject the "x mp" column divides by (a shmlot
    subject is divided by its multiprocessing twin when there is one); `floor`: the floor row.
    `exact`: the figures are deterministic (instruction counts, sizes): one round decides."""

    def __init__(self, env, sid, title, unit, better="lower", reference=None, floor=None,
                 exact=False):
        self.env = env
        self.id, self.title, self.unit, self.better = sid, title, unit, better
        self.short = title if len(title) <= 60 else sid.replace("_", " ")
        self.reference, self.floor, self.exact = reference, floor, exact
        self.rows = {}
        self.targets = []            # targets.Target, evaluated after every round
        self.floor_constant = None   # a floor figure measured elsewhere (busy: the lock floor)
        self.rounds = 0
        self.elapsed = 0.0
        self.note = ""

    def row(self, subject, family):
        if subject not in self.rows:
            row = Row(subject, family)
            if self.env is not None and not self.env.wanted(subject):
                return row              # filtered out by --subjects: measured nowhere
            self.rows[subject] = row
        return self.rows[subject]

    def median(self, subject):
        r = self.rows.get(subject)
        return r.median if r else None

    def mp_ref(self, subject):
        """The row `subject` is compared with: its multiprocessing twin (shmlot.Lock -> mp.Lock;
        "threading.Lock acquire()+release()" -> "mp.Lock acquire()+release()") when there is one,
        else the scenario's reference."""
        head, _, rest = subject.partition(".")
        if head == "shmlot" or " " in rest:
            twin = "mp." + rest
            if twin in self.rows:
                return twin
        return self.reference

    def ratio(self, subject, ref):
        """Estimate of subject / ref, paired by round."""
        a, b = self.rows.get(subject), self.rows.get(ref)
        if a is None or b is None or not a.ok or not b.ok:
            return None
        return stats.ratio_interval(stats.paired_ratios(a.values, b.values), exact=self.exact)

    def ratio_mp(self, subject):
        ref = self.mp_ref(subject)
        return self.ratio(subject, ref) if ref and ref != subject else None

    def ratio_floor(self, subject):
        """How many times the floor's cost (lower is better: subject / floor; higher is better:
        floor / subject)."""
        row = self.rows.get(subject)
        if row is None or not row.ok or subject == self.floor:
            return None
        if self.floor_constant:
            vals = {r: v / self.floor_constant for r, v in row.values.items()}
            return stats.ratio_interval(list(vals.values()), exact=self.exact)
        if not self.floor:
            return None
        if self.better == "lower":
            return self.ratio(subject, self.floor)
        return self.ratio(self.floor, subject)

    def interval(self, subject):
        row = self.rows.get(subject)
        if row is None or not row.ok:
            return None
        return stats.mean_interval(row.samples, exact=self.exact)

    def to_json(self):
        def est(e):
            return None if e is None else e.to_json()
        rows = []
        for r in self.rows.values():
            rmp = self.ratio_mp(r.subject)
            rfl = self.ratio_floor(r.subject)
            rows.append({
                "subject": r.subject, "family": r.family, "status": r.status,
                "reason": r.reason or None, "median": r.median, "samples": r.samples,
                "rounds": sorted(r.values), "interval": est(self.interval(r.subject)),
                "extra": {k: r.extra_median(k) for k in r.extra},
                "extra_samples": {k: r.extra_values(k) for k in r.extra},
                "ratio_mp": None if rmp is None else rmp.value,
                "ratio_mp_interval": est(rmp), "mp_reference": self.mp_ref(r.subject),
                "ratio_floor": None if rfl is None else rfl.value,
                "ratio_floor_interval": est(rfl),
            })
        return {"id": self.id, "title": self.title, "unit": self.unit, "better": self.better,
                "reference": self.reference, "floor": self.floor, "exact": self.exact,
                "rows": rows, "rounds": self.rounds, "note": self.note or None,
                "targets": [t.to_json() for t in self.targets],
                "elapsed_s": round(self.elapsed, 2)}
