"""Event.wait returns True only for a set() made during (or before) that wait.

Regression: set() used to wake waiters with a "was set" token; in a two-process ping-pong, a
waiter that had already seen the flag by spinning, cleared it and waited again was released by
that late wake-up, with no set() for its new wait (the bench found the two sides out of step).
"""
import multiprocessing as mp

import pytest

import shmlot

from helpers.kills import kill_all
from helpers.lots import new_lot_name

ROUNDS = 20000


def _pong(lot_name, ping, pong, rounds, bad):
    for _ in range(rounds):
        assert ping.wait(30)
        if not ping.is_set():  # nobody but us clears ping: True must mean it is set
            bad.value += 1
        ping.clear()
        pong.set()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("waiter", ["futex", "semaphore"])
def test_ping_pong_never_released_without_a_set(waiter):
    name = new_lot_name()
    lot = shmlot.ParkingLot.create(name, waiter=waiter)
    ctx = mp.get_context("fork")
    try:
        ping, pong = shmlot.Event(lot=lot), shmlot.Event(lot=lot)
        bad = ctx.RawValue("q", 0)
        child = ctx.Process(target=_pong, args=(name, ping, pong, ROUNDS, bad))
        child.start()
        try:
            for _ in range(ROUNDS):
                ping.set()
                assert pong.wait(30)
                if not pong.is_set():
                    bad.value += 1
                pong.clear()
            child.join(60)
            assert child.exitcode == 0
        finally:
            kill_all(child)
        assert bad.value == 0
    finally:
        lot.unlink()


def test_set_then_clear_still_releases_the_waiter():
    """threading's guarantee: a waiter released by set() returns True even if clear() came
    before it ran."""
    import threading
    name = new_lot_name()
    lot = shmlot.ParkingLot.create(name)
    try:
        ev = shmlot.Event(lot=lot)
        results = []
        t = threading.Thread(target=lambda: results.append(ev.wait(10)))
        t.start()
        deadline = 10
        import time
        end = time.monotonic() + deadline
        while lot.info()["slots_free"] == lot.slots and time.monotonic() < end:
            time.sleep(0.001)
        ev.set()
        ev.clear()
        t.join(10)
        assert results == [True]
    finally:
        lot.unlink()
