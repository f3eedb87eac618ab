"""What shmlot.get_context() buys against known multiprocessing failures, measured.

Each scenario runs twice, in a fresh process each time: with stock multiprocessing's context and
with shmlot's (same start method), and reports what happened to the work after the kill:

  pool-idle     a Pool's idle workers are SIGKILLed while they wait for a task; one of them holds
                the task queue's read lock (SimpleQueue._rlock) while it waits in recv(). Then a
                task is submitted.
  ring-lock     workers append to a ring buffer (a shared Array) under a shared Lock; one is
                SIGKILLed in the middle of an append, holding the lock. The others go on.
  get-waiting   a consumer blocked in Queue.get() (it holds the queue's read lock while it waits
                in recv()) is SIGKILLed; another consumer then gets the next item.
  get-partial   a consumer is SIGKILLed while it is reading a large item off the pipe (part of
                the item read); another consumer then gets the next item.
  put-partial   a producer is SIGKILLed while its feeder thread writes a large item into a full
                pipe (holding the queue's write lock); a consumer then reads what was sent.

Usage: python tools/mp_failures.py [--method fork|spawn|forkserver] [--timeout S] [SCENARIO...]
Prints one line per scenario and flavour: "survived" (every later step completed within the
timeout), "hung" (a later step did not complete) or "failed: <exception>".
"""
import argparse
import multiprocessing
import os
import pickle
import queue
import signal
import subprocess
import sys
import time
import warnings

SCENARIOS = ("pool-idle", "ring-lock", "get-waiting", "get-partial", "put-partial")
BIG = 64 * 1024 * 1024  # bytes: far more than a pipe holds, so reading/writing it takes a while


def _context(flavour, method):
    if flavour == "stock":
        return multiprocessing.get_context(method)
    import shmlot
    return shmlot.get_context(method)


def _kill(pid):
    os.kill(pid, signal.SIGKILL)


# ---- scenarios: each returns normally if the work after the kill completed -----------------

def pool_idle(ctx, timeout):
    pool = ctx.Pool(2)  # no `with`: a stuck pool's terminate() waits for the lost read lock
    assert pool.apply(abs, (-1,)) == 1
    time.sleep(0.5)  # both workers idle now: one in recv() holding the read lock
    for p in list(pool._pool):
        _kill(p.pid)
    time.sleep(0.5)  # the pool replaces them
    assert pool.apply_async(abs, (-2,)).get(timeout) == 2
    pool.terminate()


def _ring_worker(lock, ring, count, start, n, ready):
    for i in range(start, start + n):
        with lock:
            k = count.value
            ring[k % len(ring)] = i
            if ready is not None and i == start + n // 2:
                ready.set()  # killed here, in the middle of an append, holding the lock
                time.sleep(60)
            count.value = k + 1


def ring_lock(ctx, timeout):
    lock = ctx.Lock()
    ring = ctx.Array("q", 64, lock=False)
    count = ctx.Value("q", 0, lock=False)
    ready = ctx.Event()
    victim = ctx.Process(target=_ring_worker, args=(lock, ring, count, 0, 100, ready))
    victim.start()
    assert ready.wait(timeout)
    _kill(victim.pid)
    victim.join()
    others = [ctx.Process(target=_ring_worker, args=(lock, ring, count, 1000 * k, 200, None))
              for k in (1, 2)]
    for p in others:
        p.start()
    deadline = time.monotonic() + timeout
    for p in others:
        p.join(max(0.0, deadline - time.monotonic()))
    hung = [p for p in others if p.is_alive()]
    for p in hung:
        p.kill()
        p.join()
    if hung:
        raise TimeoutError("the other workers never got the lock")
    assert count.value == 50 + 400, count.value


def _consume(q, out):
    item = q.get()
    out.put(len(item) if isinstance(item, (bytes, bytearray)) else item)


def _next_consumer_gets(ctx, q, out, timeout):
    """After the victim's death, a new consumer must get the next item put on ``q``."""
    q.put("next")
    survivor = ctx.Process(target=_consume, args=(q, out))
    survivor.start()
    try:
        got = out.get(timeout=timeout)
        if got != "next":
            raise AssertionError(f"the next consumer got {got!r} instead of 'next'")
    finally:
        survivor.kill()
        survivor.join()


