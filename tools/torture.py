#!/usr/bin/env python3
"""SIGKILL torture for shmlot's primitives.

Unrelated worker processes (``python tools/torture.py --worker ...``, each attaching to the lot
and to a stats segment by name) hammer named primitives while the coordinator SIGKILLs a random
worker every ``--kill-every`` seconds and starts a replacement in its place:

======== ========================================================================================
group    what the workers do, and the invariant they check
======== ========================================================================================
lock     ``Lock``: critical section with an owner mark (0 outside; the holder's pid inside).
cond     a bounded queue (head/tail words) under a ``Condition`` (its own RLock): producers and
         consumers ``wait(0.2)`` while full/empty and ``notify()``; owner mark as for lock, and
         ``0 <= tail - head <= CAPACITY``.
sem      ``Semaphore(SEM_UNITS)``: an atomic count of holders must never exceed SEM_UNITS.
rw       ``RWLock``: readers raise a per-worker flag inside; writers check no flag is raised and
         keep an owner mark.
barrier  ``Barrier(parties)`` with an action counting rounds: a party may only leave after the
         action of its round ran. Broken rounds (dead or late parties) are reset and retried.
======== ========================================================================================

Ground truth for the owner-death check: the killer first SIGSTOPs its victim and reads the lock
words while it is frozen (a stopped process is alive, so nobody can take its locks over). If a
word names the victim, the victim dies holding that lock, and exactly one later acquirer must get
``OwnerDiedError`` naming its pid. The acquirer records the pid in a ledger, repairs the
invariant (clears the dead owner's mark, counts the section as abandoned) and goes on. A victim
frozen in a spot where its death could not be accounted for exactly is let go (SIGCONT) and
another is chosen later ("deferred"): a worker that holds a lock word but has not yet reached its
critical section (it may be the one just told about a previous death), a semaphore worker between
taking a unit and saying so, and a reader in the same position. Semaphores have no owner: the
killer gives back the unit of a victim that held one.

Checked at the end (exit status 1 and a FAIL line otherwise):
- exclusion never broken (owner marks, semaphore bound, reader/writer flags, barrier rounds);
- progress: no group goes ``--window`` seconds without completing an operation while it can
  progress, that is while each of its roles has an attached worker (the barrier: all its
  parties). Only that time counts: a group that lost its only worker of a role (the semaphore's
  single worker, a barrier party) waits for the replacement, and with ``--spawn exec`` an
  interpreter takes a second or more to start on a loaded machine;
- every death while holding a Lock, the Condition's lock or the RWLock's write side reported
  exactly once by OwnerDiedError, and no report for anything else;
- no worker hung (all stop within a few seconds of the stop flag) or failed unexpectedly;
- after ``reap()`` no slot is left in use, and the lot's primitives still work.

Replacements are new interpreters (``--spawn exec``, the default) or children forked from a
zygote process that has shmlot imported and never attaches (``--spawn zygote``): they attach by
name just the same, but start in a millisecond, so kills come every few milliseconds instead of
as fast as interpreters start (about 20 per second on two cores). One replacement per group is
in flight at a time, and a group's workers are only killed again once it has completed an
operation since it was last able to progress, so every replacement shows the group progressing.

Usage::

    python tools/torture.py --duration 30 --workers 10 --waiter futex
    python tools/torture.py --duration 30 --workers 10 --waiter semaphore --spawn zygote
    python tools/torture.py --groups lock,cond --kill-every 0.002 --spawn zygote --debug

The last line printed is a JSON summary (also with ``--json`` only that line).
"""
import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid

import shmlot
from shmlot import _fast
from shmlot._core import ffi, lib
from shmlot.errors import OwnerDiedError
from stress_harness import (StatsSegment, die_with_parent, on_termination_signals_exit,
                            report)

# ---- shared layout of the stats segment (u64 words) ----------------------------------------------

MAXW = 64
W_STOP, W_VIOLATIONS, W_ANOMALIES, W_BAR_ROUNDS, W_BAR_BREAKS, W_SEM_IN, W_Q_HEAD, W_Q_TAIL = \
    range(8)
