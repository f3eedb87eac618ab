"""Shared bytes per primitive (and Python heap per object), and the size of the default lot."""
import gc
import multiprocessing
import os
import tracemalloc

from .. import targets as T
from ..common import FLOOR, BenchTimeout, Unavailable, kill_procs
from ..env import posix_ipc
from ..registry import scenario
from ..results import Scenario
from ..subjects import FlockLock

# name, family, what one object is made with (None: made by hand in the child)
KINDS = [
    ("shmlot.Lock", "shmlot", ("shmlot", "Lock", ())),
    ("shmlot.RLock", "shmlot", ("shmlot", "RLock", ())),
    ("shmlot.Semaphore", "shmlot", ("shmlot", "Semaphore", (1,))),
    ("shmlot.Event", "shmlot", ("shmlot", "Event", ())),
    ("shmlot.Condition", "shmlot", ("shmlot", "Condition", ())),
    ("mp.Lock", "mp", ("mp", "Lock", ())),
    ("mp.RLock", "mp", ("mp", "RLock", ())),
    ("mp.Semaphore", "mp", ("mp", "Semaphore", (1,))),
    ("mp.Event", "mp", ("mp", "Event", ())),
    ("mp.Condition", "mp", ("mp", "Condition", ())),
    ("posix_ipc.Semaphore", "posix_ipc", None),
    ("fcntl.flock", "fcntl", None),
]


def _maker(how, start_method):
    where, kind, args = how
    if where == "mp":
        return lambda: getattr(multiprocessing.get_context(start_method), kind)(*args)
    import shmlot
    cls = getattr(shmlot, kind, None)
    if cls is None:
        raise Unavailable(f"shmlot.{kind} does not exist yet")
    return lambda: cls(*args)


def _shm_mapped():
    total = 0
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split(None, 5)
            if len(parts) == 6 and parts[5].startswith("/dev/shm/"):
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                total += hi - lo
    return total


def _child(name, k, tmp, start_method, conn):
    try:
        how = dict((n, h) for n, _, h in KINDS)[name]
        objs, cleanup = [], []
        px = posix_ipc() if name == "posix_ipc.Semaphore" else None
        make = _maker(how, start_method) if how else None
        gc.collect()
        tracemalloc.start()
        heap0, _ = tracemalloc.get_traced_memory()
        shm0 = _shm_mapped()
        note = ""
        try:
            for i in range(k):
                if px is not None:
                    nm = f"/shmlot-bench-mem-{os.getpid()}-{i}"
                    cleanup.append(nm)
                    objs.append(px.Semaphore(nm, px.O_CREX, initial_value=1))
                elif name == "fcntl.flock":
                    path = os.path.join(tmp, f"mem-{os.getpid()}-{i}")
                    cleanup.append(path)
                    objs.append(FlockLock(path))
                else:
                    objs.append(make())
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
                if px is not None:
                    px.unlink_semaphore(c)
                else:
                    os.unlink(c)
            except Exception:
                pass
    except Unavailable as e:
        conn.send(("n/a", str(e)))
    except BaseException as e:
        conn.send(("error", f"{type(e).__name__}: {e}"))


@scenario("memory", "shared bytes per primitive (and resident bytes per object)",
          aliases=("mem",))
def memory(cfg, env):
    sc = Scenario(env, "memory", "shared memory per primitive (/dev/shm pages mapped, or .SIZE)",
                  "bytes", exact=True)
    for n, fam, _ in KINDS:
        sc.row(n, fam)
    sc.row(FLOOR, "floor")
    lot_name = "shmlot lot (default size)"
    sc.row(lot_name, "shmlot")
    sc.targets = [T.Target("shmlot.Lock", "Lock.SIZE <= 8 bytes", "<=", 8, T.value("shmlot.Lock")),
                  T.Target(lot_name, "<= 8 MiB", "<=", 8 * 1024 * 1024, T.value(lot_name))]
    for n, fam, _ in KINDS:
        if n not in sc.rows:
            continue
        row = sc.rows[n]
        try:
            if fam == "posix_ipc":
                posix_ipc()
            if fam == "shmlot":
                env.shmlot_kind(n.split(".", 1)[1])
            pconn, cconn = env.ctx.Pipe()
            p = env.ctx.Process(target=_child, args=(n, cfg.mem_objects, env.tmp,
                                                     env.start_method, cconn), daemon=True)
            p.start()
            try:
                if not pconn.poll(120):
                    raise BenchTimeout("memory child did not answer")
                msg = pconn.recv()
            finally:
                p.join(30)
                kill_procs([p])
            if msg[0] == "n/a":
                raise Unavailable(msg[1])
            if msg[0] == "error":
                raise RuntimeError("in child: " + msg[1])
            _, shared, heap, count, note = msg
            row.add(0, shared, heap_per_object=heap, objects=count)
            if note:
                row.reason = note
        except Exception as e:
            row.fail(e)
    if FLOOR in sc.rows:
        sc.rows[FLOOR].add(0, 4.0)   # one 32-bit futex word
    if lot_name in sc.rows:
        lot_row = sc.rows[lot_name]
        try:
            env.shmlot()
            path = "/dev/shm/" + str(getattr(env.lot, "name", "")).lstrip("/")
            if env.lot is None or not os.path.exists(path):
                raise Unavailable(f"cannot find the lot's segment ({path})")
            lot_row.add(0, float(os.stat(path).st_size))
        except Exception as e:
            lot_row.fail(e)
    sc.rounds = 1
    for t in sc.targets:
        t.evaluate(sc)
    return sc
