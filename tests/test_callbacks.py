"""Callback semantics of the low-level API, on both backends:

- ``validate`` False: *invalid*, nothing enqueued; a raising ``validate`` enqueues nothing;
- unpark callbacks run also when nothing was unparked; one that raises leaves the queue as it was
  and unparks nobody; bad return values raise ValueError/TypeError the same way;
- ``unpark_filter``: UNPARK / SKIP / STOP in FIFO order with the park tokens;
- ``unpark_requeue``: every RequeueOp, with exact unparked/requeued/have_more counts and the
  queue order after the move;
- ``timed_out(key, was_last_thread)``, with the key as it is after a requeue;
- an unpark that wins the race against a timeout makes ``park`` return *unparked*;
- any lot operation called from a callback that runs under a bucket lock raises RuntimeError
  (never deadlocks).
"""
import threading
import time

import pytest

import shmlot
from shmlot import FilterOp, RequeueOp

from helpers.waiting import ParkerThread, park_in_order, parked, wait_parked

pytestmark = pytest.mark.timeout(60)

A, B, C = 0xA000, 0xB000, 0xC000


class Boom(Exception):
    pass


class HardBoom(BaseException):
    """Not an Exception: must propagate just the same (like KeyboardInterrupt)."""


def res_tuple(r):
    return (r.unparked_threads, r.requeued_threads, r.have_more_threads)


@pytest.fixture(params=[1, 256], ids=["one-bucket", "many-buckets"])
def qlot(request, make_lot):
    """A lot where A, B and C share one queue (one bucket) or (likely) do not."""
    return make_lot(buckets=request.param)


# ---- validate ---------------------------------------------------------------------------------

@pytest.mark.parametrize("falsy", [False, 0, None, ""])
def test_validate_false_is_invalid(lot, falsy):
    called = []
    r = lot.park(A, validate=lambda: falsy, before_sleep=lambda: called.append("b"),
                 timed_out=lambda k, w: called.append("t"), timeout=5)
    assert r.is_invalid and called == []
    assert parked(lot) == [] and lot.info()["slots_free"] == lot.slots


@pytest.mark.parametrize("exc_type", [Boom, HardBoom])
def test_raising_validate_enqueues_nothing(lot, exc_type):
    err = exc_type("from validate")

    def validate():
        raise err

    with pytest.raises(exc_type) as info:
        lot.park(A, validate=validate, timeout=5)
    assert info.value is err
    assert parked(lot) == [] and lot.info()["slots_free"] == lot.slots
    # the lot is fine afterwards (bucket unlocked, nothing stale)
    assert lot.park(A, timeout=0).is_timed_out


def test_validate_sees_the_bucket_locked(lot):
    """validate runs under the bucket lock: an unparker of the same key waits for it."""
    inside = threading.Event()
    release = threading.Event()
    order = []

    def validate():
        inside.set()
        release.wait(10)
        order.append("validate done")
        return True

    t = ParkerThread(lot, A, validate=validate).start()
    assert inside.wait(10)
    u = threading.Thread(target=lambda: order.append(("unpark", lot.unpark_one(A)
                                                      .unparked_threads)))
    u.start()
    u.join(0.2)
    assert u.is_alive()  # blocked on the bucket lock that validate holds
    release.set()
    u.join(10)
    assert order == ["validate done", ("unpark", 1)]
    assert t.outcome().is_unparked


@pytest.mark.parametrize("exc_type", [Boom, HardBoom])
def test_raising_before_sleep_leaves_nothing_queued(lot, exc_type):
    def before_sleep():
        raise exc_type("from before_sleep")

    with pytest.raises(exc_type):
        lot.park(A, before_sleep=before_sleep)
    assert parked(lot) == [] and lot.info()["slots_free"] == lot.slots


# ---- unpark_one callback ------------------------------------------------------------------------

