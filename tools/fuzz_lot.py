#!/usr/bin/env python3
"""Fuzz a lot's shared segment: scribble arbitrary bytes over one region of a live lot,
then drive every operation on it.

Each example creates a small lot (4 buckets, 8 slots, 8 objects, 8 holds: every key lands in a
bucket the scribble may hit), opens one primitive of each kind by name, parks up to two helper
threads with a timeout, then writes bytes (raw, or a 4/8-byte value chosen to be interesting: 0,
1, all ones, slot counts, this process's pid and tids, ...) at an offset in one region: the
header, a bucket (its lock included), a slot, an object record or a hold entry. Then it
runs a list of operations: attach (a new handle validates the header), park with a timeout, the
four unparks, reap, _snapshot, info, deadlock detection, and every primitive with a timeout.

Allowed outcomes: a result, or an error (OSError and its LotCorruptError / TimeoutError, ValueError,
RuntimeError and its OwnerDiedError / LotFullError / BrokenBarrierError, TypeError, KeyError).
Not allowed, and reported as a failure with the example:
- any other exception;
- a call given a timeout that returns later than its timeout + MARGIN seconds (helper threads
  included), or a call without one that takes longer than UNTIMED_LIMIT seconds;
- a crash or a hang: the driver runs in its own process (run it as a subprocess; a signal exit is
  a crash) and a faulthandler watchdog prints "Timeout (...)!" and every thread's stack, then
  exits 1, when an example runs longer than HANG_SECONDS.

Before each example the driver writes its description to stderr (``EXAMPLE ...``), so the last one
before a crash names the culprit.

    python tools/fuzz_lot.py --examples 300                 # hypothesis, random
    python tools/fuzz_lot.py --examples 60 --derandomize    # reproducible (CI)
    python tools/fuzz_lot.py --waiter semaphore --examples 100
    python tools/fuzz_lot.py --atheris -- -runs=5000 -max_len=300   # coverage-guided (atheris)
    python tools/fuzz_lot.py --live 10      # scribbling while threads park, wait and notify

Exit status: 0 clean, 1 a failing example (printed) or a hang ("Timeout" and the stacks), or the
signal of a crash.
"""
import argparse
import faulthandler
import mmap
import os
import struct
import sys
import threading
import time
import uuid
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import shmlot  # noqa: E402
from shmlot import FilterOp, RequeueOp  # noqa: E402
from shmlot._core import ffi, lib  # noqa: E402

MARGIN = 0.5          # seconds a timed call may overrun its timeout
UNTIMED_LIMIT = 5.0   # seconds a call without a timeout may take (attach waits up to 2 s)
HANG_SECONDS = 30     # watchdog per example
# HOLDS: half the hold table is for object references, and the 6 objects of an example need
# an entry each (taking a reference the table cannot record raises LotFullError)
BUCKETS, SLOTS, OBJECTS, HOLDS = 4, 8, 8, 16
KEYS = list(range(1, 9))
ALLOWED = (OSError, ValueError, RuntimeError, TypeError, KeyError)
REGIONS = ("header", "bucket", "slot", "object", "hold", "lock")
HEADER_SPAN = 640     # the fields of sl_header (the rest of the 4 KiB page is padding)
REGISTRY_LOCK = 488   # offsetof(sl_header, registry_lock)
LOCK_SIZE = 16        # sizeof(sl_ilock): u64 word, u32 wake counter, u32 pad

try:
    from shmlot import deadlock as _deadlock
except ImportError:  # not every checkout has it
    _deadlock = None


class Failure(AssertionError):
    pass


# ---- geometry of a lot, read from its header ---------------------------------------------------

def geometry(buf):
    """Region offsets and strides (lot.h sl_header: counts at 24, strides at 40, offsets at 56)."""
    nb, ns, no, nh = struct.unpack_from("<4I", buf, 24)
    sb, ss, so, sh = struct.unpack_from("<4I", buf, 40)
    ob, os_, oo, oh = struct.unpack_from("<4Q", buf, 56)
    return {"header": (0, 1, HEADER_SPAN), "bucket": (ob, nb, sb), "slot": (os_, ns, ss),
            "object": (oo, no, so), "hold": (oh, nh, sh)}