W_MARK = 8            # 8..10: owner marks of lock, cond, rw (write side)
W_ABANDONED = 11      # 11..13: sections found abandoned by a dead owner, per lockable
W_LEDGER_HEAD = 14
W_OPS = 16            # 16..16+len(GROUPS): completed operations per group
W_PHASE = 32          # per worker
W_READY = W_PHASE + MAXW     # pid of the worker in this position once it is attached
W_RFLAG = W_READY + MAXW     # reader flag of an rw worker
W_LEDGER = W_RFLAG + MAXW    # (lockable << 32 | dead pid) per OwnerDiedError
LEDGER_CAP = 1 << 16
STATS_SIZE = 8 * (W_LEDGER + LEDGER_CAP)

GROUPS = ("lock", "cond", "sem", "rw", "barrier")
ROLES = ("lock", "cond_put", "cond_get", "sem", "rw_read", "rw_write", "barrier")
ROLE_GROUP = {"lock": "lock", "cond_put": "cond", "cond_get": "cond", "sem": "sem",
              "rw_read": "rw", "rw_write": "rw", "barrier": "barrier"}
LOCKABLES = ("lock", "cond", "rw")   # the owner-tracked locks (index = ledger tag)
LOCKABLE_OF = {"lock": "lock", "cond_put": "cond", "cond_get": "cond", "rw_read": "rw",
               "rw_write": "rw"}

# worker phases (W_PHASE + w)
OUT, ACQUIRING, INSIDE, RELEASING = range(4)

QUEUE_CAPACITY = 4
SEM_UNITS = 2
ACQUIRE_TIMEOUT = 5.0   # a worker that cannot get a lock in this long reports an anomaly
COND_WAIT = 0.2
BARRIER_WAIT = 0.5


class Stats(StatsSegment):
    """The stats segment of the torture run, with its ledger of owner deaths."""

    def __init__(self, name, create=False):
        super().__init__(name, STATS_SIZE, create)

    def ops(self, group):
        return self.get(W_OPS + GROUPS.index(group))

    def ledger(self):
        n = min(self.get(W_LEDGER_HEAD), LEDGER_CAP)
        return [self.get(W_LEDGER + i) for i in range(n)]

    def record_death(self, lockable, exc):
        """Append the dead owner an OwnerDiedError about ``lockable`` names to the ledger;
        return its pid."""
        m = DIED_PID.search(str(exc))
        pid = int(m.group(1)) if m else 0
        i = self.add(W_LEDGER_HEAD)
        if i < LEDGER_CAP:
            self[W_LEDGER + i].store(LOCKABLES.index(lockable) << 32 | pid)
        return pid


def open_objects(lot, barrier_parties, action=None):
    objs = {
        "lock": shmlot.Lock(name="torture-lock", lot=lot),
        "cond": shmlot.Condition(name="torture-cond", lot=lot),
        "sem": shmlot.Semaphore(SEM_UNITS, name="torture-sem", lot=lot),
        "rw": shmlot.RWLock(name="torture-rw", lot=lot),
    }
    if barrier_parties:  # no barrier group: no barrier (Barrier(0) is rightly refused)
        objs["barrier"] = shmlot.Barrier(barrier_parties, action, name="torture-barrier",
                                         lot=lot)
    return objs


def lock_words(objs):
    """The current lock word of each lockable (for the killer)."""
    return {"lock": objs["lock"]._word(), "cond": objs["cond"]._lock._word(),
            "rw": objs["rw"]._words[0].load()}


def word_holder(word):
    """pid named by a lock word that is LOCKED, else 0."""
    if not word & 1:
        return 0
    return _fast.word_owner(word)[0]


# ---- worker ---------------------------------------------------------------------------------------

DIED_PID = re.compile(r"pid (\d+)")


