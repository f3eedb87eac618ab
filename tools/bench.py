#!/usr/bin/env python3
"""shmlot benchmark: every scenario of SPEC section 7, shmlot side by side with its peers.

    python tools/bench.py                      # full run (a few minutes), table on stdout
    python tools/bench.py --quick              # short run (~30 s)
    python tools/bench.py --only pingpong,park --repeat 7 --json out.json --plot out.png

Scenarios (``--only`` takes a comma-separated list of these):

  uncontended  ``with lock:`` in one thread, no contention                     (ns per op)
  busy         the same while a second Python thread runs pure-Python work;
               median of small batches, so a lock that keeps the GIL only pays
               for its own work, and one that drops it pays a hand-off per call (ns per op)
  pingpong     two processes hand a token back and forth (Semaphore / Event)  (ns per round trip)
  contended    N processes (--procs, default 2,8,32) loop on one lock with a
               tiny critical section; throughput, slowest process's share of
               the mean, 99th-percentile acquire latency                      (ops per second)
  notify       Condition.notify_all with 32 waiting processes: time until the
               last one has re-acquired the lock                               (ns)
  park         ParkingLot park+unpark_one round trip between two threads while
               N threads (--parked, default 1,100,2000) are parked on other keys (ns per round trip)
  memory       shared bytes per primitive (and resident bytes per object)

Peers: multiprocessing's Lock/RLock/Semaphore/Condition/Event, posix_ipc.Semaphore, fcntl.flock,
filelock.FileLock, threading.Lock (uncontended reference), and a "floor": the same lock loop and
ping-pong written in C (tools/bench_floor.c: a shared futex word, spin-then-park), built here with
gcc into a temp dir.  Peers that are not installed, and shmlot while its primitives do not exist,
print "n/a" and the run goes on.  Subjects are alternated inside each scenario (the order rotates
every repeat) and every figure is the median over --repeat repeats.

The run uses its own lot (a unique name, exported as SHMLOT_LOT so that children use it too) and
unlinks it at the end; the user's default lot is never touched.
"""
import argparse
import array
import fcntl
import gc
import json
import multiprocessing
import multiprocessing.connection
import os
import platform
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import tracemalloc

pc = time.perf_counter_ns

SCENARIOS = ["uncontended", "busy", "pingpong", "contended", "notify", "park", "memory"]
NOTIFY_PROCS = 32
FLOOR = "floor (C futex)"

# --------------------------------------------------------------------------------------------
# global state (set by main(); children started with fork inherit it, spawn children rebuild
# what they need from their arguments)

CTX = None              # multiprocessing context
TMP = None              # temp dir: floor binary, lock files
FLOOR_BIN = None        # path of the built floor, or None
FLOOR_REASON = ""
SHMLOT_LOT = None       # our ParkingLot, or None
SHMLOT_REASON = ""      # why shmlot is not available
_POSIX_NAMES = []       # posix_ipc semaphores we created (unlinked at the end)
_file_counter = [0]
SUBJECT_FILTER = []     # --subjects: substrings; empty = everything


def wanted(subject):
    s = subject.lower()
    return not SUBJECT_FILTER or any(f in s for f in SUBJECT_FILTER)


class Unavailable(Exception):
    """The subject cannot run here (not installed, not implemented yet): its row says n/a."""


class BenchTimeout(Exception):
    pass


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# subjects

def _shmlot():
    if SHMLOT_REASON:
        raise Unavailable(SHMLOT_REASON)
    try:
        import shmlot
    except ImportError as e:
        raise Unavailable(f"import shmlot: {e}") from None
    return shmlot


def _shmlot_kind(kind):
    shmlot = _shmlot()
    cls = getattr(shmlot, kind, None)
    if cls is None:
        raise Unavailable(f"shmlot.{kind} does not exist yet")
    return cls


def _posix_ipc():
    try:
        import posix_ipc
    except ImportError:
        raise Unavailable("posix_ipc not installed") from None
    return posix_ipc


def _posix_make(initial):
    posix_ipc = _posix_ipc()
    name = f"/shmlot-bench-{os.getpid()}-{secrets.token_hex(4)}"
    sem = posix_ipc.Semaphore(name, posix_ipc.O_CREX, initial_value=initial)
    sem.close()
    _POSIX_NAMES.append(name)
    return name


def _posix_open(name):
    return _posix_ipc().Semaphore(name)


def _posix_cleanup(name):
    try:
        _posix_ipc().unlink_semaphore(name)
    except Exception:
        pass
    if name in _POSIX_NAMES:
        _POSIX_NAMES.remove(name)


def _tmpfile():
    _file_counter[0] += 1
    path = os.path.join(TMP, f"lock-{os.getpid()}-{_file_counter[0]}")
    with open(path, "wb"):
        pass
    return path


def _rmfile(path):
    try:
        os.unlink(path)
    except OSError:
        pass


class FlockLock:
    """fcntl.flock on a private open file description (one per process), as a lock object."""

    def __init__(self, path):
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)

    def acquire(self):
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return True

    def release(self):
        fcntl.flock(self.fd, fcntl.LOCK_UN)

    def __enter__(self):
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.fd, fcntl.LOCK_UN)

    def close(self):
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    __del__ = close


def _filelock_open(path):
    try:
        import filelock
    except ImportError:
        raise Unavailable("filelock not installed") from None
    return filelock.FileLock(path)


def _filelock_make():
    try:
        import filelock  # noqa: F401
    except ImportError:
        raise Unavailable("filelock not installed") from None
    return _tmpfile()


def _identity(x):
    return x


def _noop(_):
    pass


class Subject:
    """A thing to measure: make() -> picklable handle (parent), open(handle) -> usable object
    (any process), cleanup(handle) (parent)."""

    def __init__(self, name, family, make, open=_identity, cleanup=_noop, cross_process=True):
        self.name, self.family = name, family
        self.make, self.open, self.cleanup = make, open, cleanup
        self.cross_process = cross_process


def _lock_subjects():
    return {s.name: s for s in [
        Subject("shmlot.Lock", "shmlot", lambda: _shmlot_kind("Lock")()),
        Subject("shmlot.RLock", "shmlot", lambda: _shmlot_kind("RLock")()),
        Subject("mp.Lock", "mp", lambda: CTX.Lock()),
        Subject("mp.RLock", "mp", lambda: CTX.RLock()),
        Subject("threading.Lock", "threading", threading.Lock, cross_process=False),
        Subject("posix_ipc.Semaphore", "posix_ipc", lambda: _posix_make(1), _posix_open,
                _posix_cleanup),
        Subject("fcntl.flock", "fcntl", _tmpfile, FlockLock, _rmfile),
        Subject("filelock.FileLock", "filelock", _filelock_make, _filelock_open, _rmfile),
    ]}