def test_unpark_one_callback_called_when_nothing_unparked(lot):
    seen = []
    r = lot.unpark_one(A, lambda res: seen.append(res) or 12345)
    assert len(seen) == 1
    assert res_tuple(seen[0]) == (0, 0, False) and seen[0].be_fair is False
    assert res_tuple(r) == (0, 0, False)
    # the token was ignored, and the next park is not affected by it
    t = ParkerThread(lot, A).start()
    wait_parked(lot, A, 1)
    lot.unpark_one(A)
    assert t.outcome().token == 0


def test_unpark_one_callback_sees_exact_result(qlot):
    ts = park_in_order(qlot, A, 2)
    other = ParkerThread(qlot, B).start()
    wait_parked(qlot, B, 1)
    seen = []
    qlot.unpark_one(A, lambda r: seen.append(res_tuple(r)))
    qlot.unpark_one(A, lambda r: seen.append(res_tuple(r)))
    qlot.unpark_one(A, lambda r: seen.append(res_tuple(r)))
    assert seen == [(1, 0, True), (1, 0, False), (0, 0, False)]
    for t in ts:
        t.outcome()
    assert qlot.unpark_all(B) == 1
    other.outcome()


@pytest.mark.parametrize("exc_type", [Boom, HardBoom])
def test_raising_unpark_callback_unparks_nobody(qlot, exc_type):
    ts = park_in_order(qlot, A, 3)
    before = parked(qlot)

    def callback(res):
        assert res.unparked_threads == 1
        raise exc_type("from callback")

    with pytest.raises(exc_type):
        qlot.unpark_one(A, callback)
    assert parked(qlot) == before
    assert all(t.is_alive() for t in ts)
    # the oldest is still the next one out
    qlot.unpark_one(A, lambda r: 5)
    assert ts[0].outcome().token == 5
    assert qlot.unpark_all(A, 6) == 2
    assert [t.outcome().token for t in ts[1:]] == [6, 6]


@pytest.mark.parametrize("bad, exc", [(-1, ValueError), (2**64, ValueError), ("1", TypeError),
                                      (1.0, TypeError), (True, TypeError), ([], TypeError)])
def test_bad_token_from_callback(lot, bad, exc):
    t = ParkerThread(lot, A).start()
    [p] = wait_parked(lot, A, 1)
    with pytest.raises(exc):
        lot.unpark_one(A, lambda r: bad)
    assert parked(lot, A) == [p] and t.is_alive()
    with pytest.raises(exc):
        lot.unpark_filter(A, lambda tok: FilterOp.UNPARK, lambda r: bad)
    with pytest.raises(exc):
        lot.unpark_requeue(A, B, lambda: RequeueOp.UNPARK_ONE, lambda op, r: bad)
    assert parked(lot, A) == [p] and t.is_alive()
    lot.unpark_one(A, lambda r: None)  # None means the default token
    assert t.outcome().token == 0


# ---- unpark_filter ------------------------------------------------------------------------------

def test_filter_unpark_skip_in_fifo_order(qlot):
    ts = park_in_order(qlot, A, 6, timeout=None)  # park tokens 0..5
    other = ParkerThread(qlot, B, park_token=99).start()
    wait_parked(qlot, B, 1)
    seen, results = [], []

    def filt(token):
        seen.append(token)
        return FilterOp.UNPARK if token % 2 == 0 else FilterOp.SKIP

    r = qlot.unpark_filter(A, filt, lambda res: results.append(res_tuple(res)) or 31)
    assert seen == [0, 1, 2, 3, 4, 5]  # FIFO, only key A's threads
    assert results == [(3, 0, True)]
    assert res_tuple(r) == (3, 0, True)
    assert [ts[i].outcome().token for i in (0, 2, 4)] == [31, 31, 31]
    assert [p.park_token for p in parked(qlot, A)] == [1, 3, 5]
    assert qlot.unpark_all(A) == 3 and qlot.unpark_all(B) == 1
    other.outcome()


