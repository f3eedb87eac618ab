#!/usr/bin/env python3
"""NPROCS processes loop on acquire(); release() of one lock for SECONDS: a fixed workload to run
under `perf stat` / `perf record` (docs/performance.md, section 3).

    python tools/profile_contended.py shmlot|mp NPROCS SECONDS

Prints the total number of operations on stdout, and on stderr the throughput, the slowest
process's share of the mean, and for the slowest three and fastest two processes their share, the
CPU time they got and the CPU time per operation (a process that spins, yields and parks spends
its CPU on the slow path; one that is not scheduled gets little CPU at all). Uses the lot named by
$SHMLOT_LOT (or the default lot)."""
import multiprocessing
import sys
import time

import shmlot


def child(lock, secs, counts, cpu, i):
    acq, rel = lock.acquire, lock.release
    n = 0
    c0 = time.thread_time_ns()
    end = time.monotonic() + secs
    while True:
        for _ in range(100):
            acq()
            rel()
        n += 100
        if time.monotonic() > end:
            break
    counts[i] = n
    cpu[i] = time.thread_time_ns() - c0


def main(argv):
    kind, nprocs, secs = argv[0], int(argv[1]), float(argv[2])
    ctx = multiprocessing.get_context("fork")
    lock = shmlot.Lock() if kind == "shmlot" else ctx.Lock()
    counts, cpu = ctx.RawArray("q", nprocs), ctx.RawArray("q", nprocs)
    procs = [ctx.Process(target=child, args=(lock, secs, counts, cpu, i))
             for i in range(nprocs)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    total = sum(counts)
    print(f"{kind} {nprocs} processes: {total / secs:.0f} ops/s, slowest "
          f"{min(counts) / (total / nprocs):.2f} of the mean", file=sys.stderr)
    rows = sorted(zip(counts, cpu))
    for n, c in rows[:3] + rows[-2:]:
        print(f"  share {n / (total / nprocs):5.2f}  CPU {c / 1e6:7.1f} ms  "
              f"{c / max(n, 1):7.0f} ns of CPU per operation", file=sys.stderr)
    print(total)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