def _pingpong_subjects():
    # name -> (style, Subject making one of the two objects)
    return {
        "shmlot.Semaphore": ("sem", Subject("shmlot.Semaphore", "shmlot",
                                            lambda: _shmlot_kind("Semaphore")(0))),
        "shmlot.Event": ("event", Subject("shmlot.Event", "shmlot",
                                          lambda: _shmlot_kind("Event")())),
        "mp.Semaphore": ("sem", Subject("mp.Semaphore", "mp", lambda: CTX.Semaphore(0))),
        "mp.Event": ("event", Subject("mp.Event", "mp", lambda: CTX.Event())),
        "posix_ipc.Semaphore": ("sem", Subject("posix_ipc.Semaphore", "posix_ipc",
                                               lambda: _posix_make(0), _posix_open,
                                               _posix_cleanup)),
    }


def _condition_subjects():
    return {s.name: s for s in [
        Subject("shmlot.Condition", "shmlot", lambda: _shmlot_kind("Condition")()),
        Subject("mp.Condition", "mp", lambda: CTX.Condition()),
    ]}


LOCK_SUBJECTS = _lock_subjects()
PINGPONG_SUBJECTS = _pingpong_subjects()
CONDITION_SUBJECTS = _condition_subjects()

# --------------------------------------------------------------------------------------------
# measurement helpers


class watchdog:
    """Raise BenchTimeout in the main thread if the block takes longer than `seconds`.

    Nestable: an inner watchdog runs on the same timer and gives the outer one back its
    remaining time on exit."""

    def __init__(self, seconds, message=None):
        self.seconds = seconds
        self.message = message or f"no result after {seconds:.0f} s (hung?)"

    def _fire(self, signum, frame):
        raise BenchTimeout(self.message)

    def __enter__(self):
        self.t0 = time.monotonic()
        self.outer_left, _ = signal.getitimer(signal.ITIMER_REAL)
        self.old = signal.signal(signal.SIGALRM, self._fire)
        signal.setitimer(signal.ITIMER_REAL, self.seconds)
        return self

    def __exit__(self, *exc):
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, self.old)
        if self.outer_left:
            left = self.outer_left - (time.monotonic() - self.t0)
            signal.setitimer(signal.ITIMER_REAL, max(left, 0.001))


def _kill(procs):
    for p in procs:
        if p.is_alive():
            p.kill()
    for p in procs:
        p.join(5)


def _batch_with(lock, k):
    r = range(k)
    t0 = pc()
    for _ in r:
        with lock:
            pass
    return pc() - t0


def calibrate_batch(lock, max_batch=256, min_ns=20_000):
    """Ops per batch so that one batch takes at least `min_ns` (at most `max_batch`)."""
    k = 1
    while k < max_batch:
        if min(_batch_with(lock, k) for _ in range(3)) >= min_ns:
            break
        k *= 2
    return k


def lock_loop(lock, budget_ns, k=None):
    """Time `with lock:` in batches of k ops for `budget_ns`.

    Returns (median ns/op over batches, 90th-percentile ns/op over batches, mean ns/op over the
    whole run, k).  Batches are ~20 us, so a rare event (a 5 ms GIL switch every 5 ms of running)
    leaves the median and p90 alone, while a cost paid on every call, or on more than a few
    calls in a thousand, moves them.
    """
    if k is None:
        k = calibrate_batch(lock)
    per_op, total_t, total_n = [], 0, 0
    end = pc() + budget_ns
    while len(per_op) < 10 or pc() < end:
        t = _batch_with(lock, k)
        per_op.append(t / k)
        total_t += t
        total_n += k
        if len(per_op) > 200_000:
            break
    per_op.sort()
    return (statistics.median(per_op), per_op[int(0.9 * (len(per_op) - 1))],
            total_t / total_n, k)


def weighted_quantile(pairs, q):
    """pairs: [(value, weight)]; the q-quantile."""
    pairs = sorted(pairs)
    total = sum(w for _, w in pairs)
    need = q * total
    acc = 0
    for v, w in pairs:
        acc += w
        if acc >= need:
            return v
    return pairs[-1][0] if pairs else float("nan")


def run_floor(*args, timeout=120):
    if FLOOR_BIN is None:
        raise Unavailable(FLOOR_REASON or "floor not built")
    out = subprocess.run([FLOOR_BIN, *map(str, args)], capture_output=True, text=True,
                         timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"bench_floor {' '.join(map(str, args))}: {out.stderr.strip()}")
    return json.loads(out.stdout)


def build_floor(tmp):
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench_floor.c")
    if not os.path.exists(src):
        return None, f"{src} missing"
    cc = shutil.which("gcc") or shutil.which("cc")
    if not cc:
        return None, "gcc not found"
    exe = os.path.join(tmp, "bench_floor")
    r = subprocess.run([cc, "-O2", "-std=gnu11", "-o", exe, src], capture_output=True, text=True)
    if r.returncode != 0:
        return None, "gcc failed: " + r.stderr.strip().splitlines()[-1][:200]
    return exe, ""


# --------------------------------------------------------------------------------------------
# results


class Row:
    def __init__(self, subject, family):
        self.subject, self.family = subject, family
        self.samples = []          # one figure per repeat
        self.extra = {}            # name -> list of per-repeat values
        self.status, self.reason = "ok", ""

    def add(self, value, **extra):
        self.samples.append(value)
        for k, v in extra.items():
            self.extra.setdefault(k, []).append(v)

    @property
    def median(self):
        return statistics.median(self.samples) if self.samples and self.status == "ok" else None

    @property
    def spread(self):
        """Half the range of the repeats, relative to the median (None with < 2 repeats)."""
        m = self.median
        if m is None or len(self.samples) < 2 or not m:
            return None
        return (max(self.samples) - min(self.samples)) / 2 / m

    def extra_median(self, k):
        vals = self.extra.get(k)
        return statistics.median(vals) if vals and self.status == "ok" else None

    def fail(self, exc):
        if isinstance(exc, Unavailable):
            self.status, self.reason = "n/a", str(exc)
        else:
            self.status = "error"
            self.reason = f"{type(exc).__name__}: {exc}".strip().splitlines()[0][:160]


