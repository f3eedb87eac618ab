"""What grows with a user's work: many processes on one lock, many waiters on one condition, a
full table of parked threads, many lots mapped in one process, many objects placed in one segment.

Each table's target is flatness (the big case <= 1.5 x the small one) where the design promises
it; where a figure grows, docs/performance.md says why."""
import secrets
import time

from .. import targets as T
from ..common import FLOOR, Unavailable, pc
from ..registry import register
from ..results import Scenario
from ..runner import run_rounds
from .contended import contended
from .notify import notify
from .park import park, park_roundtrips, pinned_to_one_cpu

SCALE_PROCS = 128
EXTRA_LOTS = 63          # with the benchmark's own lot: 64 lots mapped
PLACED = (1_000, 100_000)


def _rounds(cfg):
    return min(cfg.repeat, 3), max(min(cfg.repeat, 3), cfg.max_repeat // 2)


def scale_contended(cfg, env):
    lo, hi = _rounds(cfg)
    cfg2 = _Override(cfg, repeat=lo, max_repeat=hi)
    return contended(cfg2, env, SCALE_PROCS, ("shmlot.Lock", "mp.Lock", FLOOR))


def scale_notify(cfg, env):
    return notify(_Override(cfg, repeat=_rounds(cfg)[0], max_repeat=_rounds(cfg)[1],
                            notify_rounds=min(cfg.notify_rounds, 3)), env, SCALE_PROCS)


def scale_park(cfg, env):
    """Park + unpark with the table full: every slot but the two of the ping-pong taken."""
    env.shmlot()
    slots = getattr(env.lot, "slots", 4096)
    full = slots - 2
    return park(_Override(cfg, repeat=_rounds(cfg)[0], max_repeat=_rounds(cfg)[1]), env,
                [1, full], sid="park_full", elsewhere=[full],
                label=lambda n: f"shmlot park, {n} parked" + (" (table full)" if n == full
                                                                else ""))


class _Override:
    """cfg with some knobs changed (Config itself is never modified)."""

    def __init__(self, cfg, **kw):
        self._cfg, self._kw = cfg, kw

    def __getattr__(self, k):
        return self._kw[k] if k in self._kw else getattr(self._cfg, k)


def _flat(sc, small, big, what):
    return T.Target(big, f"<= 1.5 x {what}", "<=", 1.5, T.ratio(big, small), level="scale")


def _new_drop_loop(cls, budget_ns):
    """ns per anonymous object created and dropped (batches of 64; median)."""
    per = []
    end = pc() + budget_ns
    while len(per) < 5 or pc() < end:
        t0 = pc()
        for _ in range(64):
            cls()
        per.append((pc() - t0) / 64)
    per.sort()
    return per[len(per) // 2]


def scale_lots(cfg, env):
    """The cost of an operation on one lot while the process maps 1 or 64 lots."""
    sc = Scenario(env, f"lots_{EXTRA_LOTS + 1}", f"one lot's operations while the process maps "
                  f"1 or {EXTRA_LOTS + 1} lots", "ns/op")
    few, many = "1 lot mapped", f"{EXTRA_LOTS + 1} lots mapped"
    rows = [f"park+unpark rt, {few}", f"park+unpark rt, {many}",
            f"Lock() new+drop, {few}", f"Lock() new+drop, {many}"]
    for r in rows:
        sc.row(r, "shmlot")
    sc.targets = [_flat(sc, rows[0], rows[1], "with 1 lot"), _flat(sc, rows[2], rows[3],
                                                                   "with 1 lot")]

    def one(name, row, rnd):
        shmlot = env.shmlot()
        lot = env.lot
        extra = []
        try:
            if many in name:
                for _ in range(EXTRA_LOTS):
                    nm = f"shmlot-bench-extra-{secrets.token_hex(6)}"
                    extra.append(shmlot.ParkingLot.create(nm, buckets=64, slots=64))
                    extra[-1].key_at(0)   # touch it the way an object would
            if name.startswith("park"):
                base = secrets.randbits(62)
                with pinned_to_one_cpu():
                    row.add(rnd, park_roundtrips(lot, base, base + 1, cfg.park_budget),
                            lots=1 + len(extra))
            else:
                row.add(rnd, _new_drop_loop(shmlot.Lock, cfg.loop_budget), lots=1 + len(extra))
        finally:
            for x in extra:
                try:
                    x.unlink()
                    x.close()
                except Exception:
                    pass

    lo, hi = _rounds(cfg)
    return run_rounds(sc, cfg, rows, one, lo, hi)


def scale_placed(cfg, env):
    """Objects placed with Lock.at() in one segment: creation cost per object, and the cost of
    `with lock:` going over all of them in turn."""
    small, big = PLACED
    sc = Scenario(env, f"placed_{big}", f"Lock.at(): {small:,} or {big:,} objects placed in one "
                  "segment", "ns/op")
    rows = [f"Lock.at() per object, {small:,} placed", f"Lock.at() per object, {big:,} placed",
            f"`with lock:` over all, {small:,} placed", f"`with lock:` over all, {big:,} placed"]
    for r in rows:
        sc.row(r, "shmlot")
    sc.targets = [_flat(sc, rows[0], rows[1], f"with {small:,}"),
                  _flat(sc, rows[2], rows[3], f"with {small:,}")]

    def one(name, row, rnd):
        shmlot = env.shmlot()
        from multiprocessing import shared_memory
        n = big if f"{big:,}" in name else small
        shm = shared_memory.SharedMemory(create=True, size=n * shmlot.Lock.SIZE)
        locks = None
        try:
            at = shmlot.Lock.at
            size = shmlot.Lock.SIZE
            t0 = pc()
            locks = [at(shm, i * size) for i in range(n)]
            t_create = (pc() - t0) / n
            if name.startswith("Lock.at"):
                row.add(rnd, t_create, objects=n)
                return
            best = None
            end = time.monotonic() + max(cfg.loop_budget / 1e9, 0.05)
            while best is None or time.monotonic() < end:
                t0 = pc()
                for lock in locks:
                    with lock:
                        pass
                t = (pc() - t0) / n
                best = t if best is None else min(best, t)
            row.add(rnd, best, objects=n)
        finally:
            locks = None   # each holds a view of the segment: drop them before closing it
            try:
                shm.close()
            except BufferError:
                pass
            shm.unlink()

    lo, hi = _rounds(cfg)
    return run_rounds(sc, cfg, rows, one, lo, hi)


register("scale", f"what grows with a user's work: {SCALE_PROCS} contending processes, "
                  f"notify_all of {SCALE_PROCS}, park+unpark with the table full, "
                  f"{EXTRA_LOTS + 1} lots mapped, {PLACED[1]:,} objects placed with .at()",
         lambda cfg: [(f"contended ({SCALE_PROCS} procs)", scale_contended),
                      (f"notify_all ({SCALE_PROCS} waiters)", scale_notify),
                      ("park, table full", scale_park),
                      (f"{EXTRA_LOTS + 1} lots mapped", scale_lots),
                      (f"{PLACED[1]:,} objects placed", scale_placed)],
         quick=False)