def lock_position(geo, index, offset):
    """An internal lock: the registry's (index 0) or a bucket's (its first field)."""
    if index % (BUCKETS + 1) == 0:
        return REGISTRY_LOCK + offset % LOCK_SIZE
    base, count, stride = geo["bucket"]
    return base + (index % (BUCKETS + 1) - 1) * stride + offset % LOCK_SIZE


def interesting_values():
    me = os.getpid()
    return [0, 1, 2, 3, 0xFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 2**63, 2**64 - 1,
            SLOTS - 1, SLOTS, SLOTS + 1, BUCKETS, OBJECTS + 1, HOLDS + 1,
            me, me + 1, 0x40000000 | me, 0x80000000 | me, 4000000, 0x31544F4C4D485300]


# ---- the driver -----------------------------------------------------------------------------------

class Timed:
    """Run calls, classify the outcome, check how long they took."""

    def __init__(self, log):
        self.log = log

    def call(self, what, fn, timeout=None):
        t0 = time.monotonic()
        try:
            result = fn()
            outcome = "ok"
        except ALLOWED as exc:
            result = None
            outcome = type(exc).__name__
        except BaseException as exc:
            raise Failure(f"{what}: unexpected {type(exc).__name__}: {exc}") from exc
        took = time.monotonic() - t0
        limit = UNTIMED_LIMIT if timeout is None else timeout + MARGIN
        if took > limit:
            raise Failure(f"{what}: took {took:.3f} s (timeout {timeout}, limit {limit:.2f} s)")
        self.log.append((what, outcome, round(took, 3)))
        return result


class Parker(threading.Thread):
    """A helper parked on a key with a timeout while the segment is scribbled on."""

    def __init__(self, lot, key, timeout):
        super().__init__(daemon=True)
        self.lot, self.key, self.timeout = lot, key, timeout
        self.failure = None
        self.tid = None
        self.started_evt = threading.Event()

    def run(self):
        self.tid = threading.get_native_id()
        self.started_evt.set()
        log = []
        try:
            Timed(log).call(f"helper park({self.key})",
                            lambda: self.lot.park(self.key, timeout=self.timeout), self.timeout)
        except Failure as f:
            self.failure = f


def parked_count(lot):
    buf = ffi.new("sl_slot_info[]", SLOTS)
    n = lib.sl_snapshot_slots(lot._l, buf, SLOTS)
    return sum(1 for s in buf[0:max(n, 0)] if s.state == 2)


class Example:
    def __init__(self, waiter, parkers, scribble, ops):
        self.waiter = waiter
        self.parkers = parkers      # [(key, timeout)]
        self.scribble = scribble    # (region, index, offset, payload-spec)
        self.ops = ops              # [(op, args...)]

    def __repr__(self):
        return (f"Example(waiter={self.waiter!r}, parkers={self.parkers!r}, "
                f"scribble={self.scribble!r}, ops={self.ops!r})")


def payload_bytes(spec):
    kind, value = spec
    if kind == "raw":
        return bytes(value)
    if kind == "u32":
        return struct.pack("<I", value & 0xFFFFFFFF)
    return struct.pack("<Q", value & 0xFFFFFFFFFFFFFFFF)


PREFIX = f"shmlot-fuzz-{os.getpid()}-"


