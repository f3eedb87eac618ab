#!/usr/bin/env python3
"""Soak: eight processes mix every primitive with timeouts for a minute. On demand,
not in CI.

    python tools/soak.py                     # 60 s, 8 processes, futex waiter
    python tools/soak.py --duration 600 --waiter semaphore

Each worker process (``tools/soak.py --worker``, attaching by name) loops over random operations
on named primitives of one lot: Lock, RLock (nested), a Condition-guarded queue (producers and
consumers), Semaphore(3), BoundedSemaphore(2), an RWLock (readers and writers), the low-level
park/unpark, anonymous Locks created and dropped, and acquires with tiny timeouts that may
legitimately fail. Every 150 iterations all eight meet at a Barrier(8), then ping-pong an Event
and a Condition with a partner process.

Every wait whose condition is bound to come true soon (the holder's critical section is a few
microseconds, producers never stop, all parties come to the barrier...) gets a generous timeout
(GENEROUS seconds). Reaching it is a failure: a *lost wake-up* if the condition held when the wait
gave up (the lock free, a unit available, the event set, an item queued), a *stall* otherwise.

Resources are sampled every second: slots in use, registry objects and holds, each worker's open
file descriptors (/proc/PID/fd), and this run's entries in /dev/shm (the semaphore backend's
per-slot semaphores of this lot counted apart: one per slot index ever used, bounded by the peak
of concurrent parks; entries of other users of the machine are only reported). After a warm-up, none may grow: descriptors and /dev/shm entries at the last
sample must not exceed those at the first sample after warm-up; once the workers are gone no slot
may be in use, no hold left, and only the named objects remain in the registry.

Prints a table of figures and a JSON summary line; exit status 1 on any failure.
"""
import argparse
import os
import random
import subprocess
import sys
import time
import uuid

import shmlot
from stress_harness import (StatsSegment, die_with_parent, on_termination_signals_exit,
                            report)


GENEROUS = 5.0        # seconds: a wait that must not time out
TINY = 0.0005         # seconds: a wait that may
WORKERS = 8
QUEUE_CAP = 8
SEM_UNITS = 3
BARRIER_EVERY = 150
WARMUP = 3.0

# stats words
S_STOP, S_HEAD, S_TAIL, S_MARK, S_RW_WRITER, S_SEM_IN, S_RMARK = range(7)
S_COUNTS = 16                      # op counters, by OPS index
S_TINY_TIMEOUTS = 48               # tiny-timeout misses, by OPS index
S_LOST, S_STALLS = 80, 81
S_READERS = 82                     # readers inside
S_ANOMALIES = 83
S_PAIRS = 84                       # 84..87: turn counters of the Condition ping-pong pairs
STATS_SIZE = 8 * 128

OPS = ("lock", "rlock", "cond_put", "cond_get", "sem", "bsem", "rw_read", "rw_write", "park",
       "anon", "tiny_lock", "tiny_sem", "tiny_rw", "barrier", "event_pingpong", "cond_pingpong")


def objects(lot):
    return {
        "lock": shmlot.Lock(name="soak-lock", lot=lot),
        "rlock": shmlot.RLock(name="soak-rlock", lot=lot),
        "cond": shmlot.Condition(name="soak-cond", lot=lot),
        "sem": shmlot.Semaphore(SEM_UNITS, name="soak-sem", lot=lot),
        "bsem": shmlot.BoundedSemaphore(2, name="soak-bsem", lot=lot),
        "rw": shmlot.RWLock(name="soak-rw", lot=lot),
        "barrier": shmlot.Barrier(WORKERS, name="soak-barrier", lot=lot),
        "events": [shmlot.Event(name=f"soak-ev{i}", lot=lot) for i in range(WORKERS)],
    }