class Scenario:
    def __init__(self, sid, title, unit, better="lower", reference=None, floor=None):
        self.id, self.title, self.unit, self.better = sid, title, unit, better
        self.short = title if len(title) <= 60 else sid.replace("_", " ")
        self.reference = reference   # subject the "x mp" column divides by
        self.floor = floor           # subject name of the floor row, if any
        self.rows = {}
        self.targets = []            # filled by evaluate_targets()
        self.elapsed = 0.0

    def row(self, subject, family):
        if subject not in self.rows:
            row = Row(subject, family)
            if not wanted(subject):
                return row              # filtered out by --subjects: measured nowhere
            self.rows[subject] = row
        return self.rows[subject]

    def median(self, subject):
        r = self.rows.get(subject)
        return r.median if r else None

    def mp_ref(self, subject):
        if subject.startswith("shmlot."):
            twin = "mp." + subject.split(".", 1)[1]
            if twin in self.rows:
                return twin
        return self.reference

    def ratio_mp(self, subject):
        ref = self.mp_ref(subject)
        a, b = self.median(subject), self.median(ref) if ref else None
        if a is None or not b:
            return None
        return a / b

    def ratio_floor(self, subject, floor_value=None):
        a = self.median(subject)
        f = floor_value if floor_value is not None else (self.median(self.floor) if self.floor
                                                         else None)
        if a is None or not f or not a:
            return None
        return a / f if self.better == "lower" else f / a

    def to_json(self, floor_value=None):
        rows = []
        for r in self.rows.values():
            rows.append({
                "subject": r.subject, "family": r.family, "status": r.status,
                "reason": r.reason or None, "median": r.median, "samples": r.samples,
                "spread": r.spread,
                "extra": {k: self.rows[r.subject].extra_median(k) for k in r.extra},
                "extra_samples": r.extra,
                "ratio_mp": self.ratio_mp(r.subject), "mp_reference": self.mp_ref(r.subject),
                "ratio_floor": self.ratio_floor(r.subject, floor_value),
            })
        return {"id": self.id, "title": self.title, "unit": self.unit, "better": self.better,
                "reference": self.reference, "floor": self.floor, "rows": rows,
                "targets": self.targets, "elapsed_s": round(self.elapsed, 2)}


def rotate(seq, i):
    seq = list(seq)
    if not seq:
        return seq
    i %= len(seq)
    return seq[i:] + seq[:i]


def run_repeats(sc, cfg, subjects, measure_one):
    """For each repeat, measure every subject once (order rotated per repeat)."""
    for rep in range(cfg.repeat):
        for name in rotate([n for n in subjects if n in sc.rows], rep):
            row = sc.rows[name]
            if row.status != "ok":
                continue
            try:
                with watchdog(cfg.watchdog):
                    measure_one(name, row, rep)
            except KeyboardInterrupt:
                raise
            except Exception as e:
                row.fail(e)
                if cfg.verbose and not isinstance(e, Unavailable):
                    traceback.print_exc()


# --------------------------------------------------------------------------------------------
# scenario: uncontended / busy


def scenario_uncontended(cfg):
    sc = Scenario("uncontended", "uncontended `with lock:`", "ns/op", reference="mp.Lock",
                  floor=FLOOR)
    names = list(LOCK_SUBJECTS) + [FLOOR]
    for n in names:
        sc.row(n, "floor" if n == FLOOR else LOCK_SUBJECTS[n].family)

    def one(name, row, rep):
        if name == FLOOR:
            row.add(run_floor("lock", cfg.floor_lock_iters)["ns_per_op"])
            return
        s = LOCK_SUBJECTS[name]
        h = s.make()
        try:
            med, _, mean, _ = lock_loop(s.open(h), cfg.loop_budget)
            row.add(med, mean_ns=mean)
        finally:
            s.cleanup(h)

    run_repeats(sc, cfg, names, one)
    return sc


def _busy_worker(stop):
    x = 0
    while not stop[0]:
        x += 1