class Worker:
    def __init__(self, args):
        self.lot = shmlot.ParkingLot.attach(args.lot)
        self.st = Stats(args.stats)
        self.w = args.index
        self.role = args.role
        self.me = os.getpid()
        self.objs = open_objects(self.lot, args.parties,
                                 action=lambda: self.st.add(W_BAR_ROUNDS))
        self.rng = random.Random(self.me)

    # -- reporting --

    def violation(self, what):
        self.st.add(W_VIOLATIONS)
        print(f"VIOLATION pid {self.me} ({self.role}): {what}", file=sys.stderr, flush=True)

    def anomaly(self, what):
        self.st.add(W_ANOMALIES)
        print(f"ANOMALY pid {self.me} ({self.role}): {what}", file=sys.stderr, flush=True)

    def phase(self, p):
        self.st[W_PHASE + self.w].store(p)

    def report_death(self, lockable, exc):
        """Record the OwnerDiedError (still in phase ACQUIRING: the killer never kills a holder in
        that phase, so this record cannot be lost) and return the dead owner's pid."""
        return self.st.record_death(lockable, exc)

    def enter(self, lockable, died):
        """Now holding ``lockable``: check and set its owner mark."""
        mark = self.st[W_MARK + LOCKABLES.index(lockable)]
        m = mark.load()
        if died is None:
            if m != 0:
                self.violation(f"{lockable}: entered while marked by pid {m}")
        elif m not in (0, died):
            self.violation(f"{lockable}: dead owner {died} but mark says {m}")
        elif m == died:
            self.st.add(W_ABANDONED + LOCKABLES.index(lockable))  # repair: the section is void
        mark.store(self.me)
        self.phase(INSIDE)

    def leave(self, lockable):
        mark = self.st[W_MARK + LOCKABLES.index(lockable)]
        for _ in range(self.rng.randrange(1, 200)):  # widen the window for an intruder
            if mark.load() != self.me:
                self.violation(f"{lockable}: mark changed to {mark.load()} inside my section")
                break
        mark.store(0)
        self.phase(RELEASING)

    def done(self, group):
        self.phase(OUT)
        self.st.add(W_OPS + GROUPS.index(group))

    # -- roles --

    def take(self, lockable, acquire, what):
        """Acquire ``lockable`` exclusively (``acquire(timeout=...)``) and enter its section;
        False (an anomaly, phase OUT) if it timed out. A dead owner's lock is taken over."""
        self.phase(ACQUIRING)
        died = None
        try:
            if not acquire(timeout=ACQUIRE_TIMEOUT):
                self.anomaly(f"{what} timed out")
                self.phase(OUT)
                return False
        except OwnerDiedError as exc:
            died = self.report_death(lockable, exc)
        self.enter(lockable, died)
        return True

    def do_lock(self):
        lock = self.objs["lock"]
        if not self.take("lock", lock.acquire, "Lock.acquire"):
            return
        self.leave("lock")
        lock.release()
        self.done("lock")

    def _cond_wait(self, cond):
        self.leave("cond")          # the lock is given up while waiting
        self.phase(ACQUIRING)
        died = None
        try:
            cond.wait(COND_WAIT)
        except OwnerDiedError as exc:   # re-acquiring found the holder dead: we hold it now
            died = self.report_death("cond", exc)
        self.enter("cond", died)

    def _queue_check(self):
        n = self.st.get(W_Q_TAIL) - self.st.get(W_Q_HEAD)
        if not 0 <= n <= QUEUE_CAPACITY:
            self.violation(f"cond: queue holds {n} items")
        return n

    def do_cond(self, put):
        cond = self.objs["cond"]
        if not self.take("cond", cond.acquire, "Condition.acquire"):
            return
        moved = False
        for _ in range(5):
            n = self._queue_check()
            if (n < QUEUE_CAPACITY) if put else (n > 0):
                self.st.add(W_Q_TAIL if put else W_Q_HEAD)
                self._queue_check()
                cond.notify()
                moved = True
                break
            if self.st.get(W_STOP):
                break
            self._cond_wait(cond)
        self.leave("cond")
        cond.release()
        if moved:
            self.done("cond")
        else:
            self.phase(OUT)

    def do_sem(self):
        sem = self.objs["sem"]
        self.phase(ACQUIRING)
        if not sem.acquire(timeout=ACQUIRE_TIMEOUT):
            self.anomaly("Semaphore.acquire timed out")
            self.phase(OUT)
            return
        inside = self.st.add(W_SEM_IN) + 1
        self.phase(INSIDE)
        if inside > SEM_UNITS:
            self.violation(f"sem: {inside} holders of {SEM_UNITS} units")
        for _ in range(self.rng.randrange(1, 200)):
            pass
        self.phase(RELEASING)
        self.st.add(W_SEM_IN, -1)
        sem.release()
        self.done("sem")

    def do_rw_read(self):
        rw = self.objs["rw"]
        self.phase(ACQUIRING)
        try:
            if not rw.acquire_read(timeout=ACQUIRE_TIMEOUT):
                self.anomaly("RWLock.acquire_read timed out")
                self.phase(OUT)
                return
        except OwnerDiedError as exc:
            # a dead writer: the write lock is ours now; repair, release, done for this round
            died = self.report_death("rw", exc)
            self.enter("rw", died)
            self.leave("rw")
            rw.release_write()
            self.done("rw")
            return
        flag = self.st[W_RFLAG + self.w]
        flag.store(1)
        self.phase(INSIDE)
        if self.st.get(W_MARK + 2):
            self.violation(f"rw: reading while writer {self.st.get(W_MARK + 2)} is inside")
        flag.store(0)
        self.phase(RELEASING)
        rw.release_read()
        self.done("rw")

    def do_rw_write(self):
        rw = self.objs["rw"]
        if not self.take("rw", rw.acquire_write, "RWLock.acquire_write"):
            return
        readers = [i for i in range(MAXW) if self.st.get(W_RFLAG + i)]
        if readers:
            self.violation(f"rw: writing while readers {readers} are inside")
        self.leave("rw")
        rw.release_write()
        self.done("rw")

    def do_barrier(self):
        bar = self.objs["barrier"]
        before = self.st.get(W_BAR_ROUNDS)
        try:
            bar.wait(BARRIER_WAIT)
        except shmlot.BrokenBarrierError:
            self.st.add(W_BAR_BREAKS)
            if bar.broken:
                bar.reset()
            return
        if self.st.get(W_BAR_ROUNDS) <= before:
            self.violation("barrier: left before the round's action ran")
        self.done("barrier")

    def run(self):
        role = {"lock": self.do_lock, "cond_put": lambda: self.do_cond(True),
                "cond_get": lambda: self.do_cond(False), "sem": self.do_sem,
                "rw_read": self.do_rw_read, "rw_write": self.do_rw_write,
                "barrier": self.do_barrier}[self.role]
        self.st[W_READY + self.w].store(self.me)
        while not self.st.get(W_STOP):
            try:
                role()
            except Exception as exc:  # noqa: BLE001 - every surprise is reported
                self.anomaly(f"{type(exc).__name__}: {exc}")
                time.sleep(0.01)
        self.phase(OUT)