def run_example(ex, verbose=False):
    name = f"{PREFIX}{uuid.uuid4().hex[:8]}"
    lot = shmlot.ParkingLot.create(name, buckets=BUCKETS, slots=SLOTS, mode=0o600,
                                   waiter=ex.waiter, objects=OBJECTS, holds=HOLDS)
    log = []
    t = Timed(log)
    parkers = []
    try:
        objs = {
            "lock": shmlot.Lock(name="lock", lot=lot),
            "cond": shmlot.Condition(name="cond", lot=lot),
            "sem": shmlot.Semaphore(1, name="sem", lot=lot),
            "event": shmlot.Event(name="event", lot=lot),
            "rw": shmlot.RWLock(name="rw", lot=lot),
            "barrier": shmlot.Barrier(2, name="barrier", lot=lot),
        }
        for key, timeout in ex.parkers:
            p = Parker(lot, key, timeout)
            before = parked_count(lot)
            p.start()
            p.started_evt.wait(5)
            deadline = time.monotonic() + 2
            while parked_count(lot) <= before and p.is_alive() and time.monotonic() < deadline:
                time.sleep(0.001)
            parkers.append(p)
        # -- scribble --
        with open(f"/dev/shm/{name}", "r+b") as f:
            m = mmap.mmap(f.fileno(), 0)
        try:
            region, index, offset, spec = ex.scribble
            geo = geometry(m)
            if region == "lock":
                pos = lock_position(geo, index, offset)
            else:
                base, count, stride = geo[region]
                pos = base + (index % count) * stride + offset % stride
            data = payload_bytes(spec)
            data = data[:max(0, len(m) - pos)]
            m[pos:pos + len(data)] = data
        finally:
            m.close()
        # -- drive --
        for op in ex.ops:
            drive(t, lot, objs, name, op)
        for p in parkers:
            p.join(p.timeout + MARGIN + 1)
            if p.is_alive():
                raise Failure(f"helper parked on {p.key} with timeout {p.timeout} still parked")
            if p.failure:
                raise p.failure
    finally:
        # whatever the lot looks like now, this process must be able to let it go
        for p in parkers:
            p.join(HANG_SECONDS)
        lot.unlink()
        if verbose:
            print(f"  {log}", file=sys.stderr)
    return log


def acquired(lock, timeout):
    """``lock.acquire(timeout=timeout)``, a dead owner's lock counting as acquired."""
    try:
        return lock.acquire(timeout=timeout)
    except shmlot.OwnerDiedError:
        return True


def drive(t, lot, objs, name, op):
    kind, a, b = op
    key = KEYS[a % len(KEYS)]
    other = KEYS[b % len(KEYS)]
    timeout = (b % 4) * 0.05
    if kind == "attach":
        def attach():
            with shmlot.ParkingLot.attach(name) as h:
                h.info()
                h._snapshot()
        t.call("attach", attach)
    elif kind == "park":
        t.call(f"park({key}, {timeout})", lambda: lot.park(key, validate=lambda: True,
                                                           timeout=timeout), timeout)
    elif kind == "unpark_one":
        t.call(f"unpark_one({key})", lambda: lot.unpark_one(key, lambda r: 7))
    elif kind == "unpark_all":
        t.call(f"unpark_all({key})", lambda: lot.unpark_all(key, 3))
    elif kind == "unpark_filter":
        t.call(f"unpark_filter({key})",
               lambda: lot.unpark_filter(key, lambda tok: FilterOp(b % 3), lambda r: 1))
    elif kind == "unpark_requeue":
        t.call(f"unpark_requeue({key}, {other})",
               lambda: lot.unpark_requeue(key, other, lambda: RequeueOp(b % 5)))
    elif kind == "reap":
        t.call("reap", lot.reap)
    elif kind == "snapshot":
        t.call("_snapshot", lot._snapshot)
    elif kind == "info":
        t.call("info", lot.info)
    elif kind == "deadlock":
        if _deadlock is not None:
            t.call("deadlock.check", lambda: _deadlock.check(lot))
    elif kind == "lock":
        lock = objs["lock"]

        def use_lock():
            if acquired(lock, timeout):
                lock.release()
        t.call(f"Lock.acquire({timeout})", use_lock, timeout)
    elif kind == "cond":
        cond = objs["cond"]

        def use_cond():
            if not acquired(cond, timeout):
                return
            try:
                if b % 2:
                    cond.notify_all()
                else:
                    cond.wait(timeout)
            finally:
                cond.release()
        # acquire, then wait: up to twice the timeout
        t.call(f"Condition({timeout})", use_cond, 2 * timeout)
    elif kind == "sem":
        sem = objs["sem"]

        def use_sem():
            if sem.acquire(timeout=timeout):
                sem.release()
        t.call(f"Semaphore.acquire({timeout})", use_sem, timeout)
    elif kind == "sem_release":
        t.call("Semaphore.release", lambda: objs["sem"].release())
    elif kind == "event":
        ev = objs["event"]
        if b % 3 == 0:
            t.call("Event.set", ev.set)
        elif b % 3 == 1:
            t.call("Event.clear", ev.clear)
        else:
            t.call(f"Event.wait({timeout})", lambda: ev.wait(timeout), timeout)
    elif kind == "rw":
        rw = objs["rw"]

        def use_rw():
            write = b % 2
            try:
                got = (rw.acquire_write if write else rw.acquire_read)(timeout=timeout)
            except shmlot.OwnerDiedError:
                got, write = True, True   # a dead writer's lock is ours now
            if got:
                (rw.release_write if write else rw.release_read)()
        t.call(f"RWLock({timeout})", use_rw, timeout)
    elif kind == "barrier":
        t.call(f"Barrier.wait({timeout})", lambda: objs["barrier"].wait(timeout), timeout)
    elif kind == "reopen":
        # the registry: find (or create) objects by name after the scribble
        names = ["lock", "sem", "event", "rw", f"new{a}"]
        cls = [shmlot.Lock, shmlot.Semaphore, shmlot.Event, shmlot.RWLock, shmlot.Lock][a % 5]
        t.call(f"{cls.__name__}(name={names[a % 5]!r})", lambda: cls(name=names[a % 5], lot=lot))
    else:
        raise ValueError(kind)


