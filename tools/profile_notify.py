#!/usr/bin/env python3
"""Where the time of a Condition.notify_all goes: N processes wait (the benchmark's child loop,
tools/benchlib/scenarios/notify.py), the parent notifies them ROUNDS times, and the stamps of
every re-acquire are split into (docs/performance.md, section 3):

- the notify call itself (acquire, notify_all, release, each timed in the parent);
- the first re-acquire after the notify, and the gap between one re-acquire and the next;
- each gap's two parts: the waiter's own Python between its re-acquire and its next wait()
  ("python"), and from that wait() to the next waiter's re-acquire ("hand-off": the release, the
  wake-up and the next waiter's way out of wait());
- the CPU time a waiter spends inside wait() per call (its share of the sleep/wake cycle).

    python tools/profile_notify.py shmlot|mp [N] [ROUNDS]

Uses the lot named by $SHMLOT_LOT (or the default lot) for shmlot."""
import multiprocessing
import statistics
import sys
import time

import shmlot

pc = time.perf_counter_ns


def child(cond, idx, rounds, ready, stamps, pre, cpu):
    with cond:
        for r in range(rounds + 1):
            ready.value += 1
            pre[idx] = pc()
            c0 = time.thread_time_ns()
            cond.wait()
            c1 = time.thread_time_ns()
            stamps[idx] = pc()
            if r >= 2:
                cpu[idx] += c1 - c0


def until(pred):
    end = time.monotonic() + 60
    while not pred():
        if time.monotonic() > end:
            raise SystemExit("waiters stuck")
        time.sleep(0.001)


def quantile(values, q):
    values = sorted(values)
    return values[int(q * (len(values) - 1))]


def main(argv):
    kind = argv[0]
    n = int(argv[1]) if len(argv) > 1 else 32
    rounds = int(argv[2]) if len(argv) > 2 else 10
    ctx = multiprocessing.get_context("fork")
    cond = shmlot.Condition() if kind == "shmlot" else ctx.Condition()
    ready = ctx.RawValue("q", 0)
    stamps, pre, cpu = ctx.RawArray("q", n), ctx.RawArray("q", n), ctx.RawArray("q", n)
    procs = [ctx.Process(target=child, args=(cond, i, rounds, ready, stamps, pre, cpu),
                         daemon=True) for i in range(n)]
    for p in procs:
        p.start()
    calls, totals, firsts, gaps, pys, handoffs = [], [], [], [], [], []
    for r in range(rounds):
        until(lambda: ready.value >= n * (r + 1))
        time.sleep(0.005)
        for i in range(n):
            stamps[i] = 0
        t0 = pc()
        cond.acquire()
        ta = pc()
        cond.notify_all()
        tb = pc()
        cond.release()
        t1 = pc()
        until(lambda: all(stamps[i] for i in range(n)))
        time.sleep(0.002)  # the last waiters' next pre-wait stamps
        if not r:
            continue  # warm-up: the children fault in their pages
        order = sorted(range(n), key=lambda i: stamps[i])
        calls.append((ta - t0, tb - ta, t1 - tb))
        totals.append(stamps[order[-1]] - t0)
        firsts.append(stamps[order[0]] - t0)
        for a, b in zip(order, order[1:]):
            gaps.append(stamps[b] - stamps[a])
            pys.append(pre[a] - stamps[a])
            handoffs.append(stamps[b] - pre[a])
    until(lambda: ready.value >= n * (rounds + 1))
    with cond:
        cond.notify_all()
    for p in procs:
        p.join(30)
    us = 1e3
    print(f"{kind}, {n} waiters, {rounds - 1} rounds (medians):")
    print(f"  all re-acquired     {statistics.median(totals) / us:8.1f} us after the notify began")
    print(f"  first re-acquired   {statistics.median(firsts) / us:8.1f} us")
    print("  acquire / notify_all / release in the notifier: "
          + " / ".join(f"{statistics.median(c[i] for c in calls) / us:.1f}" for i in range(3))
          + " us")
    print(f"  gap between re-acquires {statistics.median(gaps) / us:6.1f} us "
          f"(p90 {quantile(gaps, 0.9) / us:.1f}): python {statistics.median(pys) / us:.1f}, "
          f"hand-off {statistics.median(handoffs) / us:.1f}")
    print(f"  CPU inside wait()   {sum(cpu) / (n * max(rounds - 1, 1)) / us:8.1f} us per call")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
