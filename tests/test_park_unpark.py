"""park / unpark_one / unpark_all between threads of one process, on both
waiter backends: results and tokens, FIFO order, exact have_more_threads, timeouts, LotFullError,
be_fair, and spurious wake-ups that must not end a park."""
import ctypes
import os
import signal
import threading
import time

import pytest

import shmlot
from shmlot import (DEFAULT_PARK_TOKEN, DEFAULT_UNPARK_TOKEN, FilterOp, LotFullError,
                    ParkResult, RequeueOp, UnparkResult)

from helpers.layout import slot_field
from helpers.waiting import ParkerThread, park_in_order, parked, wait_parked, wait_until

pytestmark = pytest.mark.timeout(60)

KEY = 0x5EED_0001


# ---- results --------------------------------------------------------------------------------

def test_result_types_and_constants():
    assert DEFAULT_PARK_TOKEN == 0 and DEFAULT_UNPARK_TOKEN == 0
    assert [m.name for m in FilterOp] == ["UNPARK", "SKIP", "STOP"]
    assert [m.name for m in RequeueOp] == ["ABORT", "UNPARK_ONE_REQUEUE_REST", "REQUEUE_ALL",
                                           "UNPARK_ONE", "REQUEUE_ONE"]
    r = UnparkResult()
    assert (r.unparked_threads, r.requeued_threads, r.have_more_threads, r.be_fair) == \
        (0, 0, False, False)


def test_park_unpark_one_with_token(lot):
    t = ParkerThread(lot, KEY).start()
    wait_parked(lot, KEY, 1)
    seen = []
    res = lot.unpark_one(KEY, lambda r: seen.append((r.unparked_threads, r.have_more_threads))
                         or 42)
    assert seen == [(1, False)]
    assert res.unparked_threads == 1 and res.requeued_threads == 0
    assert res.have_more_threads is False
    out = t.outcome()
    assert out.is_unparked and not out.is_invalid and not out.is_timed_out
    assert out.token == 42
    assert out == ParkResult(ParkResult._UNPARKED, 42)
    assert "Unparked" in repr(out)
    assert lot.info()["slots_free"] == lot.slots


def test_unpark_one_without_callback_gives_default_token(lot):
    t = ParkerThread(lot, KEY).start()
    wait_parked(lot, KEY, 1)
    assert lot.unpark_one(KEY).unparked_threads == 1
    assert t.outcome().token == DEFAULT_UNPARK_TOKEN


def test_unpark_one_nobody_parked(lot):
    res = lot.unpark_one(KEY)
    assert (res.unparked_threads, res.requeued_threads, res.have_more_threads, res.be_fair) == \
        (0, 0, False, False)
    assert lot.unpark_all(KEY) == 0


def test_unpark_one_is_fifo_and_have_more_is_exact(lot):
    threads = park_in_order(lot, KEY, 6)
    assert [p.park_token for p in parked(lot, KEY)] == list(range(6))
    for i, t in enumerate(threads):
        res = lot.unpark_one(KEY, lambda r, i=i: 100 + i)
        assert res.unparked_threads == 1
        assert res.have_more_threads is (i < 5)
        assert t.outcome().token == 100 + i  # the oldest one, and only it
        assert [p.park_token for p in parked(lot, KEY)] == list(range(i + 1, 6))
        assert all(u.is_alive() for u in threads[i + 1:])


def test_unpark_all_wakes_every_thread_with_token(lot):
    threads = park_in_order(lot, KEY, 10)
    assert lot.unpark_all(KEY, 77) == 10
    assert [t.outcome().token for t in threads] == [77] * 10
    assert parked(lot, KEY) == []
    assert lot.unpark_all(KEY) == 0
    assert lot.info()["slots_free"] == lot.slots


def test_other_keys_in_the_same_bucket_are_left_alone(make_lot):
    lot = make_lot(buckets=1)  # every key shares the one queue
    a, b = 1, 2
    ta1 = ParkerThread(lot, a, park_token=1).start()
    wait_parked(lot, a, 1)
    tb1 = ParkerThread(lot, b, park_token=2).start()
    wait_parked(lot, b, 1)
    ta2 = ParkerThread(lot, a, park_token=3).start()
    wait_parked(lot, a, 2)
    tb2 = ParkerThread(lot, b, park_token=4).start()
    wait_parked(lot, b, 2)
    assert [p.park_token for p in parked(lot)] == [1, 2, 3, 4]
    res = lot.unpark_one(a)
    assert res.unparked_threads == 1 and res.have_more_threads  # ta2 is still there
    ta1.outcome()
    res = lot.unpark_one(a)
    assert res.unparked_threads == 1 and not res.have_more_threads  # b's do not count
    ta2.outcome()
    assert [p.park_token for p in parked(lot)] == [2, 4]
    assert lot.unpark_all(a) == 0
    assert lot.unpark_all(b) == 2
    tb1.outcome(), tb2.outcome()