def get_waiting(ctx, timeout):
    q, out = ctx.Queue(), ctx.Queue()
    victim = ctx.Process(target=_consume, args=(q, out))
    victim.start()
    time.sleep(0.5)  # blocked in get(), holding the read lock, nothing read yet
    _kill(victim.pid)
    victim.join()
    _next_consumer_gets(ctx, q, out, timeout)


def get_partial(ctx, timeout):
    q, out = ctx.Queue(), ctx.Queue()
    q.put(b"x" * BIG)
    victim = ctx.Process(target=_consume, args=(q, out))
    victim.start()
    time.sleep(0.3)  # the victim is reading the big item (its feeder writes as it reads)
    _kill(victim.pid)
    victim.join()
    _next_consumer_gets(ctx, q, out, timeout)


def _produce_big(q, ready):
    ready.set()
    q.put(b"y" * BIG)
    time.sleep(60)  # the feeder thread writes while this sleeps


def put_partial(ctx, timeout):
    q = ctx.Queue()
    ready = ctx.Event()
    victim = ctx.Process(target=_produce_big, args=(q, ready))
    victim.start()
    assert ready.wait(timeout)
    time.sleep(0.5)  # the feeder holds the write lock, blocked on the full pipe
    _kill(victim.pid)
    victim.join()
    q.put("next")  # needs the write lock the dead feeder held
    try:
        got = q.get(timeout=timeout)
    except pickle.UnpicklingError as exc:
        raise AssertionError(f"the reader got a torn item ({exc})") from None
    if got != "next":
        raise AssertionError(f"the reader got {type(got).__name__} instead of 'next'")


FUNCS = {"pool-idle": pool_idle, "ring-lock": ring_lock, "get-waiting": get_waiting,
         "get-partial": get_partial, "put-partial": put_partial}


def run_one(scenario, flavour, method, timeout):
    """In this process: run one scenario, print the verdict, exit."""
    warnings.simplefilter("ignore")  # OwnerDiedWarning from the survivors; the verdict says it
    ctx = _context(flavour, method)
    try:
        FUNCS[scenario](ctx, timeout)
        verdict = "survived"
    except (TimeoutError, multiprocessing.TimeoutError, queue.Empty):
        verdict = "hung"
    except BaseException as exc:  # noqa: B902 - reported
        verdict = f"failed: {type(exc).__name__}: {exc}"[:120]
    print(verdict, flush=True)
    os._exit(0)  # do not wait for pools or feeders stuck on a dead process's lock


def measure(scenario, flavour, method, timeout):
    """Run one scenario in a fresh process (its own process group); return its verdict."""
    cmd = [sys.executable, os.path.abspath(__file__), "--one", scenario, flavour,
           "--method", method, "--timeout", str(timeout)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout * 2 + 20)
        verdict = out.strip().splitlines()[-1] if out.strip() else f"exit {proc.returncode}"
    except subprocess.TimeoutExpired:  # a step that has no timeout of its own (recv) hung
        verdict = "hung"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # its pool workers and children too
        except ProcessLookupError:
            pass
        proc.wait()
    return verdict


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scenarios", nargs="*", default=list(SCENARIOS))
    ap.add_argument("--method", default="fork", choices=("fork", "spawn", "forkserver"))
    ap.add_argument("--timeout", type=float, default=10.0)
    ap.add_argument("--one", nargs=2, metavar=("SCENARIO", "FLAVOUR"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        run_one(args.one[0], args.one[1], args.method, args.timeout)
    print(f"start method {args.method}, timeout {args.timeout:g} s")
    print(f"{'scenario':<12} {'multiprocessing':<22} shmlot.get_context()")
    results = {}
    for scenario in args.scenarios:
        row = [measure(scenario, flavour, args.method, args.timeout)
               for flavour in ("stock", "shmlot")]
        results[scenario] = row
        print(f"{scenario:<12} {row[0]:<22} {row[1]}", flush=True)
    return results


if __name__ == "__main__":
    main()
