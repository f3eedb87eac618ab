"""Two processes hand a token back and forth (a pair of semaphores, or a pair of events)."""
from .. import targets as T
from ..common import FLOOR, expect, kill_procs, pc, watchdog
from ..registry import scenario
from ..results import Scenario
from ..runner import run_rounds
from ..subjects import pingpong_subjects


def _child(name, handles, conn):
    try:
        s = pingpong_subjects()[name]
        a, b = (s.open(h) for h in handles)
        conn.send("ready")
        while True:
            n = conn.recv()
            if n <= 0:
                break
            if s.style == "sem":
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


def _parent(style, a, b, n):
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


@scenario("pingpong", "two processes hand a token back and forth (Semaphore / Event) "
                      "(ns per round trip)", aliases=("ping-pong", "ping_pong"))
def pingpong(cfg, env):
    sc = Scenario(env, "pingpong", "two-process hand-off round trip", "ns/rt",
                  reference="mp.Semaphore", floor=FLOOR)
    subjects = pingpong_subjects(env)
    names = list(subjects) + [FLOOR]
    for n in names:
        sc.row(n, "floor" if n == FLOOR else subjects[n].family)
    sc.targets = [T.Target(s, "<= 0.5 x posix_ipc.Semaphore", "<=", 0.5,
                           T.ratio(s, "posix_ipc.Semaphore"))
                  for s in ("shmlot.Semaphore", "shmlot.Event")]
    sc.targets.append(T.Target("shmlot.Event", "<= 8 x the C floor", "<=", 8.0,
                               T.ratio_floor("shmlot.Event"), level="raised"))
    chunk_ns = max(cfg.pp_budget // 10, 2_000_000)

    def one(name, row, rnd):
        if name == FLOOR:
            row.add(rnd, env.run_floor("pingpong", cfg.floor_pp_iters)["ns_per_op"])
            return
        s = subjects[name]
        handles = [s.make(), s.make()]
        proc = None
        try:
            a, b = (s.open(h) for h in handles)
            parent_conn, child_conn = env.ctx.Pipe()
            proc = env.ctx.Process(target=_child, args=(name, handles, child_conn), daemon=True)
            proc.start()
            expect(parent_conn, 60)
            # Warm up, then timed chunks of ~chunk_ns until the budget is spent. The chunk
            # size follows the last chunk's speed, so a sudden slow-down (a spinning
            # primitive on a loaded machine can get 100x slower) costs one chunk, not an hour.
            n = 50
            parent_conn.send(n)
            t = _parent(s.style, a, b, n)
            expect(parent_conn, 60)
            total_t = total_n = 0
            while total_t < cfg.pp_budget or total_n < 100:
                n = max(10, min(200_000, int(chunk_ns * n / max(t, 1))))
                parent_conn.send(n)
                # A chunk takes ~chunk_ns; if no answer comes for 10 s, the two processes are
                # out of step: some wait()/acquire() returned with no matching set()/release()
                # (a spurious or stale wake-up), and one side or both now wait forever.
                with watchdog(10, f"out of step after <= {n} round trips: both sides waiting "
                                  f"(a wait/acquire returned without a matching set/release?)"):
                    t = _parent(s.style, a, b, n)
                expect(parent_conn, 10, stuck=(
                    f"out of step: this process finished {n} round trips, the other did not "
                    f"(a wait/acquire returned without a matching set/release?)"))
                total_t += t
                total_n += n
            parent_conn.send(0)
            row.add(rnd, total_t / total_n, iterations=total_n)
        finally:
            if proc is not None:
                proc.join(5)
                kill_procs([proc])
            for h in handles:
                s.cleanup(h)

    return run_rounds(sc, cfg, names, one)