OPS = ("attach", "park", "unpark_one", "unpark_all", "unpark_filter", "unpark_requeue", "reap",
       "snapshot", "info", "deadlock", "lock", "cond", "sem", "sem_release", "event", "rw",
       "barrier", "reopen")


# ---- hypothesis ----------------------------------------------------------------------------------

def strategies(waiter):
    from hypothesis import strategies as st
    payload = st.one_of(
        st.tuples(st.just("raw"), st.binary(min_size=1, max_size=64)),
        st.tuples(st.sampled_from(["u32", "u64"]), st.sampled_from(interesting_values())),
        st.tuples(st.sampled_from(["u32", "u64"]), st.integers(0, 2**64 - 1)),
    )
    scribble = st.tuples(st.sampled_from(REGIONS), st.integers(0, 63), st.integers(0, 4095),
                         payload)
    op = st.tuples(st.sampled_from(OPS), st.integers(0, 255), st.integers(0, 255))
    parkers = st.lists(st.tuples(st.sampled_from(KEYS), st.sampled_from([0.05, 0.2])),
                       max_size=2)
    return st.builds(Example, st.just(waiter), parkers, scribble,
                     st.lists(op, min_size=1, max_size=10))


def run_hypothesis(args):
    from hypothesis import HealthCheck, given, settings

    @settings(max_examples=args.examples, deadline=None, derandomize=args.derandomize,
              database=None, suppress_health_check=list(HealthCheck), print_blob=True)
    @given(strategies(args.waiter))
    def fuzz(ex):
        print(f"EXAMPLE {ex!r}", file=sys.stderr, flush=True)
        faulthandler.dump_traceback_later(HANG_SECONDS, exit=True)
        try:
            run_example(ex, args.verbose)
        finally:
            faulthandler.cancel_dump_traceback_later()

    fuzz()


# ---- atheris ---------------------------------------------------------------------------------------