# ---- zygote: fast replacements -------------------------------------------------------------------
#
# With --spawn zygote, one process started like any worker imports shmlot once and forks each
# worker on request; the child attaches to the lot by name like an exec'd worker (the zygote never
# attaches), so replacements take a millisecond instead of an interpreter start-up, and the kill
# rate is no longer bounded by exec. Protocol on its stdin/stdout: "spawn W ROLE" -> "pid W PID";
# "exit PID CODE" whenever a child ends (the zygote reaps them).

def zygote_main(args):
    import threading as _threading
    out_lock = _threading.Lock()

    def say(line):
        with out_lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    def reaper():
        while True:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                time.sleep(0.005)
                continue
            say(f"exit {pid} {os.waitstatus_to_exitcode(status)}")

    _threading.Thread(target=reaper, daemon=True).start()
    devnull = os.open(os.devnull, os.O_RDWR)
    for line in sys.stdin:
        _, w, role = line.split()
        pid = os.fork()
        if pid == 0:
            die_with_parent()
            os.dup2(devnull, 0)
            os.dup2(devnull, 1)
            args.index, args.role = int(w), role
            code = 0
            try:
                Worker(args).run()
            except BaseException:  # noqa: B902 - reported on stderr, exit 1
                import traceback
                traceback.print_exc()
                code = 1
            os._exit(code)
        say(f"pid {w} {pid}")
    return 0


