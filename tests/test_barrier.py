"""Barrier across threads and processes: rounds in lockstep, the action once per
round (also when more threads than parties arrive at once), timeouts, reset, abort, and a party
killed while the others wait breaking the barrier for them (BrokenBarrierError, promptly).
Both backends.
"""
import multiprocessing
import os
import threading
import time

import pytest

import shmlot

from helpers.kills import kill_and_reap
from helpers.lots import default_lot_vars
from helpers.processes import join_all, start_python
from helpers.segments import attach_segment
from helpers.waiting import parked, wait_parked_at_least, wait_until

pytestmark = pytest.mark.timeout(60)

FORK = multiprocessing.get_context("fork")
SPAWN = multiprocessing.get_context("spawn")
BrokenBarrierError = shmlot.BrokenBarrierError


def _rounds(barrier, seg_name, slot, rounds):
    """Pass ``rounds`` rounds; per round, record the arrival index (as a bit) in the segment."""
    seg = attach_segment(seg_name) if seg_name else None
    for r in range(rounds):
        i = barrier.wait(30)
        if seg is not None:
            seg.fetch_add(8 * r, 1 << i)
    if seg is not None:
        seg.close()


def test_rounds_in_lockstep_threads_and_processes(default_lot, shm_segment):
    """Two threads, a fork child and a spawn child pass 20 rounds together: in every round the
    arrival indices are exactly 0..3."""
    rounds = 20
    b = shmlot.Barrier(4)
    seg = shm_segment(8 * rounds)
    procs = [FORK.Process(target=_rounds, args=(b, seg.name, 2, rounds)),
             SPAWN.Process(target=_rounds, args=(b, seg.name, 3, rounds))]
    for p in procs:
        p.start()
    threads = [threading.Thread(target=_rounds, args=(b, seg.name, i, rounds)) for i in range(2)]
    for t in threads:
        t.start()
    join_all(threads, procs, 40)
    assert [seg.load(8 * r) for r in range(rounds)] == [0b1111] * rounds
    assert b.n_waiting == 0 and not b.broken
    assert not parked(default_lot)



_action_state = {}


