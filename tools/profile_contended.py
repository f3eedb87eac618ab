#!/usr/bin/env python3
"""NPROCS processes loop on acquire(); release() of one lock for SECONDS: a fixed workload to run
under `perf stat` / `perf record` (docs/performance.md, section 3).

    python tools/profile_contended.py shmlot|mp NPROCS SECONDS

Prints the total number of operations on stdout, and the throughput and the slowest process's
share of the mean on stderr. Uses the lot named by $SHMLOT_LOT (or the default lot)."""
import os, sys, time, multiprocessing as mp
kind, nprocs, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
import shmlot
ctx = mp.get_context("fork")
lock = shmlot.Lock() if kind == "shmlot" else ctx.Lock()
counts = ctx.RawArray("q", nprocs)
def child(i):
    acq, rel = lock.acquire, lock.release
    n = 0
    end = time.monotonic() + secs
    while True:
        for _ in range(100):
            acq(); rel()
        n += 100
        if time.monotonic() > end:
            break
    counts[i] = n
ps = [ctx.Process(target=child, args=(i,)) for i in range(nprocs)]
for p in ps: p.start()
for p in ps: p.join()
print(kind, nprocs, "ops/s %.0f" % (sum(counts) / secs), "min share %.2f" % (min(counts) / (sum(counts) / nprocs)), file=sys.stderr)
print(sum(counts))