def run_atheris(args, rest):
    import atheris

    values = interesting_values()

    def one(data):
        fdp = atheris.FuzzedDataProvider(data)
        parkers = [(KEYS[fdp.ConsumeIntInRange(0, 7)], 0.05)
                   for _ in range(fdp.ConsumeIntInRange(0, 2))]
        region = REGIONS[fdp.ConsumeIntInRange(0, len(REGIONS) - 1)]
        index, offset = fdp.ConsumeIntInRange(0, 63), fdp.ConsumeIntInRange(0, 4095)
        how = fdp.ConsumeIntInRange(0, 2)
        if how == 0:
            spec = ("raw", fdp.ConsumeBytes(fdp.ConsumeIntInRange(1, 64)) or b"\0")
        elif how == 1:
            spec = ("u64", values[fdp.ConsumeIntInRange(0, len(values) - 1)])
        else:
            spec = ("u32", fdp.ConsumeIntInRange(0, 2**32 - 1))
        ops = [(OPS[fdp.ConsumeIntInRange(0, len(OPS) - 1)], fdp.ConsumeIntInRange(0, 255),
                fdp.ConsumeIntInRange(0, 255)) for _ in range(fdp.ConsumeIntInRange(1, 8))]
        ex = Example(args.waiter, parkers, (region, index, offset, spec), ops)
        print(f"EXAMPLE {ex!r}", file=sys.stderr, flush=True)
        faulthandler.dump_traceback_later(HANG_SECONDS, exit=True)
        try:
            run_example(ex)
        finally:
            faulthandler.cancel_dump_traceback_later()

    if hasattr(atheris, "instrument_all"):
        atheris.instrument_all()   # coverage feedback from shmlot's Python layer
    atheris.Setup([sys.argv[0], *rest], one)
    atheris.Fuzz()


# ---- live lots: scribbling while threads are parked --------------------------------------------

LIVE_SECONDS = 1.5    # per round
FIXED_HEADER = 128    # sl_header up to creator_pid: read only at attach


def live_round(waiter, seed):
    """Threads of this process park, contend on a Lock, wait on a Condition and notify it, while
    another thread writes random bytes over the lot (bursts of small writes, then all of it past
    the fixed header). Every wait has a timeout; allowed outcomes are those of the examples.
    Returns the outcomes counted by kind; raises Failure on an unexpected exception or a thread
    that does not finish."""
    import random
    name = f"{PREFIX}{uuid.uuid4().hex[:8]}"
    lot = shmlot.ParkingLot.create(name, buckets=BUCKETS, slots=4 * SLOTS, mode=0o600,
                                   waiter=waiter, objects=OBJECTS, holds=HOLDS)
    lock = shmlot.Lock(name="lock", lot=lot)
    cond = shmlot.Condition(name="cond", lot=lot)
    end = time.monotonic() + LIVE_SECONDS
    counts, failures = {}, []
    counts_lock = threading.Lock()

    def worker(role, rnd):
        while time.monotonic() < end:
            try:
                if role == "park":
                    lot.park(rnd.choice(KEYS), timeout=0.03)
                elif role == "lock":
                    if lock.acquire(timeout=0.03):
                        lock.release()
                elif role == "wait":
                    if cond.acquire(timeout=0.03):
                        try:
                            cond.wait(0.03)
                        finally:
                            cond.release()
                elif role == "notify":
                    if cond.acquire(timeout=0.03):
                        try:
                            cond.notify_all()
                        finally:
                            cond.release()
                else:
                    lot.unpark_all(rnd.choice(KEYS))
                    lot.unpark_one(rnd.choice(KEYS), lambda r: 1)
                outcome = "ok"
            except ALLOWED as exc:
                outcome = type(exc).__name__
            except BaseException as exc:
                failures.append(f"{role}: unexpected {type(exc).__name__}: {exc}")
                return
            with counts_lock:
                counts[outcome] = counts.get(outcome, 0) + 1

    def scribbler(rnd):
        with open(f"/dev/shm/{name}", "r+b") as f:
            m = mmap.mmap(f.fileno(), 0)
        try:
            whole = False
            time.sleep(0.1)
            while time.monotonic() < end - 0.2:
                for _ in range(rnd.randrange(1, 6)):
                    n = rnd.choice((1, 4, 8, 16, 64))
                    off = rnd.randrange(FIXED_HEADER, len(m) - n)
                    m[off:off + n] = rnd.randbytes(n)
                if not whole and time.monotonic() > end - LIVE_SECONDS / 2:
                    m[FIXED_HEADER:] = rnd.randbytes(len(m) - FIXED_HEADER)
                    whole = True
                time.sleep(0.005)
        finally:
            m.close()

    roles = ["park", "park", "lock", "lock", "wait", "wait", "notify", "unpark"]
    threads = [threading.Thread(target=worker, args=(r, random.Random(seed * 100 + i)),
                                daemon=True) for i, r in enumerate(roles)]
    threads.append(threading.Thread(target=scribbler, args=(random.Random(seed),), daemon=True))
    try:
        for t in threads:
            t.start()
        # A scribbled lot can leave the lock's word naming a thread that will not release it:
        # one that went on after its release failed (LotCorruptError), or a Condition waiter
        # that could not leave a scribbled queue and was handed the lock while it re-acquires
        # it (without a timeout, as threading does). Once the round is over, free the word for
        # the threads still waiting (their owner poll sees it free and takes it).
        give_up = time.monotonic() + LIVE_SECONDS + 10
        while any(t.is_alive() for t in threads) and time.monotonic() < give_up:
            time.sleep(0.05)
            if time.monotonic() > end + 1:
                for w in (lock, cond._lock):
                    w._cas_word(w._word(), 0)
        if any(t.is_alive() for t in threads):
            faulthandler.dump_traceback(all_threads=True)
            raise Failure(f"live round {seed}: a thread is still running 10 s past the end")
        if failures:
            raise Failure(f"live round {seed}: {failures[0]}")
    finally:
        lot.unlink()
    return counts


