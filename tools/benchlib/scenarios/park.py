"""ParkingLot park + unpark_one round trips while N threads are parked on other keys."""
import os
import secrets
import statistics
import threading
import time

from .. import targets as T
from ..common import BenchTimeout, Unavailable, expect, kill_procs, pc
from ..registry import scenario
from ..results import Scenario
from ..runner import run_rounds


def park_roundtrips(lot, key_a, key_b, budget_ns):
    """Median ns of a park+unpark_one round trip between this thread and a helper thread."""
    state = [0]   # 0: B waits, 1: B's turn, 2: A's turn, 3: stop
    err = []

    def helper():
        try:
            while True:
                while state[0] not in (1, 3):
                    lot.park(key_b, validate=lambda: state[0] not in (1, 3))
                if state[0] == 3:
                    return
                state[0] = 2
                lot.unpark_one(key_a)
        except BaseException as e:
            err.append(e)
            state[0] = 2
            lot.unpark_one(key_a)

    def batch(k):
        t0 = pc()
        for _ in range(k):
            state[0] = 1
            lot.unpark_one(key_b)
            while state[0] != 2:
                lot.park(key_a, validate=lambda: state[0] != 2)
            if err:
                raise err[0]
        return pc() - t0

    t = threading.Thread(target=helper, daemon=True)
    t.start()
    try:
        k = 1
        while k < 512 and batch(k) < 1_000_000:
            k *= 2
        per = []
        end = pc() + budget_ns
        while len(per) < 5 or pc() < end:
            per.append(batch(k) / k)
        return statistics.median(per)
    finally:
        state[0] = 3
        lot.unpark_one(key_b)
        t.join(10)


class pinned_to_one_cpu:
    """Pin the calling thread (and threads it starts) to one CPU for the block."""

    def __enter__(self):
        try:
            self.old = os.sched_getaffinity(0)
            os.sched_setaffinity(0, {max(self.old)})
        except (AttributeError, OSError):
            self.old = None
        return self

    def __exit__(self, *exc):
        if self.old is not None:
            try:
                os.sched_setaffinity(0, self.old)
            except OSError:
                pass


class parked_threads:
    """`n` threads parked on distinct keys of `lot` for the block; all woken and joined on exit."""

    def __init__(self, lot, n, stack=256 * 1024):
        self.lot, self.n, self.stack = lot, n, stack
        self.base = secrets.randbits(62)
        self.threads, self.parked, self.errors = [], [], []
        self.released = False

    def _parker(self, key):
        try:
            while not self.released:
                self.lot.park(key, validate=lambda: not self.released,
                              before_sleep=lambda: self.parked.append(1))
        except BaseException as e:
            self.errors.append(e)

    def __enter__(self):
        old = threading.stack_size()
        try:
            threading.stack_size(self.stack)
            for i in range(self.n):
                th = threading.Thread(target=self._parker, args=(self.base + 2 + i,), daemon=True)
                th.start()
                self.threads.append(th)
        finally:
            threading.stack_size(old)
        end = time.monotonic() + 60 + self.n / 50
        while len(self.parked) < self.n and not self.errors:
            if time.monotonic() > end:
                self.__exit__()
                raise BenchTimeout(f"only {len(self.parked)} of {self.n} threads parked")
            time.sleep(0.002)
        if self.errors:
            self.__exit__()
            raise self.errors[0]
        return self

    def __exit__(self, *exc):
        self.released = True
        for i in range(self.n):
            self.lot.unpark_all(self.base + 2 + i)
        end = time.monotonic() + 30 + self.n / 100
        for th in self.threads:
            th.join(max(0.0, end - time.monotonic()))
        stuck = sum(th.is_alive() for th in self.threads)
        if stuck and not exc:
            raise RuntimeError(f"{stuck} of {self.n} parked threads did not wake on unpark_all")


def _parked_child(lot_name, n, conn):
    """Park `n` threads of this (child) process until the parent says stop."""
    try:
        import shmlot
        lot = shmlot.ParkingLot.attach(lot_name)
        with parked_threads(lot, n):
            conn.send("ready")
            conn.recv()
        conn.send("done")
    except BaseException as e:
        try:
            conn.send(("error", f"{type(e).__name__}: {e}"))
        except Exception:
            pass


class parked_elsewhere:
    """`n` threads parked on distinct keys of the lot, in a child process, for the block."""

    def __init__(self, env, n):
        self.env, self.n = env, n

    def __enter__(self):
        self.conn, child = self.env.ctx.Pipe()
        self.proc = self.env.ctx.Process(target=_parked_child,
                                         args=(self.env.lot_name, self.n, child), daemon=True)
        self.proc.start()
        expect(self.conn, 120 + self.n / 20)
        return self

    def __exit__(self, *exc):
        try:
            self.conn.send("stop")
            expect(self.conn, 60)
        finally:
            self.proc.join(10)
            kill_procs([self.proc])


def park(cfg, env, parked, sid="park", label=None, elsewhere=()):
    """Rows: one per count in `parked` (threads of this process), and one per count in
    `elsewhere` (threads of another process: the table's cost without this process's GIL)."""
    sc = Scenario(env, sid, "park + unpark_one round trip between two threads pinned to one CPU, "
                  "N threads parked on other keys", "ns/rt", reference=None)
    label = label or (lambda n: f"shmlot park, {n} parked")
    plan = [(label(n), n, False) for n in parked]
    plan += [(label(n) + " in another process", n, True) for n in elsewhere]
    names = [p[0] for p in plan]
    for n in names:
        sc.row(n, "shmlot")
    sc.targets = [T.Target(n, f"<= 1.5 x ({names[0].split(', ')[1]})", "<=", 1.5,
                           T.ratio(n, names[0])) for n in names[1:]]

    def one(name, row, rnd):
        _, nparked, other = plan[names.index(name)]
        env.shmlot()
        lot = env.lot
        if lot is None or not hasattr(lot, "park"):
            raise Unavailable("shmlot.ParkingLot.park does not exist yet")
        base = secrets.randbits(62)
        with (parked_elsewhere(env, nparked) if other else parked_threads(lot, nparked)):
            # Both ping-pong threads on one CPU (the parked ones stay where they are): a
            # hand-off is then a plain context switch, and the figure does not jump between
            # "same core" and "other core" modes from sample to sample (2.5-3x apart on a
            # 2-vCPU VM), which would drown the flatness being measured.
            with pinned_to_one_cpu():
                row.add(rnd, park_roundtrips(lot, base, base + 1, cfg.park_budget),
                        parked=nparked)

    return run_rounds(sc, cfg, names, one)


@scenario("park", "ParkingLot park+unpark_one round trip between two threads while N threads "
                  "(--parked, default 1,100,2000) are parked on other keys (ns per round trip)")
def park_default(cfg, env):
    return park(cfg, env, cfg.parked)