def test_filter_stop(qlot):
    ts = park_in_order(qlot, A, 5)
    seen = []

    def filt(token):
        seen.append(token)
        return FilterOp.STOP if token == 2 else FilterOp.UNPARK

    r = qlot.unpark_filter(A, filt)
    assert seen == [0, 1, 2]  # nothing after STOP is looked at
    assert res_tuple(r) == (2, 0, True)
    ts[0].outcome(), ts[1].outcome()
    assert [p.park_token for p in parked(qlot, A)] == [2, 3, 4]
    assert qlot.unpark_all(A) == 3


def test_filter_unpark_all_has_no_more(qlot):
    ts = park_in_order(qlot, A, 3)
    r = qlot.unpark_filter(A, lambda t: FilterOp.UNPARK, lambda res: 8)
    assert res_tuple(r) == (3, 0, False)
    assert [t.outcome().token for t in ts] == [8, 8, 8]


def test_filter_with_nobody_parked_still_calls_callback(lot):
    seen, calls = [], []
    r = lot.unpark_filter(A, lambda t: calls.append(t) or FilterOp.UNPARK,
                          lambda res: seen.append(res_tuple(res)))
    assert calls == [] and seen == [(0, 0, False)] and res_tuple(r) == (0, 0, False)


@pytest.mark.parametrize("where", ["filter", "callback"])
def test_raising_filter_or_callback_unparks_nobody(qlot, where):
    ts = park_in_order(qlot, A, 3)
    before = parked(qlot)

    def filt(token):
        if where == "filter" and token == 1:
            raise Boom()
        return FilterOp.UNPARK

    def callback(res):
        if where == "callback":
            raise Boom()

    with pytest.raises(Boom):
        qlot.unpark_filter(A, filt, callback)
    assert parked(qlot) == before and all(t.is_alive() for t in ts)
    assert qlot.unpark_all(A) == 3
    for t in ts:  # before the lot goes: a woken thread may still be on its way out of park
        assert t.outcome().is_unparked


@pytest.mark.parametrize("bad", [0, 1, None, "UNPARK", RequeueOp.ABORT])
def test_filter_must_return_a_filterop(lot, bad):
    t = ParkerThread(lot, A).start()
    wait_parked(lot, A, 1)
    with pytest.raises(TypeError):
        lot.unpark_filter(A, lambda tok: bad)
    assert t.is_alive() and len(parked(lot, A)) == 1
    with pytest.raises(TypeError):
        lot.unpark_filter(A, "not callable")
    assert lot.unpark_all(A) == 1
    t.outcome()


# ---- unpark_requeue --------------------------------------------------------------------------

# op: (unparked, requeued, have_more) with 4 threads parked on key_from
REQUEUE_CASES = {
    RequeueOp.UNPARK_ONE_REQUEUE_REST: ((1, 3, False), [0], [1, 2, 3]),
    RequeueOp.REQUEUE_ALL: ((0, 4, False), [], [0, 1, 2, 3]),
    RequeueOp.UNPARK_ONE: ((1, 0, True), [0], []),
    RequeueOp.REQUEUE_ONE: ((0, 1, True), [], [0]),
}


@pytest.mark.parametrize("op", list(REQUEUE_CASES), ids=lambda op: op.name)
def test_requeue_ops(qlot, op):
    expect, unparked_idx, moved_idx = REQUEUE_CASES[op]
    on_b = ParkerThread(qlot, B, park_token=100).start()
    wait_parked(qlot, B, 1)
    ts = park_in_order(qlot, A, 4)  # park tokens 0..3
    bystander = ParkerThread(qlot, C, park_token=200).start()
    wait_parked(qlot, C, 1)
    calls = []

    def callback(op_seen, res):
        calls.append((op_seen, res_tuple(res)))
        return 55

    r = qlot.unpark_requeue(A, B, lambda: op, callback)
    assert res_tuple(r) == expect
    assert calls == [(op, expect)]
    assert isinstance(calls[0][0], RequeueOp)
    for i in unparked_idx:
        assert ts[i].outcome().token == 55
    # moved threads go to the tail of B's queue, in their order
    assert [p.park_token for p in parked(qlot, B)] == [100] + moved_idx
    left_on_a = [i for i in range(4) if i not in unparked_idx and i not in moved_idx]
    assert [p.park_token for p in parked(qlot, A)] == left_on_a
    assert [p.park_token for p in parked(qlot, C)] == [200]
    # and they are woken from there, FIFO
    for expected in [100] + moved_idx:
        qlot.unpark_one(B, lambda res, e=expected: e + 1000)
        t = on_b if expected == 100 else ts[expected]
        assert t.outcome().token == expected + 1000
    assert qlot.unpark_all(A) == len(left_on_a)
    assert qlot.unpark_all(C) == 1
    for t in ts:
        t.outcome()
    bystander.outcome()
    assert qlot.info()["counters"]["requeues"] == len(moved_idx)