def _record_action():
    """The barrier's action: count one run for the generation it runs in (one per round)."""
    if not _action_state:
        _action_state["seg"] = attach_segment(os.environ["BARRIER_TEST_SEG"])
        _action_state["b"] = shmlot.Barrier(4, name=os.environ["BARRIER_TEST_NAME"])
    gen = (_action_state["b"]._words[1].load() >> 32) & 0x7FFFFFFF
    _action_state["seg"].fetch_add(8 * (1 + gen // 2 % 400), 1)


def _waits(b, seg_name, n):
    seg = attach_segment(seg_name)
    try:
        for _ in range(n):
            b.wait(30)
            seg.fetch_add(0, 1)
    except BrokenBarrierError:
        pass  # the test aborts the barrier for the stragglers
    seg.close()


def test_action_once_per_round_with_more_threads_than_parties(default_lot, shm_segment,
                                                               monkeypatch):
    """Six threads and two processes, ten waits each, on a 4-party barrier: more arrivals than
    parties at any moment, so several threads see "one short of full" at once; the action still
    runs exactly once per round (one run per generation). The stragglers left when fewer than
    four still have waits to do are released with abort()."""
    seg = shm_segment(8 * 512)
    name = f"bar-act-{os.getpid()}-{time.monotonic_ns()}"
    monkeypatch.setenv("BARRIER_TEST_SEG", seg.name)
    monkeypatch.setenv("BARRIER_TEST_NAME", name)
    b = shmlot.Barrier(4, action=_record_action, name=name)
    procs = [FORK.Process(target=_waits, args=(b, seg.name, 10)) for _ in range(2)]
    for p in procs:
        p.start()
    threads = [threading.Thread(target=_waits, args=(b, seg.name, 10)) for _ in range(6)]
    for t in threads:
        t.start()
    # at most 3 workers x 10 waits can be left over: at least 44 waits return before that
    wait_until(lambda: seg.load(0) >= 44, timeout=30, message="rounds passed")

    def alive():
        return sum(t.is_alive() for t in threads) + sum(p.is_alive() for p in procs)

    # fewer than 4 left, all of them inside wait(): no round can complete any more (and no
    # action is running: that needs 4 parties inside wait())
    wait_until(lambda: alive() < 4 and alive() == b.n_waiting, timeout=30,
               message="only stragglers left")
    b.abort()
    join_all(threads, procs, 30)
    runs = [seg.load(8 * (1 + g)) for g in range(400)]
    assert max(runs) == 1, [r for r in runs if r]
    assert sum(runs) * 4 == seg.load(0)  # one action per completed round
    _action_state.clear()
    shmlot.unlink_object(name)


def _raise():
    raise ZeroDivisionError


def test_action_raising_breaks_barrier(default_lot):
    b = shmlot.Barrier(2, action=_raise)
    out = []
    t = threading.Thread(target=lambda: out.append(pytest.raises(BrokenBarrierError, b.wait, 10)))
    t.start()
    wait_parked_at_least(default_lot, b.key, 1)
    with pytest.raises(ZeroDivisionError):
        b.wait(10)
    t.join(10)
    assert len(out) == 1 and b.broken


def test_timeout_breaks_barrier_for_every_party(default_lot):
    """One party times out: it and the others (a process among them) get BrokenBarrierError,
    and so does a late arrival, until reset()."""
    b = shmlot.Barrier(3)
    p = FORK.Process(target=_expect_broken, args=(b,))
    p.start()
    wait_parked_at_least(default_lot, b.key, 1)
    t0 = time.monotonic()
    with pytest.raises(BrokenBarrierError):
        b.wait(0.3)
    assert 0.25 <= time.monotonic() - t0 < 2
    p.join(10)
    assert p.exitcode == 0
    assert b.broken
    with pytest.raises(BrokenBarrierError):
        b.wait(5)
    b.reset()
    assert not b.broken
    t = threading.Thread(target=_expect_broken, args=(b,))
    t.start()
    b2 = shmlot.Barrier(1)
    b2.wait()
    wait_parked_at_least(default_lot, b.key, 1)
    # default timeout from the constructor
    bt = shmlot.Barrier(2, timeout=0.2)
    with pytest.raises(BrokenBarrierError):
        bt.wait()
    b.abort()
    t.join(10)
    assert not t.is_alive()


def _expect_broken(b):
    try:
        b.wait(30)
    except BrokenBarrierError:
        return
    raise AssertionError("the barrier was not broken")


def test_reset_and_abort_release_waiting_processes(default_lot):
    for how in ("reset", "abort"):
        b = shmlot.Barrier(3)
        procs = [FORK.Process(target=_expect_broken, args=(b,)) for _ in range(2)]
        for p in procs:
            p.start()
        wait_until(lambda: b.n_waiting == 2, message="two waiting")
        wait_parked_at_least(default_lot, b.key, 2)
        getattr(b, how)()
        for p in procs:
            p.join(10)
            assert p.exitcode == 0
        assert b.broken is (how == "abort")
        assert b.n_waiting == 0


def test_named_barrier_across_unrelated_processes(default_lot):
    name = f"bar-{os.getpid()}-{time.monotonic_ns()}"
    b = shmlot.Barrier(3, name=name)
    code = f"""
        import shmlot
        b = shmlot.Barrier(3, name={name!r})
        print(b.wait(30), flush=True)
    """
    env = default_lot_vars(default_lot)
    kids = [start_python(code, env=env) for _ in range(2)]
    idx = b.wait(30)
    outs = [int(k.communicate(timeout=30)[0]) for k in kids]
    assert sorted(outs + [idx]) == [0, 1, 2]
    with pytest.raises(ValueError):
        shmlot.Barrier(4, name=name)  # another party count: refused
    shmlot.unlink_object(name)


# ---- a party dies -------------------------------------------------------------------------------

def _wait_forever(b):
    b.wait()


@pytest.mark.parametrize("victim_first", [True, False])
def test_party_killed_while_others_wait(default_lot, victim_first):
    """A 5-party barrier: a process waiting in it is SIGKILLed while two threads and another
    process wait too (the fifth never comes): all of them get BrokenBarrierError within 1 s of
    the death."""
    b = shmlot.Barrier(5)
    out = []
    victim = FORK.Process(target=_wait_forever, args=(b,))
    other = FORK.Process(target=_expect_broken, args=(b,))

    def thread_party():
        try:
            b.wait()
            out.append("passed")
        except BrokenBarrierError:
            out.append(("broken", time.monotonic()))

    threads = [threading.Thread(target=thread_party) for _ in range(2)]
    order = [victim, other] if victim_first else [other, victim]
    for p in order:
        p.start()
    for t in threads:
        t.start()
    wait_parked_at_least(default_lot, b.key, 4)
    killed_at = kill_and_reap(victim)
    for t in threads:
        t.join(10)
        assert not t.is_alive()
    other.join(10)
    assert other.exitcode == 0
    assert [o[0] for o in out] == ["broken", "broken"]
    assert max(o[1] for o in out) - killed_at < 1.0
    assert b.broken
    b.reset()
    assert not b.broken


def _lone_party_killed_then_next_arrival_breaks(lot, parties, ctx):
    """A ``parties``-party barrier: a process of ``ctx`` waits in it alone and is SIGKILLed;
    the next arrival gets BrokenBarrierError within 1 s. Returns the barrier."""
    b = shmlot.Barrier(parties)
    victim = ctx.Process(target=_wait_forever, args=(b,))
    victim.start()
    wait_parked_at_least(lot, b.key, 1)
    kill_and_reap(victim)
    t0 = time.monotonic()
    with pytest.raises(BrokenBarrierError):
        b.wait(10)
    assert time.monotonic() - t0 < 1.0
    return b


@pytest.mark.parametrize("ctx", [FORK, SPAWN])
def test_last_arrival_after_a_party_died_waiting_alone(default_lot, ctx):
    """A 2-party barrier: the first party waits alone and is SIGKILLed; the second arrival would
    complete the round with a dead process: it breaks the barrier instead, at once."""
    b = _lone_party_killed_then_next_arrival_breaks(default_lot, 2, ctx)
    assert b.broken
    b.reset()  # and the barrier is usable again
    t = threading.Thread(target=b.wait, args=(10,))
    t.start()
    assert b.wait(10) in (0, 1)
    t.join(10)


def test_party_killed_before_anyone_else_arrives(default_lot):
    """The only party waiting is killed; the next arrivals must not wait for it forever: they
    find its hold and break the barrier."""
    _lone_party_killed_then_next_arrival_breaks(default_lot, 3, FORK)