class Worker:
    def __init__(self, args):
        self.lot = shmlot.ParkingLot.attach(args.lot)
        self.st = StatsSegment(args.stats, STATS_SIZE)
        self.i = args.index
        self.me = os.getpid()
        self.o = objects(self.lot)
        self.rng = random.Random(self.me)

    def count(self, op):
        self.st.add(S_COUNTS + OPS.index(op))

    def gave_up(self, what, condition_held):
        which = S_LOST if condition_held else S_STALLS
        self.st.add(which)
        kind = "LOST WAKE-UP" if condition_held else "STALL"
        print(f"{kind} pid {self.me}: {what} reached its {GENEROUS} s timeout", file=sys.stderr,
              flush=True)

    def anomaly(self, what):
        self.st.add(S_ANOMALIES)
        print(f"ANOMALY pid {self.me}: {what}", file=sys.stderr, flush=True)

    def inside(self, word):
        mark = self.st[word]
        if mark.load():
            self.anomaly(f"exclusion broken (word {word} marked by {mark.load()})")
        mark.store(self.me)
        mark.store(0)

    # -- operations --

    def op_lock(self):
        lock = self.o["lock"]
        if not lock.acquire(timeout=GENEROUS):
            return self.gave_up("Lock.acquire", not lock.locked())
        self.inside(S_MARK)
        lock.release()

    def op_rlock(self):
        r = self.o["rlock"]
        if not r.acquire(timeout=GENEROUS):
            return self.gave_up("RLock.acquire", r._owner() is None)
        with r:                            # nested
            self.inside(S_RMARK)
        r.release()

    def op_cond(self, put):
        """The queue under the Condition, with tiny waits: nothing guarantees a partner right
        now (the generous Condition wait is the ping-pong after the barrier)."""
        cond = self.o["cond"]
        if not cond.acquire(timeout=GENEROUS):
            return self.gave_up("Condition.acquire", cond._lock._owner() is None)
        try:
            def ready():
                n = self.st.get(S_TAIL) - self.st.get(S_HEAD)
                return n < QUEUE_CAP if put else n > 0
            if cond.wait_for(ready, TINY):
                self.st.add(S_TAIL if put else S_HEAD)
                cond.notify()
            n = self.st.get(S_TAIL) - self.st.get(S_HEAD)
            if not 0 <= n <= QUEUE_CAP:
                self.anomaly(f"queue holds {n}")
        finally:
            cond.release()

    def op_sem(self, name, units):
        sem = self.o[name]
        if not sem.acquire(timeout=GENEROUS):
            return self.gave_up(f"{name}.acquire", sem._value() > 0)
        if name == "sem":
            n = self.st.add(S_SEM_IN) + 1
            if n > units:
                self.anomaly(f"{n} inside a Semaphore({units})")
            self.st.add(S_SEM_IN, -1)
        sem.release()

    def op_rw(self, write):
        rw = self.o["rw"]
        if write:
            if not rw.acquire_write(timeout=GENEROUS):
                return self.gave_up("RWLock.acquire_write", rw._words[0].load() == 0)
            if self.st.get(S_READERS):
                self.anomaly("writer inside with readers")
            self.inside(S_RW_WRITER)
            rw.release_write()
        else:
            if not rw.acquire_read(timeout=GENEROUS):
                return self.gave_up("RWLock.acquire_read", not rw._words[0].load() & 1)
            self.st.add(S_READERS)
            if self.st.get(S_RW_WRITER):
                self.anomaly("reader inside with a writer")
            self.st.add(S_READERS, -1)
            rw.release_read()

    def op_park(self):
        # the low-level API on a key of our own: invalid half the time, else a tiny timed park
        key = 0x50A0_0000 + self.i
        r = self.lot.park(key, validate=lambda: self.rng.random() < 0.5, timeout=TINY)
        if not (r.is_invalid or r.is_timed_out):
            self.anomaly(f"park on a private key returned {r}")
        self.lot.unpark_one(key)

    def op_anon(self):
        lk = shmlot.Lock(lot=self.lot)     # anonymous: freed when the handle goes
        with lk:
            pass
        del lk

    def op_tiny(self, what):
        o = self.o
        got = {"tiny_lock": lambda: o["lock"].acquire(timeout=TINY),
               "tiny_sem": lambda: o["sem"].acquire(timeout=TINY),
               "tiny_rw": lambda: o["rw"].acquire_write(timeout=TINY)}[what]()
        if got:
            {"tiny_lock": o["lock"].release, "tiny_sem": o["sem"].release,
             "tiny_rw": o["rw"].release_write}[what]()
        else:
            self.st.add(S_TINY_TIMEOUTS + OPS.index(what))

    def meet(self):
        try:
            self.o["barrier"].wait(2 * GENEROUS)
        except shmlot.BrokenBarrierError:
            if self.st.get(S_STOP):
                return False
            self.gave_up("Barrier.wait", False)
            self.o["barrier"].reset()
            return False
        self.count("barrier")
        # ping-pong with the partner: evens serve, odds answer
        mine, theirs = self.o["events"][self.i], self.o["events"][self.i ^ 1]
        if self.i % 2 == 0:
            theirs.set()
        if not mine.wait(GENEROUS):
            self.gave_up("Event.wait (ping-pong)", mine.is_set())
            return True
        mine.clear()
        if self.i % 2 == 1:
            theirs.set()
        self.count("event_pingpong")
        # and through the Condition: the pair's counter goes up by one per turn, evens on even
        # values; each waits (generously) for the other's turn
        cond, turn = self.o["cond"], self.st[S_PAIRS + self.i // 2]
        for _ in range(2):
            if not cond.acquire(timeout=GENEROUS):
                self.gave_up("Condition.acquire (ping-pong)", cond._lock._owner() is None)
                return True
            try:
                def my_turn():
                    return turn.load() % 2 == self.i % 2
                if not cond.wait_for(my_turn, GENEROUS):
                    self.gave_up("Condition.wait (ping-pong)", my_turn())
                    return True
                turn.fetch_add(1)
                cond.notify_all()
            finally:
                cond.release()
        self.count("cond_pingpong")
        return True

    def run(self):
        weighted = (["lock"] * 4 + ["rlock"] * 2 + ["cond_put"] * 2 + ["cond_get"] * 2 +
                    ["sem"] * 2 + ["bsem"] + ["rw_read"] * 3 + ["rw_write"] + ["park"] +
                    ["anon"] + ["tiny_lock", "tiny_sem", "tiny_rw"])
        n = 0
        while not self.st.get(S_STOP):
            n += 1
            if n % BARRIER_EVERY == 0:
                self.meet()
                # the events of the pair are clear again: the partner cleared its own
                continue
            op = self.rng.choice(weighted)
            try:
                if op == "lock":
                    self.op_lock()
                elif op == "rlock":
                    self.op_rlock()
                elif op in ("cond_put", "cond_get"):
                    self.op_cond(op == "cond_put")
                elif op in ("sem", "bsem"):
                    self.op_sem(op, SEM_UNITS if op == "sem" else 2)
                elif op in ("rw_read", "rw_write"):
                    self.op_rw(op == "rw_write")
                elif op == "park":
                    self.op_park()
                elif op == "anon":
                    self.op_anon()
                else:
                    self.op_tiny(op)
            except Exception as exc:  # noqa: BLE001
                self.anomaly(f"{op}: {type(exc).__name__}: {exc}")
            self.count(op)
        # leave the barrier usable by nobody: the others are stopping too
        self.o["barrier"].abort()


# ---- coordinator -----------------------------------------------------------------------------------

def shm_entries(name, lot_id):
    """(entries of this run in /dev/shm: the lot, its stats segment and anything else named after
    it; this lot's semaphores; all entries). The semaphore backend makes one semaphore per slot
    index ever used, bounded by the peak of concurrent parks. Other entries belong to whoever
    else uses this machine, and are only reported."""
    sems = f"sem.sl{lot_id:016x}."
    entries = os.listdir("/dev/shm")
    ours = sum(1 for e in entries if e.startswith(name))
    return ours, sum(1 for e in entries if e.startswith(sems)), len(entries)


def fd_count(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def sample(lot, procs):
    info = lot.info()
    holds = len(lot._snapshot_holds())
    shm, sems, total = shm_entries(lot.name, info["lot_id"])
    return {"t": time.monotonic(), "slots_in_use": info["slots"] - info["slots_free"],
            "objects": info["objects_used"], "holds": holds, "shm": shm, "lot_semaphores": sems,
            "shm_total": total, "fds": [fd_count(p.pid) for p in procs]}


def coordinator(args):
    name = f"shmlot-soak-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    lot = shmlot.ParkingLot.create(name, waiter=args.waiter)
    st = StatsSegment(f"{name}-stats", STATS_SIZE, create=True)
    objs = objects(lot)
    procs = []
    log_path = f"/tmp/{name}.log"
    log = open(log_path, "w+")
    failures = []
    try:
        for i in range(WORKERS):
            procs.append(subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), "--worker", "--lot", name,
                 "--stats", st.name, "--index", str(i)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log))
        t0 = time.monotonic()
        samples = []
        next_sample = t0 + 1
        while time.monotonic() < t0 + args.duration:
            if any(p.poll() is not None for p in procs):
                failures.append("a worker exited early: "
                                f"{[(p.pid, p.returncode) for p in procs if p.poll() is not None]}")
                break
            if time.monotonic() >= next_sample:
                samples.append(sample(lot, procs))
                next_sample += 1
            time.sleep(0.05)
        elapsed = time.monotonic() - t0
        st[S_STOP].store(1)
        for p in procs:
            try:
                p.wait(3 * GENEROUS)
            except subprocess.TimeoutExpired:
                failures.append(f"worker {p.pid} did not stop")
                p.kill()
                p.wait()
        end = sample(lot, [])
        counts = {op: st.get(S_COUNTS + i) for i, op in enumerate(OPS)}
        tiny = {op: st.get(S_TINY_TIMEOUTS + OPS.index(op))
                for op in ("tiny_lock", "tiny_sem", "tiny_rw")}
        base = next((s for s in samples if s["t"] - t0 >= WARMUP), samples[0] if samples else end)
        last = samples[-1] if samples else end
        summary = {
            "waiter": args.waiter, "processes": WORKERS, "seconds": round(elapsed, 1),
            "ops": counts, "ops_per_second": round(sum(counts.values()) / elapsed),
            "tiny_timeouts": tiny, "lost_wakeups": st.get(S_LOST), "stalls": st.get(S_STALLS),
            "anomalies": st.get(S_ANOMALIES),
            "slots_in_use": {"max": max((s["slots_in_use"] for s in samples), default=0),
                             "end": end["slots_in_use"]},
            "objects": {"after_warmup": base["objects"], "last": last["objects"],
                        "end": end["objects"]},
            "holds": {"max": max((x["holds"] for x in samples), default=0), "end": end["holds"]},
            "fds": {"after_warmup": base["fds"], "last": last["fds"]},
            "dev_shm_entries": {"after_warmup": base["shm"], "last": last["shm"],
                                "end": end["shm"]},
            "lot_semaphores": {"after_warmup": base["lot_semaphores"],
                               "end": end["lot_semaphores"]},
            "dev_shm_all_users": {"after_warmup": base["shm_total"], "end": end["shm_total"]},
        }
        if summary["lost_wakeups"]:
            failures.append(f"{summary['lost_wakeups']} lost wake-ups")
        if summary["stalls"]:
            failures.append(f"{summary['stalls']} waits reached their {GENEROUS} s timeout")
        if summary["anomalies"]:
            failures.append(f"{summary['anomalies']} anomalies")
        if end["slots_in_use"]:
            failures.append(f"{end['slots_in_use']} slots still in use after the run")
        named = 7 + WORKERS   # the coordinator's named objects; anonymous ones come and go
        if end["objects"] != named or last["objects"] > named + WORKERS:
            failures.append(f"registry objects grew: {summary['objects']} ({named} named)")
        if end["holds"] > 0:
            failures.append(f"holds left after the run: {summary['holds']}")
        if any(b >= 0 and l > b for b, l in zip(base["fds"], last["fds"])):
            failures.append(f"file descriptors grew: {summary['fds']}")
        if last["shm"] > base["shm"]:
            failures.append(f"/dev/shm entries grew: {summary['dev_shm_entries']}")
        if end["lot_semaphores"] > max(x["slots_in_use"] for x in samples + [end]) + WORKERS:
            failures.append(f"this lot's semaphores outgrew its peak of parked threads: "
                            f"{summary['lot_semaphores']}")
        log.seek(0)
        summary["log"] = [line.rstrip() for line in log.readlines()[-20:]]
        summary["failures"] = failures
        return summary
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        del objs
        st.unlink()
        lot.unlink()
        log.close()
        os.unlink(log_path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=60.0)
    p.add_argument("--waiter", choices=("futex", "semaphore"), default="futex")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--lot", help=argparse.SUPPRESS)
    p.add_argument("--stats", help=argparse.SUPPRESS)
    p.add_argument("--index", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        die_with_parent()
        Worker(args).run()
        return 0
    on_termination_signals_exit()
    return report(coordinator(args))


if __name__ == "__main__":
    sys.exit(main())