class ZygoteChild:
    """What the coordinator needs of a Popen, for a child of the zygote."""

    def __init__(self, zygote, pid):
        self.zygote, self.pid, self.returncode = zygote, pid, None

    def poll(self):
        if self.returncode is None:
            self.returncode = self.zygote.exits.get(self.pid)
        return self.returncode

    def wait(self, timeout=None):
        end = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if end is not None and time.monotonic() > end:
                raise subprocess.TimeoutExpired(str(self.pid), timeout)
            time.sleep(0.0005)
        return self.returncode

    def kill(self):
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class Zygote:
    def __init__(self, cmd, env, log):
        import queue
        import threading as _threading
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=log, env=env, text=True, bufsize=1)
        self.exits = {}
        self.pids = queue.Queue()
        _threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            kind, a, b = line.split()
            if kind == "pid":
                self.pids.put(int(b))
            else:
                self.exits[int(a)] = int(b)

    def spawn(self, w, role):
        self.proc.stdin.write(f"spawn {w} {role}\n")
        self.proc.stdin.flush()
        return ZygoteChild(self, self.pids.get(timeout=30))

    def close(self):
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def proc_state(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return None


# ---- coordinator ----------------------------------------------------------------------------------

def assign_roles(n, groups=GROUPS):
    """Roles for n workers in ``groups``: two barrier parties, the rest round-robin over the
    other roles."""
    others = [r for r in ROLES if r != "barrier" and ROLE_GROUP[r] in groups]
    roles = ["barrier", "barrier"] if "barrier" in groups else []
    i = 0
    while len(roles) < n:
        roles.append(others[i % len(others)])
        i += 1
    return roles[:n]


class Coordinator:
    def __init__(self, args):
        self.args = args
        tag = uuid.uuid4().hex[:8]
        self.lot_name = args.lot or f"shmlot-torture-{os.getpid()}-{tag}"
        self.stats_name = f"{self.lot_name}-stats"
        self.lot = shmlot.ParkingLot.create(self.lot_name, buckets=256, slots=256,
                                            waiter=args.waiter)
        self.st = Stats(self.stats_name, create=True)
        self.groups = tuple(g for g in GROUPS if g in args.groups)
        self.roles = assign_roles(args.workers, self.groups)
        missing = set(self.groups) - {ROLE_GROUP[r] for r in self.roles}
        if missing:
            raise SystemExit(f"too few workers for groups {sorted(missing)}")
        self.parties = self.roles.count("barrier")
        self.objs = open_objects(self.lot, self.parties)
        self.procs = {}             # position -> Popen
        self.log = tempfile.TemporaryFile("w+")
        self.rng = random.Random(args.seed)
        self.kills = 0
        self.deferred = 0
        self.kills_holding = {k: [] for k in LOCKABLES}
        self.victims = {}           # pid -> (role, phase, holding when frozen, holding when reaped)
        self.kills_by_role = {r: 0 for r in ROLES}
        self.sem_returned = 0
        self.spawned = 0
        self.exits = []             # unexpected exits: (position, role, returncode)
        self.slot_buf = ffi.new("sl_slot_info[]", self.lot.slots)
        self.env = dict(os.environ, SHMLOT_WAITER=args.waiter)
        self.zygote = None
        if args.spawn == "zygote":
            self.zygote = Zygote(self.worker_cmd("--zygote"), self.env, self.log)

    # -- processes --

    def spawn(self, w):
        self.st[W_READY + w].store(0)
        self.st[W_PHASE + w].store(OUT)
        self.st[W_RFLAG + w].store(0)
        if self.zygote is not None:
            self.procs[w] = self.zygote.spawn(w, self.roles[w])
        else:
            self.procs[w] = subprocess.Popen(
                self.worker_cmd("--worker", "--index", str(w), "--role", self.roles[w]),
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self.log,
                env=self.env)
        self.spawned += 1

    def worker_cmd(self, *extra):
        return [sys.executable, os.path.abspath(__file__), *extra, "--lot", self.lot_name,
                "--stats", self.stats_name, "--parties", str(self.parties)]

    def stop_and_wait(self, proc):
        """SIGSTOP ``proc`` and wait until it is stopped: True, or False if it exited."""
        os.kill(proc.pid, signal.SIGSTOP)
        if self.zygote is None:
            _, status = os.waitpid(proc.pid, os.WUNTRACED)
            if os.WIFSTOPPED(status):
                return True
            proc.returncode = os.waitstatus_to_exitcode(status)
            return False
        while True:
            state = proc_state(proc.pid)
            if state in ("T", "t"):
                return True
            if state in (None, "Z", "X") or proc.poll() is not None:
                proc.wait(10)
                return False
            time.sleep(0.0001)

    def ready(self):
        return [w for w, p in self.procs.items()
                if p.returncode is None and self.st.get(W_READY + w) == p.pid]

    def can_progress(self):
        """The groups each of whose roles has an attached worker (the barrier: every party)."""
        attached = {}
        for w in self.ready():
            attached[self.roles[w]] = attached.get(self.roles[w], 0) + 1
        needed = {r: (self.parties if r == "barrier" else 1) for r in set(self.roles)}
        return {g for g in self.groups
                if all(attached.get(r, 0) >= n for r, n in needed.items() if ROLE_GROUP[r] == g)}

    def has_slot(self, pid):
        n = lib.sl_snapshot_slots(self.lot._l, self.slot_buf, self.lot.slots)
        return any(s.pid == pid and s.state != 0 for s in self.slot_buf[0:max(n, 0)])

    def kill_one(self, spare=()):
        """Freeze a random attached worker (none of the groups in ``spare``), decide from what it
        holds whether its death can be accounted for exactly, then kill it (or let it go) and
        start a replacement."""
        ready = set(self.ready())
        # one replacement at a time per group
        spare = {ROLE_GROUP[self.roles[w]] for w in self.procs if w not in ready} | set(spare)
        candidates = sorted(w for w in ready if ROLE_GROUP[self.roles[w]] not in spare)
        if not candidates:
            return
        w = self.rng.choice(candidates)
        proc = self.procs[w]
        role = self.roles[w]
        if not self.stop_and_wait(proc):   # it exited by itself
            self.exits.append((w, role, proc.returncode))
            self.spawn(w)
            return
        phase = self.st.get(W_PHASE + w)
        holding = [k for k, word in lock_words(self.objs).items() if word_holder(word) == proc.pid]
        if holding and phase == ACQUIRING:
            defer = True      # it may be the acquirer told about an earlier death
        elif role == "sem":
            # a unit is held exactly in phase INSIDE; elsewhere only while not inside park()
            defer = phase == RELEASING or (phase == ACQUIRING and not self.has_slot(proc.pid))
        else:
            defer = False
        if defer:
            self.deferred += 1
            os.kill(proc.pid, signal.SIGCONT)
            return
        give_back = role == "sem" and phase == INSIDE
        if give_back:
            self.st.add(W_SEM_IN, -1)           # fix our count while it cannot run
        if role == "rw_read":
            self.st[W_RFLAG + w].store(0)     # its share is reclaimed by the lock itself
        for k in holding:
            self.kills_holding[k].append(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        after = [k for k, word in lock_words(self.objs).items() if word_holder(word) == proc.pid]
        self.victims[proc.pid] = (role, phase, holding, after)
        if give_back:
            self.objs["sem"].release()         # semaphores have no owner: return its unit
            self.sem_returned += 1
        self.kills += 1
        self.kills_by_role[role] += 1
        self.spawn(w)

    def check_exits(self):
        for w, p in list(self.procs.items()):
            if p.returncode is None and p.poll() is not None:
                self.exits.append((w, self.roles[w], p.returncode))
                self.spawn(w)

    # -- the run --

    def run(self):
        args = self.args
        failures = []
        stalls = []
        t_start = time.monotonic()
        try:
            for w in range(len(self.roles)):
                self.spawn(w)
            deadline = time.monotonic() + 30
            while len(self.ready()) < len(self.roles):
                if time.monotonic() > deadline:
                    raise RuntimeError("workers did not start")
                self.check_exits()
                time.sleep(0.01)
            t0 = then = time.monotonic()
            end = t0 + args.duration
            last = {g: self.st.ops(g) for g in self.groups}
            idle_for = dict.fromkeys(self.groups, 0.0)   # time able to progress since last op
            able_for = dict.fromkeys(self.groups, 0.0)   # time able to progress in all
            able = self.can_progress()
            unproven = set(self.groups)   # able, but no operation completed since it became so
            next_kill = t0 + args.kill_every
            while True:
                now = time.monotonic()
                if now >= end:
                    break
                # Only the coordinator takes workers away, so a group able to progress at the
                # end of the last round stayed able until now.
                idle = []
                for g in self.groups:
                    ops = self.st.ops(g)
                    if ops != last[g]:
                        last[g], idle_for[g] = ops, 0.0
                        unproven.discard(g)
                    if g in able:
                        idle_for[g] += now - then
                        able_for[g] += now - then
                    if idle_for[g] >= args.window:
                        idle.append(g)
                        idle_for[g] = 0.0
                if idle:
                    stalls.append((round(now - t0, 2), idle))
                    if args.debug:
                        self.dump(idle)
                then = now
                if args.kill_every and now >= next_kill:
                    self.kill_one(spare=unproven)
                    next_kill = max(next_kill + args.kill_every, time.monotonic())
                self.check_exits()
                was_able, able = able, self.can_progress()
                unproven |= able - was_able
                time.sleep(min(0.001, max(0.0, next_kill - time.monotonic())))
            elapsed = time.monotonic() - t0
            # -- stop --
            self.st[W_STOP].store(1)
            hung = []
            stop_deadline = time.monotonic() + ACQUIRE_TIMEOUT + 5
            for w, p in self.procs.items():
                try:
                    p.wait(max(0.1, stop_deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    hung.append((w, self.roles[w], p.pid))
            for w, p in self.procs.items():
                if p.returncode is None:
                    p.kill()
                    p.wait()
                elif p.returncode != 0 and (w, self.roles[w], p.returncode) not in self.exits:
                    self.exits.append((w, self.roles[w], p.returncode))
            # -- collect deaths nobody acquired after, check the lot still works --
            flushed = self.flush()
            slots, holds = self.lot.reap()
            info = self.lot.info()
            leftover = [dict(pid=s.pid, state=s.state, key=s.key) for s in self._slots()]
            self.log.seek(0)
            log_lines = self.log.read().splitlines()
            ledger = self.st.ledger()
            reports = {k: sorted(e & 0xFFFFFFFF for e in ledger if e >> 32 == i)
                       for i, k in enumerate(LOCKABLES)}
            summary = {
                "waiter": args.waiter, "spawn": args.spawn, "workers": len(self.roles),
                "seconds": round(elapsed, 2),
                "kills": self.kills, "kills_per_second": round(self.kills / elapsed, 1),
                "deferred": self.deferred, "spawned": self.spawned,
                "kills_by_role": self.kills_by_role,
                "groups": list(self.groups),
                "ops": {g: self.st.ops(g) for g in self.groups},
                "deaths_holding": {k: len(v) for k, v in self.kills_holding.items()},
                "owner_died_reports": {k: len(v) for k, v in reports.items()},
                "abandoned_sections": {k: self.st.get(W_ABANDONED + i)
                                       for i, k in enumerate(LOCKABLES)},
                "sem_units_returned": self.sem_returned,
                "barrier_rounds": self.st.get(W_BAR_ROUNDS),
                "barrier_breaks": self.st.get(W_BAR_BREAKS),
                "violations": self.st.get(W_VIOLATIONS), "anomalies": self.st.get(W_ANOMALIES),
                "seconds_able_to_progress": {g: round(t, 2) for g, t in able_for.items()},
                "stalls": stalls, "hung": hung, "unexpected_exits": self.exits,
                "flush": flushed, "reaped": [slots, holds],
                "slots_in_use_after_reap": info["slots"] - info["slots_free"],
                "counters": info["counters"],
            }
            # -- verdict --
            if summary["violations"]:
                failures.append(f"{summary['violations']} invariant violations")
            if summary["anomalies"]:
                failures.append(f"{summary['anomalies']} anomalies (timeouts, exceptions)")
            if stalls:
                failures.append(f"no progress in {len(stalls)} window(s): {stalls[:5]}")
            if hung:
                failures.append(f"hung workers: {hung}")
            if self.exits:
                failures.append(f"workers exited unexpectedly: {self.exits[:5]}")
            handed = {}
            for k in LOCKABLES:
                failures += self.check_reports(k, reports[k], handed)
            summary["owner_died_reports_handed_to_frozen_waiter"] = handed
            if leftover:
                failures.append(f"slots still in use after reap: {leftover[:5]}")
            if flushed.get("error"):
                failures.append(f"after the run: {flushed['error']}")
            summary["failures"] = failures
            summary["log"] = [line for line in log_lines if line.strip()][-20:]
            summary["total_seconds"] = round(time.monotonic() - t_start, 2)
            return summary
        finally:
            for p in self.procs.values():
                if p.returncode is None:
                    try:
                        os.kill(p.pid, signal.SIGCONT)
                    except ProcessLookupError:
                        pass
                    p.kill()
                    p.wait()
            if self.zygote is not None:
                self.zygote.close()
            self.st.unlink()
            self.lot.unlink()

    def check_reports(self, k, reported, handed):
        """Every death while holding ``k`` reported exactly once; a report about any other victim
        is only right if that victim was waiting for ``k`` when frozen (an unlocker may hand the
        lock to a frozen waiter between our look at the words and the SIGKILL)."""
        out = []
        dups = sorted({p for p in reported if reported.count(p) > 1})
        if dups:
            out.append(f"{k}: deaths reported more than once: {dups}")
        missing = sorted(set(self.kills_holding[k]) - set(reported))
        if missing:
            out.append(f"{k}: deaths while holding never reported: "
                       f"{ {p: self.victims.get(p) for p in missing} }")
        extra = sorted(set(reported) - set(self.kills_holding[k]))
        wrong = {}
        for p in extra:
            role, phase, _, _ = self.victims.get(p, (None, None, None, None))
            if role is not None and LOCKABLE_OF.get(role) == k and phase == ACQUIRING:
                handed[k] = handed.get(k, 0) + 1
            else:
                wrong[p] = self.victims.get(p)
        if wrong:
            out.append(f"{k}: OwnerDiedError about processes that did not hold it: {wrong}")
        return out

    def dump(self, idle):
        """--debug: what the stalled groups look like."""
        words = {k: f"{v:#x}" for k, v in lock_words(self.objs).items()}
        ready = self.ready()
        phases = {w: (self.roles[w], self.procs[w].pid, self.st.get(W_PHASE + w), w in ready)
                  for w in self.procs}
        slots = [(s.pid, s.state, f"{s.key:#x}", f"{s.hint:#x}") for s in self._slots()]
        keys = {k: f"{o.key:#x}" for k, o in self.objs.items()}
        print(f"STALL {idle}: words {words} sem {self.objs['sem']._value()} keys {keys}\n"
              f"  phases {phases}\n  slots {slots}", file=sys.stderr, flush=True)

    def _slots(self):
        n = lib.sl_snapshot_slots(self.lot._l, self.slot_buf, self.lot.slots)
        return [s for s in self.slot_buf[0:max(n, 0)] if s.state != 0]

    def flush(self):
        """After every worker is gone: take each lock once (collecting the OwnerDiedError of a
        death nobody acquired after), and use each primitive once more."""
        out = {}
        o = self.objs
        try:
            for k, lock in (("lock", o["lock"]), ("cond", o["cond"])):
                try:
                    ok = lock.acquire(timeout=3)
                except OwnerDiedError as exc:
                    ok = True
                    self.st.record_death(k, exc)
                if not ok:
                    raise RuntimeError(f"{k} cannot be acquired after the run")
                lock.release()
            try:
                ok = o["rw"].acquire_write(timeout=3)
            except OwnerDiedError as exc:
                ok = True
                self.st.record_death("rw", exc)
            if not ok:
                raise RuntimeError("RWLock write side cannot be acquired after the run "
                                   f"(state word {o['rw']._words[0].load():#x})")
            o["rw"].release_write()
            if not o["rw"].acquire_read(timeout=3):
                raise RuntimeError("RWLock read side cannot be acquired after the run")
            o["rw"].release_read()
            units = 0
            while o["sem"].acquire(timeout=0.05):
                units += 1
            out["sem_units_left"] = units
            if units != SEM_UNITS:
                raise RuntimeError(f"semaphore has {units} units after the run, not {SEM_UNITS}")
            o["sem"].release(units)
        except Exception as exc:  # noqa: BLE001
            out["error"] = f"{type(exc).__name__}: {exc}"
        return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=10.0, help="seconds of torture (10)")
    p.add_argument("--workers", type=int, default=10, help="worker processes (10, at least 8)")
    p.add_argument("--waiter", choices=("futex", "semaphore"), default="futex")
    p.add_argument("--kill-every", type=float, default=0.005,
                   help="seconds between kills (0.005; 0 disables killing)")
    p.add_argument("--window", type=float, default=1.0,
                   help="no group may go this many seconds able to progress without "
                   "progressing (1.0)")
    p.add_argument("--groups", default=",".join(GROUPS),
                   help="comma-separated primitives to torture (default: all: %(default)s)")
    p.add_argument("--spawn", choices=("exec", "zygote"), default="exec",
                   help="start each worker as a new interpreter (exec, default) or fork it from "
                   "a zygote process that has shmlot imported (replacements in about 1 ms, so "
                   "the kill rate is not bounded by interpreter start-up)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--lot", help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", help="print only the JSON summary")
    p.add_argument("--debug", action="store_true", help="dump the lot's state on each stall")
    # worker mode (started by the coordinator)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--zygote", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--stats", help=argparse.SUPPRESS)
    p.add_argument("--index", type=int, help=argparse.SUPPRESS)
    p.add_argument("--role", choices=ROLES, help=argparse.SUPPRESS)
    p.add_argument("--parties", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        die_with_parent()
        Worker(args).run()
        return 0
    if args.zygote:
        die_with_parent()
        return zygote_main(args)
    on_termination_signals_exit()
    if not 2 <= args.workers <= MAXW:
        p.error(f"--workers must be in [2, {MAXW}]")
    args.groups = args.groups.split(",")
    unknown = set(args.groups) - set(GROUPS)
    if unknown or not args.groups:
        p.error(f"unknown groups {sorted(unknown)}; choose from {','.join(GROUPS)}")
    summary = Coordinator(args).run()
    if args.json:
        print(json.dumps(summary))
        return 1 if summary["failures"] else 0
    return report(summary, hidden=("log", "counters"))


if __name__ == "__main__":
    sys.exit(main())
