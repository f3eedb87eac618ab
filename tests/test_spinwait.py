"""SpinWait: parking_lot_core's back-off counter, step by step."""
import threading
import time

import pytest

from shmlot.spinwait import SpinWait


def test_spin_counts_to_ten_then_says_park():
    s = SpinWait()
    assert s.counter == 0
    for i in range(1, 11):
        assert s.spin() is True
        assert s.counter == i
    for _ in range(3):
        assert s.spin() is False  # time to park; the counter stays where it is
        assert s.counter == 10


def test_reset_starts_over():
    s = SpinWait()
    for _ in range(10):
        s.spin()
    assert s.reset() is None and s.counter == 0
    assert s.spin() is True and s.counter == 1


def test_spin_no_yield_is_capped_and_never_stops():
    s = SpinWait()
    for i in range(1, 15):
        assert s.spin_no_yield() is None
        assert s.counter == min(i, 10)
    assert s.spin() is False  # a capped counter also ends spin()
    s.reset()
    s.spin_no_yield()
    assert s.spin() is True and s.counter == 2


def test_counter_is_read_only_and_per_instance():
    a, b = SpinWait(), SpinWait()
    a.spin()
    assert (a.counter, b.counter) == (1, 0)
    with pytest.raises(AttributeError):
        a.counter = 5
    with pytest.raises(TypeError):
        SpinWait(3)
    assert repr(a) == "SpinWait(counter=1)"


def test_subclassable():
    class Counting(SpinWait):
        def __init__(self):
            super().__init__()
            self.spins = 0

        def spin(self):
            self.spins += 1
            return super().spin()

    s = Counting()
    while s.spin():
        pass
    assert s.spins == 11 and s.counter == 10
    assert repr(s) == "Counting(counter=10)"


def test_a_full_back_off_is_short():
    """Ten spins are a few pauses and seven sched_yields: well under a millisecond on an idle
    machine; the bound here only catches a runaway loop (noisy CI machines)."""
    s = SpinWait()
    t0 = time.perf_counter()
    while s.spin():
        pass
    for _ in range(10):
        s.spin_no_yield()  # 1024 pauses each at the cap
    assert time.perf_counter() - t0 < 0.5


def test_spin_until_another_thread_sets_a_flag():
    flag = []
    t = threading.Thread(target=lambda: (time.sleep(0.01), flag.append(1)))
    t.start()
    s = SpinWait()
    parks = 0
    deadline = time.monotonic() + 10
    while not flag and time.monotonic() < deadline:
        if not s.spin():
            parks += 1
            time.sleep(0.001)  # "park": lets the other thread run
            s.reset()
    t.join()
    assert flag and parks >= 1