def run_live(args):
    for seed in range(args.live):
        print(f"EXAMPLE live round {seed} ({args.waiter})", file=sys.stderr, flush=True)
        faulthandler.dump_traceback_later(HANG_SECONDS, exit=True)
        try:
            counts = live_round(args.waiter, seed)
        finally:
            faulthandler.cancel_dump_traceback_later()
        if args.verbose:
            print(f"  {counts}", file=sys.stderr)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    rest = []
    if "--" in argv:
        i = argv.index("--")
        argv, rest = argv[:i], argv[i + 1:]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--examples", type=int, default=200)
    p.add_argument("--waiter", choices=("futex", "semaphore"), default="futex")
    p.add_argument("--derandomize", action="store_true", help="a fixed sequence of examples")
    p.add_argument("--atheris", action="store_true", help="coverage-guided fuzzing with atheris "
                   "(arguments after -- go to libFuzzer)")
    p.add_argument("-v", "--verbose", action="store_true", help="print each example's outcomes")
    p.add_argument("--prefix", help="name the lots PREFIX<8 hex> (default shmlot-fuzz-<pid>-)")
    p.add_argument("--live", type=int, metavar="ROUNDS", help="instead of examples: ROUNDS "
                   "rounds of random bytes written over a lot while threads park, contend, "
                   "wait and notify in it")
    args = p.parse_args(argv)
    global PREFIX
    if args.prefix:
        PREFIX = args.prefix
    faulthandler.enable()
    # a scribbled header may name another PID namespace: attach then warns, which is right
    warnings.filterwarnings("ignore", message=".*another PID namespace", category=RuntimeWarning)
    if args.atheris:
        run_atheris(args, rest)
        return 0
    t0 = time.monotonic()
    if args.live:
        run_live(args)
        print(f"fuzz_lot: {args.live} live rounds on the {args.waiter} waiter, no crash, hang "
              f"or unexpected error ({time.monotonic() - t0:.1f} s)")
        return 0
    run_hypothesis(args)
    print(f"fuzz_lot: {args.examples} examples on the {args.waiter} waiter, no crash, hang or "
          f"unexpected error ({time.monotonic() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