@pytest.mark.parametrize("op", [RequeueOp.UNPARK_ONE, RequeueOp.REQUEUE_ONE],
                         ids=lambda op: op.name)
def test_requeue_one_of_one_has_no_more(qlot, op):
    t = ParkerThread(qlot, A).start()
    wait_parked(qlot, A, 1)
    r = qlot.unpark_requeue(A, B, lambda: op)
    if op == RequeueOp.UNPARK_ONE:
        assert res_tuple(r) == (1, 0, False)
        t.outcome()
    else:
        assert res_tuple(r) == (0, 1, False)
        assert qlot.unpark_one(B).unparked_threads == 1
        t.outcome()


def test_requeue_abort_moves_nothing_and_skips_callback(qlot):
    ts = park_in_order(qlot, A, 2)
    calls = []
    r = qlot.unpark_requeue(A, B, lambda: calls.append("v") or RequeueOp.ABORT,
                            lambda op, res: calls.append("cb"))
    assert calls == ["v"] and res_tuple(r) == (0, 0, False)
    assert [p.park_token for p in parked(qlot, A)] == [0, 1]
    assert qlot.unpark_all(A) == 2
    for t in ts:
        t.outcome()


@pytest.mark.parametrize("op", [o for o in RequeueOp if o != RequeueOp.ABORT],
                         ids=lambda op: op.name)
def test_requeue_with_nobody_parked_calls_callback(lot, op):
    calls = []
    r = lot.unpark_requeue(A, B, lambda: op, lambda o, res: calls.append((o, res_tuple(res))))
    assert calls == [(op, (0, 0, False))] and res_tuple(r) == (0, 0, False)


@pytest.mark.parametrize("where", ["validate", "callback"])
def test_raising_requeue_moves_nothing(qlot, where):
    ts = park_in_order(qlot, A, 3)
    before = parked(qlot)

    def validate():
        if where == "validate":
            raise Boom()
        return RequeueOp.UNPARK_ONE_REQUEUE_REST

    def callback(op, res):
        raise Boom()

    with pytest.raises(Boom):
        qlot.unpark_requeue(A, B, validate, callback)
    assert parked(qlot) == before and all(t.is_alive() for t in ts)
    assert qlot.unpark_all(A) == 3
    for t in ts:  # before the lot goes: a woken thread may still be on its way out of park
        assert t.outcome().is_unparked


@pytest.mark.parametrize("bad", [0, 2, None, FilterOp.UNPARK, "REQUEUE_ALL"])
def test_requeue_validate_must_return_a_requeueop(lot, bad):
    t = ParkerThread(lot, A).start()
    wait_parked(lot, A, 1)
    with pytest.raises(TypeError):
        lot.unpark_requeue(A, B, lambda: bad)
    with pytest.raises(TypeError):
        lot.unpark_requeue(A, B, None)
    assert len(parked(lot, A)) == 1
    assert lot.unpark_all(A) == 1
    t.outcome()


# ---- timed_out ------------------------------------------------------------------------------