def test_extreme_keys_and_tokens(lot):
    for key in (0, 2**64 - 1):
        t = ParkerThread(lot, key, park_token=2**64 - 1).start()
        [p] = wait_parked(lot, key, 1)
        assert p.park_token == 2**64 - 1
        assert lot.unpark_all(key, 2**64 - 1) == 1
        assert t.outcome().token == 2**64 - 1


# ---- validate / before_sleep ordering ---------------------------------------------------------

def test_invalid_park_enqueues_nothing(lot):
    calls = []
    before = lot.info()["counters"]["invalid_parks"]
    r = lot.park(KEY, validate=lambda: calls.append("v") or False,
                 before_sleep=lambda: calls.append("b"),
                 timed_out=lambda k, last: calls.append("t"))
    assert r.is_invalid and not r.is_unparked and not r.is_timed_out and r.token is None
    assert calls == ["v"]
    assert parked(lot) == [] and lot.info()["slots_free"] == lot.slots
    assert lot.info()["counters"]["invalid_parks"] == before + 1


def test_before_sleep_runs_after_enqueue_and_unlocked(lot):
    """before_sleep runs with the thread queued and the bucket unlocked: it may unpark (that is
    how a condition variable releases its mutex) -- here it unparks the parking thread itself."""
    seen = []

    def before_sleep():
        seen.append(len(parked(lot, KEY)))
        seen.append(lot.unpark_one(KEY, lambda r: 5).unparked_threads)

    r = lot.park(KEY, before_sleep=before_sleep)
    assert seen == [1, 1]
    assert r.is_unparked and r.token == 5


# ---- timeouts ---------------------------------------------------------------------------------

def test_park_times_out(lot):
    calls = []
    before = lot.info()["counters"]["timeouts"]
    t0 = time.monotonic()
    r = lot.park(KEY, timed_out=lambda k, last: calls.append((k, last)), timeout=0.1)
    elapsed = time.monotonic() - t0
    assert r.is_timed_out and r.token is None and "TimedOut" in repr(r)
    assert elapsed >= 0.1
    assert elapsed < 5
    assert calls == [(KEY, True)]
    assert parked(lot) == [] and lot.info()["slots_free"] == lot.slots
    assert lot.info()["counters"]["timeouts"] == before + 1


def test_zero_timeout_parks_and_times_out_at_once(lot):
    calls = []
    r = lot.park(KEY, validate=lambda: calls.append("v") or True,
                 before_sleep=lambda: calls.append("b"),
                 timed_out=lambda k, last: calls.append("t"), timeout=0)
    assert r.is_timed_out
    assert calls == ["v", "b", "t"]
    assert lot.info()["slots_free"] == lot.slots


def test_unpark_before_timeout(lot):
    t = ParkerThread(lot, KEY, timeout=30).start()
    wait_parked(lot, KEY, 1)
    lot.unpark_one(KEY, lambda r: 9)
    r = t.outcome()
    assert r.is_unparked and r.token == 9


def test_park_never_returns_early_with_a_timeout(lot):
    for timeout in (0.02, 0.2):
        t0 = time.monotonic()
        assert lot.park(KEY, timeout=timeout).is_timed_out
        assert time.monotonic() - t0 >= timeout


# ---- LotFullError --------------------------------------------------------------------------

def test_park_raises_lot_full(make_lot):
    lot = make_lot(slots=2)
    threads = [ParkerThread(lot, KEY + i).start() for i in range(2)]
    wait_until(lambda: lot.info()["slots_free"] == 0, message="both slots in use")
    with pytest.raises(LotFullError) as info:
        lot.park(KEY + 5, timeout=1)
    assert isinstance(info.value, RuntimeError)
    assert "slot" in str(info.value)
    assert lot.unpark_one(KEY).unparked_threads == 1
    threads[0].outcome()
    assert lot.park(KEY + 5, timeout=0.01).is_timed_out  # a slot is free again
    assert lot.unpark_all(KEY + 1) == 1
    threads[1].outcome()