def scenario_busy(cfg):
    sc = Scenario("busy", "`with lock:` while another thread runs pure-Python work "
                  "(p90 of ~20 us batches)", "ns/op", reference="mp.Lock")
    names = list(LOCK_SUBJECTS)
    for n in names:
        sc.row(n, LOCK_SUBJECTS[n].family)

    def one(name, row, rep):
        s = LOCK_SUBJECTS[name]
        h = s.make()
        lock = None
        try:
            lock = s.open(h)
            # Same batch size with and without the busy thread (calibrated alone: with the
            # thread, a GIL hand-off per call would make single-op batches look long enough).
            _, alone, alone_mean, k = lock_loop(lock, cfg.loop_budget // 2)
            stop = [False]
            t = threading.Thread(target=_busy_worker, args=(stop,), daemon=True)
            t.start()
            try:
                _, busy, mean, _ = lock_loop(lock, cfg.loop_budget, k)
            finally:
                stop[0] = True
                t.join()
            row.add(busy, alone_ns=alone, x_alone=busy / alone, mean_ns=mean,
                    alone_mean_ns=alone_mean, batch=k)
        finally:
            del lock
            s.cleanup(h)

    run_repeats(sc, cfg, names, one)
    return sc


# --------------------------------------------------------------------------------------------
# scenario: ping-pong


def _pp_child(name, handles, conn):
    try:
        style, subj = _pingpong_subjects()[name]
        a, b = (subj.open(h) for h in handles)
        conn.send("ready")
        while True:
            n = conn.recv()
            if n <= 0:
                break
            if style == "sem":
                wait, post = a.acquire, b.release
                for _ in range(n):
                    wait()
                    post()
            else:
                await_, aclear, bset = a.wait, a.clear, b.set
                for _ in range(n):
                    await_()
                    aclear()
                    bset()
            conn.send(n)
    except BaseException as e:  # report, do not hang the parent
        try:
            conn.send(("error", f"{type(e).__name__}: {e}"))
        except Exception:
            pass


def _pp_parent(style, a, b, n):
    if style == "sem":
        post, wait = a.release, b.acquire
        t0 = pc()
        for _ in range(n):
            post()
            wait()
        return pc() - t0
    aset, bwait, bclear = a.set, b.wait, b.clear
    t0 = pc()
    for _ in range(n):
        aset()
        bwait()
        bclear()
    return pc() - t0


def _expect(conn, what, timeout, stuck=None):
    if not conn.poll(timeout):
        raise BenchTimeout(stuck or f"child did not answer within {timeout} s")
    msg = conn.recv()
    if isinstance(msg, tuple) and msg and msg[0] == "error":
        raise RuntimeError("in child: " + msg[1])
    return msg


def scenario_pingpong(cfg):
    sc = Scenario("pingpong", "two-process hand-off round trip", "ns/rt",
                  reference="mp.Semaphore", floor=FLOOR)
    names = list(PINGPONG_SUBJECTS) + [FLOOR]
    for n in names:
        sc.row(n, "floor" if n == FLOOR else PINGPONG_SUBJECTS[n][1].family)
    chunk_ns = max(cfg.pp_budget // 10, 2_000_000)

    def one(name, row, rep):
        if name == FLOOR:
            row.add(run_floor("pingpong", cfg.floor_pp_iters)["ns_per_op"])
            return
        style, s = PINGPONG_SUBJECTS[name]
        handles = [s.make(), s.make()]
        proc = None
        try:
            a, b = (s.open(h) for h in handles)
            parent_conn, child_conn = CTX.Pipe()
            proc = CTX.Process(target=_pp_child, args=(name, handles, child_conn), daemon=True)
            proc.start()
            _expect(parent_conn, "ready", 60)
            # Warm up, then timed chunks of ~chunk_ns until the budget is spent.  The chunk
            # size follows the last chunk's speed, so a sudden slow-down (a spinning
            # primitive on a loaded machine can get 100x slower) costs one chunk, not an hour.
            n = 50
            parent_conn.send(n)
            t = _pp_parent(style, a, b, n)
            _expect(parent_conn, n, 60)
            total_t = total_n = 0
            while total_t < cfg.pp_budget or total_n < 100:
                n = max(10, min(200_000, int(chunk_ns * n / max(t, 1))))
                parent_conn.send(n)
                # A chunk takes ~chunk_ns; if no answer comes for 10 s, the two processes are
                # out of step: some wait()/acquire() returned with no matching set()/release()
                # (a spurious or stale wake-up), and one side or both now wait forever.
                with watchdog(10, f"out of step after <= {n} round trips: both sides waiting "
                                  f"(a wait/acquire returned without a matching set/release?)"):
                    t = _pp_parent(style, a, b, n)
                _expect(parent_conn, n, 10, stuck=(
                    f"out of step: this process finished {n} round trips, the other did not "
                    f"(a wait/acquire returned without a matching set/release?)"))
                total_t += t
                total_n += n
            parent_conn.send(0)
            row.add(total_t / total_n, iterations=total_n)
        finally:
            if proc is not None:
                proc.join(5)
                _kill([proc])
            for h in handles:
                s.cleanup(h)

    run_repeats(sc, cfg, names, one)
    return sc


# --------------------------------------------------------------------------------------------
# scenario: contended


def _cont_child(name, handle, times, ready, go, conn):
    try:
        lock = LOCK_SUBJECTS[name].open(handle)
        acq, rel = lock.acquire, lock.release
        lat = array.array("q")
        append = lat.append
        count = cs = 0
        ready.release()
        go.wait()
        t_start, t_end = times[0], times[1]
        while True:
            t0 = pc()
            if t0 >= t_end:
                break
            acq()
            t1 = pc()
            cs += 1
            rel()
            if t0 >= t_start:
                count += 1
                append(t1 - t0)
        lat = sorted(lat)
        step = max(1, len(lat) // 4000)
        conn.send((count, lat[step // 2::step], step))
    except BaseException as e:
        try:
            ready.release()
            conn.send(("error", f"{type(e).__name__}: {e}"))
        except Exception:
            pass


def scenario_contended(cfg, nprocs):
    sc = Scenario(f"contended_{nprocs}",
                  f"contended throughput, {nprocs} processes, tiny critical section",
                  "ops/s", better="higher", reference="mp.Lock", floor=FLOOR)
    names = [n for n in LOCK_SUBJECTS if LOCK_SUBJECTS[n].cross_process
             and n != "shmlot.RLock" and n != "mp.RLock"] + [FLOOR]
    for n in names:
        sc.row(n, "floor" if n == FLOOR else LOCK_SUBJECTS[n].family)
    window_s = cfg.window

    def one(name, row, rep):
        if name == FLOOR:
            r = run_floor("contended", nprocs, int(window_s * 1000))
            row.add(r["ops_per_s"], min_share=r["min_share"], p99_ns=r["p99_ns"])
            return
        s = LOCK_SUBJECTS[name]
        h = s.make()
        procs = []
        try:
            times = CTX.RawArray("q", 2)
            ready, go = CTX.Semaphore(0), CTX.Event()
            conns = []
            for _ in range(nprocs):
                pconn, cconn = CTX.Pipe(duplex=False)
                p = CTX.Process(target=_cont_child, args=(name, h, times, ready, go, cconn),
                                daemon=True)
                p.start()
                procs.append(p)
                conns.append(pconn)
                cconn.close()
            for _ in range(nprocs):
                if not ready.acquire(timeout=60):
                    raise BenchTimeout("children did not start")
            warm = 0.02 + 0.002 * nprocs
            t_start = pc() + int(warm * 1e9)
            times[0], times[1] = t_start, t_start + int(window_s * 1e9)
            go.set()
            counts, pairs = [], []
            pending = list(conns)
            deadline = time.monotonic() + warm + window_s + 60
            while pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BenchTimeout("children did not finish")
                for c in multiprocessing.connection.wait(pending, left):
                    msg = c.recv()
                    pending.remove(c)
                    if isinstance(msg, tuple) and msg and msg[0] == "error":
                        raise RuntimeError("in child: " + msg[1])
                    cnt, lat, step = msg
                    counts.append(cnt)
                    pairs.extend((v, step) for v in lat)
            if not pairs:
                raise RuntimeError("no acquire completed in the window")
            mean = sum(counts) / len(counts)
            row.add(sum(counts) / window_s,
                    min_share=(min(counts) / mean) if mean else 0.0,
                    p99_ns=weighted_quantile(pairs, 0.99))
        finally:
            _kill(procs)
            s.cleanup(h)

    run_repeats(sc, cfg, names, one)
    return sc


# --------------------------------------------------------------------------------------------
# scenario: notify_all


def _notify_child(name, handle, idx, nprocs, rounds, ready, stamps):
    try:
        cond = CONDITION_SUBJECTS[name].open(handle)
        with cond:
            for r in range(rounds + 1):
                ready.value += 1          # under the condition's lock
                cond.wait()
                stamps[idx] = pc()
    except BaseException:
        traceback.print_exc()
        stamps[idx] = -1
        sys.exit(1)


def scenario_notify(cfg):
    np_ = NOTIFY_PROCS
    sc = Scenario(f"notify_all_{np_}",
                  f"Condition.notify_all with {np_} waiting processes, until all re-acquired",
                  "ns", reference="mp.Condition")
    names = list(CONDITION_SUBJECTS)
    for n in names:
        sc.row(n, CONDITION_SUBJECTS[n].family)
    # Round 0 is a warm-up (children fault in their copy-on-write pages), and the children
    # wait once more after the last measured round: a final notify_all lets them go, so that
    # no round is timed while children exit (process teardown on 2 CPUs costs ~10 ms).
    rounds = cfg.notify_rounds + 1

    def wait_until(pred, timeout, what):
        end = time.monotonic() + timeout
        while not pred():
            if time.monotonic() > end:
                raise BenchTimeout(f"timed out waiting for {what}")
            time.sleep(0.001)

    def one(name, row, rep):
        s = CONDITION_SUBJECTS[name]
        h = s.make()
        procs = []
        try:
            cond = s.open(h)
            ready = CTX.RawValue("q", 0)
            stamps = CTX.RawArray("q", np_)
            for i in range(np_):
                p = CTX.Process(target=_notify_child,
                                args=(name, h, i, np_, rounds, ready, stamps), daemon=True)
                p.start()
                procs.append(p)
            figures = []
            for r in range(rounds):
                wait_until(lambda: ready.value >= np_ * (r + 1) or any(p.exitcode for p in procs),
                           60, "waiters")
                if any(p.exitcode for p in procs):
                    raise RuntimeError("a waiting child died")
                time.sleep(0.005)
                for i in range(np_):
                    stamps[i] = 0
                t0 = pc()
                with cond:
                    cond.notify_all()
                wait_until(lambda: all(stamps[i] != 0 for i in range(np_)), 60, "wake-ups")
                if any(stamps[i] < 0 for i in range(np_)):
                    raise RuntimeError("a waiting child failed")
                if r:
                    figures.append(max(stamps[i] for i in range(np_)) - t0)
            wait_until(lambda: ready.value >= np_ * (rounds + 1), 60, "waiters")
            with cond:
                cond.notify_all()        # let them go
            for p in procs:
                p.join(30)
            row.add(statistics.median(figures), rounds=len(figures))
        finally:
            _kill(procs)
            s.cleanup(h)

    run_repeats(sc, cfg, names, one)
    return sc


# --------------------------------------------------------------------------------------------
# scenario: park/unpark with N threads parked on distinct keys


def _park_roundtrips(lot, key_a, key_b, budget_ns):
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


def _pin_to_one_cpu():
    """Pin the calling thread (and threads it starts) to one CPU; return the old mask."""
    try:
        old = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {max(old)})
        return old
    except (AttributeError, OSError):
        return None


def _restore_affinity(old):
    if old is not None:
        try:
            os.sched_setaffinity(0, old)
        except OSError:
            pass


def scenario_park(cfg):
    sc = Scenario("park", "park + unpark_one round trip between two threads pinned to one CPU, "
                  "N threads parked on other keys", "ns/rt", reference=None)
    names = [f"shmlot park, {n} parked" for n in cfg.parked]
    for n in names:
        sc.row(n, "shmlot")

    def one(name, row, rep):
        nparked = cfg.parked[names.index(name)]
        _shmlot()
        lot = SHMLOT_LOT
        if lot is None or not hasattr(lot, "park"):
            raise Unavailable("shmlot.ParkingLot.park does not exist yet")
        base = secrets.randbits(62)
        released = [False]
        parked = []
        errors = []

        def parker(key):
            try:
                while not released[0]:
                    lot.park(key, validate=lambda: not released[0],
                             before_sleep=lambda: parked.append(1))
            except BaseException as e:
                errors.append(e)

        old = threading.stack_size()
        threads = []
        old_affinity = None
        try:
            threading.stack_size(256 * 1024)
            for i in range(nparked):
                th = threading.Thread(target=parker, args=(base + 2 + i,), daemon=True)
                th.start()
                threads.append(th)
        finally:
            threading.stack_size(old)
        try:
            end = time.monotonic() + 60
            while len(parked) < nparked and not errors:
                if time.monotonic() > end:
                    raise BenchTimeout(f"only {len(parked)} of {nparked} threads parked")
                time.sleep(0.002)
            if errors:
                raise errors[0]
            # Both ping-pong threads on one CPU (the parked ones stay where they are): a
            # hand-off is then a plain context switch, and the figure does not jump between
            # "same core" and "other core" modes from sample to sample (2.5-3x apart on a
            # 2-vCPU VM), which would drown the flatness being measured.
            old_affinity = _pin_to_one_cpu()
            row.add(_park_roundtrips(lot, base, base + 1, cfg.park_budget), parked=nparked)
        finally:
            _restore_affinity(old_affinity)
            released[0] = True
            for i in range(nparked):
                lot.unpark_all(base + 2 + i)
            end = time.monotonic() + 30
            for th in threads:
                th.join(max(0.0, end - time.monotonic()))
            stuck = sum(th.is_alive() for th in threads)
            if stuck:
                raise RuntimeError(f"{stuck} of {nparked} parked threads did not wake on "
                                   f"unpark_all within 30 s")

    run_repeats(sc, cfg, names, one)
    return sc


# --------------------------------------------------------------------------------------------
# scenario: memory


MEMORY_KINDS = [
    ("shmlot.Lock", "shmlot", lambda: _shmlot_kind("Lock")()),
    ("shmlot.RLock", "shmlot", lambda: _shmlot_kind("RLock")()),
    ("shmlot.Semaphore", "shmlot", lambda: _shmlot_kind("Semaphore")(1)),
    ("shmlot.Event", "shmlot", lambda: _shmlot_kind("Event")()),
    ("shmlot.Condition", "shmlot", lambda: _shmlot_kind("Condition")()),
    ("mp.Lock", "mp", lambda: CTX.Lock()),
    ("mp.RLock", "mp", lambda: CTX.RLock()),
    ("mp.Semaphore", "mp", lambda: CTX.Semaphore(1)),
    ("mp.Event", "mp", lambda: CTX.Event()),
    ("mp.Condition", "mp", lambda: CTX.Condition()),
    ("posix_ipc.Semaphore", "posix_ipc", None),
    ("fcntl.flock", "fcntl", None),
]


def _shm_mapped():
    total = 0
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split(None, 5)
            if len(parts) == 6 and parts[5].startswith("/dev/shm/"):
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                total += hi - lo
    return total


def _mem_child(name, k, tmp, conn):
    global CTX
    if CTX is None:   # spawn / forkserver child
        CTX = multiprocessing.get_context()
    try:
        objs, cleanup = [], []
        kinds = {n: make for n, _, make in MEMORY_KINDS}
        posix_ipc = None
        if name == "posix_ipc.Semaphore":
            posix_ipc = _posix_ipc()
        gc.collect()
        tracemalloc.start()
        heap0, _ = tracemalloc.get_traced_memory()
        shm0 = _shm_mapped()
        note = ""
        try:
            for i in range(k):
                if name == "posix_ipc.Semaphore":
                    nm = f"/shmlot-bench-mem-{os.getpid()}-{i}"
                    cleanup.append(nm)
                    objs.append(posix_ipc.Semaphore(nm, posix_ipc.O_CREX, initial_value=1))
                elif name == "fcntl.flock":
                    path = os.path.join(tmp, f"mem-{os.getpid()}-{i}")
                    cleanup.append(path)
                    objs.append(FlockLock(path))
                else:
                    objs.append(kinds[name]())
        except Unavailable:
            raise
        except Exception as e:
            if not objs:
                raise
            note = f"stopped at {len(objs)}: {type(e).__name__}: {e}"
        heap1, _ = tracemalloc.get_traced_memory()
        shm1 = _shm_mapped()
        tracemalloc.stop()
        n = len(objs)
        size = getattr(type(objs[0]), "SIZE", None) if name.startswith("shmlot.") else None
        shared = size if size is not None else (shm1 - shm0) / n
        conn.send(("ok", shared, (heap1 - heap0) / n, n, note))
        for o in objs:
            if name == "fcntl.flock":
                o.close()
        del objs
        gc.collect()
        for c in cleanup:
            try:
                if posix_ipc:
                    posix_ipc.unlink_semaphore(c)
                else:
                    os.unlink(c)
            except Exception:
                pass
    except Unavailable as e:
        conn.send(("n/a", str(e)))
    except BaseException as e:
        conn.send(("error", f"{type(e).__name__}: {e}"))


def scenario_memory(cfg):
    sc = Scenario("memory", "shared memory per primitive (/dev/shm pages mapped, or .SIZE)",
                  "bytes", reference=None, floor=None)
    for n, fam, _ in MEMORY_KINDS:
        sc.row(n, fam)
    sc.row(FLOOR, "floor")
    sc.row("shmlot lot (default size)", "shmlot")
    for n, fam, _ in MEMORY_KINDS:
        if n not in sc.rows:
            continue
        row = sc.rows[n]
        try:
            if fam == "posix_ipc":
                _posix_ipc()
            if fam == "shmlot":
                _shmlot_kind(n.split(".", 1)[1])
            pconn, cconn = CTX.Pipe()
            p = CTX.Process(target=_mem_child, args=(n, cfg.mem_objects, TMP, cconn), daemon=True)
            p.start()
            try:
                if not pconn.poll(120):
                    raise BenchTimeout("memory child did not answer")
                msg = pconn.recv()
            finally:
                p.join(30)
                _kill([p])
            if msg[0] == "n/a":
                raise Unavailable(msg[1])
            if msg[0] == "error":
                raise RuntimeError("in child: " + msg[1])
            _, shared, heap, count, note = msg
            row.add(shared, heap_per_object=heap, objects=count)
            if note:
                row.reason = note
        except Exception as e:
            row.fail(e)
    sc.row(FLOOR, "floor").add(4.0)   # one 32-bit futex word
    lot_row = sc.row("shmlot lot (default size)", "shmlot")
    try:
        _shmlot()
        if SHMLOT_LOT is None:
            raise Unavailable("no lot")
        size = None
        path = "/dev/shm/" + str(getattr(SHMLOT_LOT, "name", "")).lstrip("/")
        if os.path.exists(path):
            size = os.stat(path).st_size
        if size is None:
            raise Unavailable(f"cannot find the lot's segment ({path})")
        lot_row.add(float(size))
    except Exception as e:
        lot_row.fail(e)
    # memory "x mp" compares each shmlot kind with its multiprocessing twin (mp_ref)
    return sc


# --------------------------------------------------------------------------------------------
# targets (SPEC section 7)


def _target(sc, subject, text, value, ok):
    sc.targets.append({"subject": subject, "text": text,
                       "value": None if value is None else round(value, 4),
                       "pass": None if ok is None else bool(ok)})


def evaluate_targets(scs):
    by_id = {s.id: s for s in scs}
    sc = by_id.get("uncontended")
    if sc:
        r = sc.ratio_mp("shmlot.Lock")
        _target(sc, "shmlot.Lock", "<= 0.8 x mp.Lock", r, None if r is None else r <= 0.8)
    sc = by_id.get("busy")
    if sc:
        row = sc.rows.get("shmlot.Lock")
        r = row.extra_median("x_alone") if row else None
        _target(sc, "shmlot.Lock", "<= 2 x own figure alone", r,
                None if r is None else r <= 2.0)
    sc = by_id.get("pingpong")
    if sc:
        ref = sc.median("posix_ipc.Semaphore")
        for subj in ("shmlot.Semaphore", "shmlot.Event"):
            v = sc.median(subj)
            r = v / ref if v is not None and ref else None
            _target(sc, subj, "<= 0.5 x posix_ipc.Semaphore", r, None if r is None else r <= 0.5)
    for sc in scs:
        if sc.id.startswith("contended_") and sc.id in ("contended_2", "contended_8"):
            r = sc.ratio_mp("shmlot.Lock")
            _target(sc, "shmlot.Lock", ">= 1.0 x mp.Lock throughput", r,
                    None if r is None else r >= 1.0)
            row = sc.rows.get("shmlot.Lock")
            share = row.extra_median("min_share") if row else None
            _target(sc, "shmlot.Lock", "slowest process >= 1/4 of mean share", share,
                    None if share is None else share >= 0.25)
    sc = by_id.get(f"notify_all_{NOTIFY_PROCS}")
    if sc:
        r = sc.ratio_mp("shmlot.Condition")
        _target(sc, "shmlot.Condition", "< 1.0 x mp.Condition", r, None if r is None else r < 1.0)
    sc = by_id.get("park")
    if sc:
        names = list(sc.rows)
        base = sc.median(names[0]) if names else None
        for n in names[1:]:
            v = sc.median(n)
            r = v / base if v is not None and base else None
            _target(sc, n, f"<= 1.5 x ({names[0].split(', ')[1]})", r,
                    None if r is None else r <= 1.5)
    sc = by_id.get("memory")
    if sc:
        v = sc.median("shmlot.Lock")
        _target(sc, "shmlot.Lock", "Lock.SIZE <= 8 bytes", v, None if v is None else v <= 8)
        v = sc.median("shmlot lot (default size)")
        _target(sc, "shmlot lot (default size)", "<= 8 MiB", v,
                None if v is None else v <= 8 * 1024 * 1024)


# --------------------------------------------------------------------------------------------
# output


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
    return f"{v:.4g}"


def fmt_ratio(r):
    if r is None:
        return ""
    if 0 < r < 0.01:
        return f"{r:.1g}x"
    if r >= 100:
        return f"{r:.0f}x"
    if r >= 10:
        return f"{r:.1f}x"
    return f"{r:.2f}x"


def _notes(sc, row):
    out = []
    if row.status != "ok":
        if SHMLOT_REASON and row.reason == SHMLOT_REASON:
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
    if row.reason:
        out.append(row.reason)
    return "; ".join(out)


def print_table(scs, meta, floor_lock, out=sys.stdout):
    w = out.write
    w(f"\nshmlot benchmark  {meta['started']}  python {meta['python']}  "
      f"{meta['cpus']} cpus  start={meta['start_method']}  repeat={meta['repeat']}"
      f"{'  (quick)' if meta['quick'] else ''}\n")
    w(f"shmlot: {meta['shmlot']['status']}   floor: {meta['floor']['status']}\n")
    for sc in scs:
        better = "lower is better" if sc.better == "lower" else "higher is better"
        w(f"\n== {sc.title}  [{sc.unit}, {better}] ==\n")
        w(f"  {'subject':<28} {'median':>11} {'spread':>6} {'x mp':>8} {'x floor':>8}  "
          f"{'target':<44} notes\n")
        tg = {}
        for t in sc.targets:
            tg.setdefault(t["subject"], []).append(t)
        floor_value = floor_lock if sc.id == "busy" else None
        for row in sc.rows.values():
            med = row.median
            ref = sc.mp_ref(row.subject)
            rmp = sc.ratio_mp(row.subject)
            rf = sc.ratio_floor(row.subject, floor_value) if row.family != "floor" else None
            ts = tg.get(row.subject, [])
            first = True
            for t in ts or [None]:
                if t is None:
                    tcol = ""
                else:
                    verdict = "n/a" if t["pass"] is None else ("PASS" if t["pass"] else "FAIL")
                    val = "" if t["value"] is None else (
                        f" ({fmt_value(t['value'], 'bytes')})" if sc.unit == "bytes"
                        else f" ({t['value']:.3g})")
                    tcol = f"{verdict}: {t['text']}{val}"
                if first:
                    mcol = fmt_value(med, sc.unit) if row.status == "ok" else row.status
                    rmp_s = fmt_ratio(rmp) if rmp is not None and row.subject != ref else ""
                    sp = row.spread
                    sp_s = "" if sp is None else f"±{sp * 100:.0f}%"
                    w(f"  {row.subject:<28} {mcol:>11} {sp_s:>6} {rmp_s:>8} {fmt_ratio(rf):>8}  "
                      f"{tcol:<44} {_notes(sc, row)}\n")
                    first = False
                else:
                    w(f"  {'':<28} {'':>11} {'':>6} {'':>8} {'':>8}  {tcol:<44}\n")
        if sc.reference:
            w(f"  (spread: half the range of the repeats / median; x mp: figure / "
              f"multiprocessing twin, else / {sc.reference}; x floor: times the C floor's cost)\n")
    targets = [t for sc in scs for t in sc.targets]
    npass = sum(1 for t in targets if t["pass"] is True)
    nfail = sum(1 for t in targets if t["pass"] is False)
    nna = sum(1 for t in targets if t["pass"] is None)
    w(f"\nSPEC section 7 targets: {npass} PASS, {nfail} FAIL, {nna} n/a   "
      f"(total {meta['elapsed_s']:.0f} s)\n")


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


# --------------------------------------------------------------------------------------------
# setup / main


class Config:
    def __init__(self, args):
        q = args.quick
        self.quick = q
        self.repeat = args.repeat or (3 if q else 5)
        self.loop_budget = int((0.04 if q else 0.25) * 1e9)
        self.pp_budget = int((0.04 if q else 0.25) * 1e9)
        self.window = 0.1 if q else 0.5
        self.notify_rounds = 2 if q else 5
        self.park_budget = int((0.04 if q else 0.25) * 1e9)
        self.mem_objects = 200 if q else 1000
        self.floor_lock_iters = 2_000_000 if q else 10_000_000
        self.floor_pp_iters = 20_000 if q else 100_000
        self.procs = args.procs
        self.parked = args.parked
        self.watchdog = args.watchdog
        self.verbose = args.verbose


def _int_list(s):
    try:
        vals = [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {s!r}")
    if not vals or any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"want positive integers: {s!r}")
    return vals


def _scenario_list(s):
    names = [x.strip() for x in s.split(",") if x.strip()]
    aliases = {"busy_thread": "busy", "notify_all": "notify", "ping-pong": "pingpong",
               "ping_pong": "pingpong", "mem": "memory"}
    names = [aliases.get(n, n) for n in names]
    bad = [n for n in names if n not in SCENARIOS]
    if bad or not names:
        raise argparse.ArgumentTypeError(
            f"unknown scenario(s) {', '.join(bad) or '(none)'}; choose from {', '.join(SCENARIOS)}")
    return names


def parse_args(argv):
    ap = argparse.ArgumentParser(
        prog="bench.py", description="shmlot vs multiprocessing & co. (SPEC section 7)",
        epilog="scenarios: " + ", ".join(SCENARIOS),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short run (about 30 s)")
    ap.add_argument("--only", type=_scenario_list, metavar="SCENARIO[,..]",
                    help="run only these scenarios")
    ap.add_argument("--repeat", type=int, metavar="N",
                    help="repeats per figure (default 5, --quick 3)")
    ap.add_argument("--json", metavar="FILE", help="write the results as JSON")
    ap.add_argument("--plot", metavar="FILE.png", help="draw the results (needs matplotlib)")
    ap.add_argument("--procs", type=_int_list, default=[2, 8, 32], metavar="N[,..]",
                    help="process counts for 'contended' (default 2,8,32)")
    ap.add_argument("--parked", type=_int_list, default=[1, 100, 2000], metavar="N[,..]",
                    help="parked-thread counts for 'park' (default 1,100,2000)")
    ap.add_argument("--subjects", metavar="TEXT[,..]",
                    help="measure only subjects whose name contains one of these "
                         "(case-insensitive), e.g. 'shmlot,mp.Lock,floor'")
    ap.add_argument("--start-method", choices=["fork", "spawn", "forkserver"], default="fork",
                    help="how child processes start (default fork)")
    ap.add_argument("--waiter", choices=["futex", "semaphore"],
                    help="shmlot waiter backend of the benchmark's lot (default: shmlot's)")
    ap.add_argument("--watchdog", type=float, default=120.0, metavar="S",
                    help="give up on one measurement after S seconds (default 120)")
    ap.add_argument("-v", "--verbose", action="store_true", help="tracebacks for errors")
    args = ap.parse_args(argv)
    if args.repeat is not None and args.repeat < 1:
        ap.error("--repeat must be >= 1")
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            ap.exit(2, "bench.py: error: --plot needs matplotlib, which is not installed "
                       "(pip install matplotlib, or pip install 'shmlot[plot]')\n")
    return args


def setup_shmlot(args):
    """Create the benchmark's own lot and point SHMLOT_LOT at it.  Returns (lot, name, reason)."""
    name = f"shmlot-bench-{os.getpid()}-{secrets.token_hex(3)}"
    os.environ["SHMLOT_LOT"] = name
    if args.waiter:
        os.environ["SHMLOT_WAITER"] = args.waiter
    try:
        import shmlot
    except Exception as e:
        return None, name, f"import shmlot failed ({type(e).__name__}: {e})"
    missing = [k for k in ("ParkingLot", "Lock", "RLock", "Semaphore", "Event", "Condition")
               if not hasattr(shmlot, k)]
    if "ParkingLot" in missing:
        return None, name, "shmlot.ParkingLot does not exist yet"
    kw = {"waiter": args.waiter} if args.waiter else {}
    try:
        lot = shmlot.ParkingLot.create(name, **kw)
    except Exception as e:
        return None, name, f"ParkingLot.create failed ({type(e).__name__}: {e})"
    return lot, name, ""


def teardown_shmlot(lot, name):
    try:
        import shmlot
    except Exception:
        return
    try:
        if lot is not None:
            lot.unlink()
        else:
            shmlot.ParkingLot.attach(name).unlink()
    except Exception:
        pass
    try:
        if lot is not None:
            lot.close()
    except Exception:
        pass


def main(argv=None):
    global CTX, TMP, FLOOR_BIN, FLOOR_REASON, SHMLOT_LOT, SHMLOT_REASON
    args = parse_args(argv)
    if args.subjects:
        SUBJECT_FILTER[:] = [x.strip().lower() for x in args.subjects.split(",") if x.strip()]
    cfg = Config(args)
    scenarios = args.only or SCENARIOS
    CTX = multiprocessing.get_context(args.start_method)
    TMP = tempfile.mkdtemp(prefix="shmlot-bench-")
    t_begin = time.monotonic()
    lot = None
    lot_name = None
    try:
        FLOOR_BIN, FLOOR_REASON = build_floor(TMP)
        lot, lot_name, SHMLOT_REASON = setup_shmlot(args)
        SHMLOT_LOT = lot
        if SHMLOT_REASON:
            log(f"[bench] shmlot not available: {SHMLOT_REASON} (its rows print n/a)")
        if FLOOR_REASON:
            log(f"[bench] C floor not available: {FLOOR_REASON}")
        plan = []
        for s in scenarios:
            if s == "contended":
                plan += [(f"contended ({n} procs)", scenario_contended, (n,)) for n in cfg.procs]
            else:
                plan.append((s, globals()[f"scenario_{s}"], ()))
        results = []
        for i, (label, fn, extra) in enumerate(plan, 1):
            t0 = time.monotonic()
            log(f"[bench {t0 - t_begin:6.1f}s] ({i}/{len(plan)}) {label} ...")
            sc = fn(cfg, *extra)
            sc.elapsed = time.monotonic() - t0
            results.append(sc)
            log(f"[bench {time.monotonic() - t_begin:6.1f}s] ({i}/{len(plan)}) {label} done "
                f"in {sc.elapsed:.1f}s")
        evaluate_targets(results)
        floor_lock = None
        for sc in results:
            if sc.id == "uncontended":
                floor_lock = sc.median(FLOOR)
        meta = {
            "tool": "shmlot tools/bench.py", "format": 1,
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "python": platform.python_version(), "platform": platform.platform(),
            "machine": platform.machine(), "cpus": os.cpu_count(),
            "quick": cfg.quick, "repeat": cfg.repeat, "start_method": args.start_method,
            "scenarios": scenarios, "procs": cfg.procs, "parked": cfg.parked,
            "shmlot": {"available": not SHMLOT_REASON, "reason": SHMLOT_REASON or None,
                       "lot": lot_name, "waiter": args.waiter,
                       "status": "available (lot " + str(lot_name) + ")" if not SHMLOT_REASON
                       else "n/a: " + SHMLOT_REASON},
            "floor": {"available": FLOOR_BIN is not None, "reason": FLOOR_REASON or None,
                      "status": "built with gcc" if FLOOR_BIN else "n/a: " + FLOOR_REASON},
            "elapsed_s": round(time.monotonic() - t_begin, 2),
        }
        print_table(results, meta, floor_lock)
        if args.json:
            doc = {"meta": meta,
                   "scenarios": [sc.to_json(floor_lock if sc.id == "busy" else None)
                                 for sc in results]}
            with open(args.json, "w") as f:
                json.dump(doc, f, indent=1, default=float)
            log(f"[bench] wrote {args.json}")
        if args.plot:
            plot(results, args.plot)
            log(f"[bench] wrote {args.plot}")
        return 0
    except KeyboardInterrupt:
        log("[bench] interrupted")
        return 130
    finally:
        for name in list(_POSIX_NAMES):
            _posix_cleanup(name)
        teardown_shmlot(lot, lot_name)
        shutil.rmtree(TMP, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