def test_timed_out_was_last_thread(qlot):
    calls = []
    stay = ParkerThread(qlot, A).start()
    wait_parked(qlot, A, 1)
    other_key = ParkerThread(qlot, B).start()
    wait_parked(qlot, B, 1)
    # another thread is still parked on A: not the last
    r = qlot.park(A, timed_out=lambda k, last: calls.append((k, last)), timeout=0.05)
    assert r.is_timed_out and calls == [(A, False)]
    assert qlot.unpark_one(A).unparked_threads == 1
    stay.outcome()
    # now alone on A (B's thread, same bucket or not, does not count)
    r = qlot.park(A, timed_out=lambda k, last: calls.append((k, last)), timeout=0.05)
    assert r.is_timed_out and calls[1] == (A, True)
    assert qlot.unpark_all(B) == 1
    other_key.outcome()


@pytest.mark.parametrize("company", [False, True], ids=["alone", "with-company"])
def test_timed_out_after_requeue_gets_new_key(qlot, company):
    calls = []
    if company:
        on_b = ParkerThread(qlot, B).start()
        wait_parked(qlot, B, 1)
    t = ParkerThread(qlot, A, timed_out=lambda k, last: calls.append((k, last)),
                     timeout=1.5).start()
    wait_parked(qlot, A, 1)
    r = qlot.unpark_requeue(A, B, lambda: RequeueOp.REQUEUE_ALL)
    assert res_tuple(r) == (0, 1, False), "the requeue came after the parker's timeout"
    assert t.outcome(10).is_timed_out
    assert calls == [(B, not company)]
    if company:
        assert qlot.unpark_all(B) == 1
        on_b.outcome()
    assert parked(qlot) == []


@pytest.mark.parametrize("exc_type", [Boom, HardBoom])
def test_raising_timed_out(lot, exc_type):
    def timed_out(key, last):
        raise exc_type()

    with pytest.raises(exc_type):
        lot.park(A, timed_out=timed_out, timeout=0.01)
    assert parked(lot) == [] and lot.info()["slots_free"] == lot.slots


def test_unpark_wins_race_against_timeout(lot):
    """The parker's timeout expires while an unparker holds the bucket lock (its callback is
    slow): the parker then finds itself unparked, returns *unparked* with the token, and
    timed_out is not called."""
    calls = []
    timeout = 0.1
    t0 = time.monotonic()
    t = ParkerThread(lot, A, timed_out=lambda k, last: calls.append(k), timeout=timeout).start()
    wait_parked(lot, A, 1)
    timeouts_before = lot.info()["counters"]["timeouts"]

    def slow_callback(res):
        # hold the bucket lock until well past the parker's deadline, so that it is waiting for
        # this lock to dequeue itself when we unpark it
        while time.monotonic() < t0 + timeout + 0.3:
            time.sleep(0.01)
        return 77

    r = lot.unpark_one(A, slow_callback)
    assert r.unparked_threads == 1
    out = t.outcome()
    assert out.is_unparked and out.token == 77
    assert calls == []
    assert lot.info()["counters"]["timeouts"] == timeouts_before
    assert lot.info()["slots_free"] == lot.slots


# ---- reentrancy: lot operations from callbacks ------------------------------------------------

def _inner_ops(lot, other):
    """Every lot operation, on this lot and on another one."""
    ops = {}
    for tag, target in (("same", lot), ("other", other)):
        ops.update({
            f"{tag}.park": lambda t=target: t.park(C, timeout=0),
            f"{tag}.unpark_one": lambda t=target: t.unpark_one(C),
            f"{tag}.unpark_all": lambda t=target: t.unpark_all(C),
            f"{tag}.unpark_filter": lambda t=target: t.unpark_filter(C, lambda k: FilterOp.UNPARK),
            f"{tag}.unpark_requeue": lambda t=target: t.unpark_requeue(
                C, A, lambda: RequeueOp.REQUEUE_ALL),
            f"{tag}.reap": lambda t=target: t.reap(),
        })
    return ops