# ---- be_fair -------------------------------------------------------------------------------

def test_be_fair_sometimes_but_not_always(lot):
    """parking_lot's FairTimeout: be_fair is true about once every 0.5 ms per bucket, at random;
    over a few thousand unparks spread over well over 1 ms, some are fair and most are not."""
    stop_token = 1

    def loop():
        while lot.park(KEY).token != stop_token:
            pass

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    fair = []
    t0 = time.monotonic()
    while len(fair) < 3000 or time.monotonic() - t0 < 0.02:
        while True:
            res = lot.unpark_one(KEY, lambda r: 0)
            if res.unparked_threads:
                break
            assert time.monotonic() - t0 < 60, "parker never came back"
        fair.append(res.be_fair)
    elapsed = time.monotonic() - t0
    wait_parked(lot, KEY, 1)
    lot.unpark_one(KEY, lambda r: stop_token)
    t.join(10)
    assert not t.is_alive()
    n = sum(fair)
    assert 0 < n < len(fair), (n, len(fair), elapsed)
    # about one per 0.5 ms of elapsed time (generously bounded: the machine is noisy)
    assert n <= elapsed / 0.0005 * 3 + 10, (n, elapsed)


# ---- spurious wake-ups ------------------------------------------------------------------------

def _spurious_futex_wake(lot, slot_index):
    """FUTEX_WAKE the slot's wait word."""
    base = ctypes.addressof(ctypes.c_char.from_buffer(lot._buffer))
    addr = base + slot_field(lot, slot_index, "wait")[0]
    sys_futex = {"x86_64": 202, "aarch64": 98}.get(os.uname().machine)
    if sys_futex is None:
        pytest.skip("futex syscall number unknown on this machine")
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc.syscall(ctypes.c_long(sys_futex), ctypes.c_void_p(addr), ctypes.c_int(1),
                        ctypes.c_int(2**31 - 1), None, None, ctypes.c_int(0))


def test_spurious_wakeups_are_absorbed(lot):
    got = []
    old = signal.signal(signal.SIGUSR1, lambda *a: got.append(1))
    try:
        t = ParkerThread(lot, KEY).start()
        [p] = wait_parked(lot, KEY, 1)
        futex_woken = 0
        for i in range(20):
            # a signal interrupts the sleep of that very thread (EINTR) ...
            signal.pthread_kill(t.ident, signal.SIGUSR1)
            wait_until(lambda: len(got) == i + 1, message="the signal handler ran")
            # ... and a stray wake-up on its wait word / a stale semaphore post
            if lot.waiter == "futex":
                futex_woken += _spurious_futex_wake(lot, p.index)
            else:
                import posix_ipc
                from shmlot._engine import sem_name
                sem = posix_ipc.Semaphore(sem_name(lot._lot_id, p.index))
                sem.release()
                sem.close()
        if lot.waiter == "futex":
            assert futex_woken > 0  # the stray FUTEX_WAKEs did reach the sleeping thread
        t.join(0.3)  # give a wrongly returning park the chance to show itself
        assert t.is_alive() and parked(lot, KEY) == [p]
        lot.unpark_one(KEY, lambda r: 3)
        assert t.outcome().token == 3
    finally:
        signal.signal(signal.SIGUSR1, old)


# ---- many threads ---------------------------------------------------------------------------

@pytest.mark.timeout(120)
def test_many_threads_many_keys_each_woken_once(make_lot):
    lot = make_lot(buckets=16, slots=256)
    nkeys, per_key = 20, 10
    threads = {k: [ParkerThread(lot, 1000 + k, park_token=i).start() for i in range(per_key)]
               for k in range(nkeys)}
    wait_until(lambda: len(parked(lot)) == nkeys * per_key, message="all parked")
    for k in range(nkeys):
        if k % 2:
            assert lot.unpark_all(1000 + k, k) == per_key
        else:
            for i in range(per_key):
                assert lot.unpark_one(1000 + k, lambda r, k=k: k).unparked_threads == 1
    for k, ts in threads.items():
        assert [t.outcome().token for t in ts] == [k] * per_key
    assert lot.unpark_all(1000) == 0
    assert lot.info()["slots_free"] == lot.slots
    c = lot.info()["counters"]
    assert c["parks"] == nkeys * per_key and c["unparks"] == nkeys * per_key


def test_module_level_functions_match_methods():
    for name in ("park", "unpark_one", "unpark_all", "unpark_filter", "unpark_requeue"):
        assert callable(getattr(shmlot, name))