SITES = ["park.validate", "park.timed_out", "unpark_one.callback", "unpark_filter.filter",
         "unpark_filter.callback", "unpark_requeue.validate", "unpark_requeue.callback"]


@pytest.mark.parametrize("site", SITES)
def test_lot_operation_from_callback_raises_runtime_error(lot, make_lot, site):
    other = make_lot()
    ops = _inner_ops(lot, other)
    errors = {}

    def try_all():
        for name, op in ops.items():
            try:
                op()
            except RuntimeError as exc:
                errors[name] = exc
            else:
                errors[name] = None

    helper = None
    if site == "unpark_filter.filter":
        helper = ParkerThread(lot, A).start()
        wait_parked(lot, A, 1)

    if site == "park.validate":
        r = lot.park(A, validate=lambda: try_all() or False)
        assert r.is_invalid
    elif site == "park.timed_out":
        r = lot.park(A, timed_out=lambda k, last: try_all(), timeout=0)
        assert r.is_timed_out
    elif site == "unpark_one.callback":
        lot.unpark_one(A, lambda res: try_all())
    elif site == "unpark_filter.filter":
        r = lot.unpark_filter(A, lambda tok: try_all() or FilterOp.UNPARK)
        assert r.unparked_threads == 1
        helper.outcome()
    elif site == "unpark_filter.callback":
        lot.unpark_filter(A, lambda tok: FilterOp.UNPARK, lambda res: try_all())
    elif site == "unpark_requeue.validate":
        lot.unpark_requeue(A, B, lambda: try_all() or RequeueOp.ABORT)
    elif site == "unpark_requeue.callback":
        lot.unpark_requeue(A, B, lambda: RequeueOp.REQUEUE_ALL, lambda op, res: try_all())

    assert set(errors) == set(ops)
    not_refused = [name for name, exc in errors.items() if exc is None]
    assert not_refused == []
    for exc in errors.values():
        assert "callback" in str(exc)
    # nothing was disturbed: no stray parks, both lots still usable from this thread
    assert parked(lot) == [] and parked(other) == []
    assert lot.park(A, timeout=0).is_timed_out and other.park(A, timeout=0).is_timed_out


def test_uncaught_reentrant_call_propagates_and_unlocks(lot):
    t = ParkerThread(lot, A).start()
    wait_parked(lot, A, 1)
    with pytest.raises(RuntimeError):
        lot.unpark_one(A, lambda res: lot.unpark_one(A))
    assert t.is_alive() and len(parked(lot, A)) == 1
    assert lot.unpark_one(A).unparked_threads == 1  # bucket unlocked, thread still there
    t.outcome()


def test_module_level_call_from_callback_raises(lot, monkeypatch, lot_name):
    monkeypatch.setenv("SHMLOT_LOT", lot_name())
    try:
        with pytest.raises(RuntimeError):
            lot.unpark_one(A, lambda res: shmlot.unpark_one(A))
    finally:
        lots = shmlot.lot._default_lots
        for name in list(lots):
            if name.startswith("shmlot-test-"):
                lots[name].unlink()


def test_other_threads_may_use_the_lot_while_a_callback_runs(make_lot):
    """The refusal is per thread: while one thread's callback holds bucket X, another thread
    works on other buckets freely."""
    lot = make_lot(buckets=4096)
    inside = threading.Event()
    release = threading.Event()

    def callback(res):
        inside.set()
        release.wait(10)

    u = threading.Thread(target=lambda: lot.unpark_one(A, callback))
    u.start()
    assert inside.wait(10)
    try:
        key = next(k for k in range(1, 10000) if _bucket(lot, k) != _bucket(lot, A))
        assert lot.park(key, timeout=0).is_timed_out
        assert lot.unpark_all(key) == 0
    finally:
        release.set()
        u.join(10)


def _bucket(lot, key):
    """The bucket of ``key`` (lot.c sl_bucket_of: Fibonacci hashing, high 32 bits)."""
    return (((key * 0x9E3779B97F4A7C15) % 2**64) >> 32) % lot.buckets
