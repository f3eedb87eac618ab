"""A Python signal handler's own exception (not only KeyboardInterrupt) reaches a thread blocked
in the lot, on both backends. posix_ipc's acquire() would replace it with its SignalError; the
semaphore backend therefore waits in the core (regression: pytest-timeout's SIGALRM was lost and
a blocked test hung forever)."""
import textwrap

import pytest

from helpers.processes import run_python

CHILD = textwrap.dedent("""
    import signal, sys, time
    import shmlot

    class Alarm(BaseException):
        pass

    def handler(signum, frame):
        raise Alarm()

    signal.signal(signal.SIGALRM, handler)
    lot = shmlot.ParkingLot.create(sys.argv[2], waiter=sys.argv[1])
    try:
        blockers = {
            "park": lambda: lot.park(1),
            "semaphore": lambda: shmlot.Semaphore(0, lot=lot).acquire(),
            "event": lambda: shmlot.Event(lot=lot).wait(),
        }
        for what, block in blockers.items():
            signal.setitimer(signal.ITIMER_REAL, 0.3)
            t0 = time.monotonic()
            try:
                block()
                print(what, "returned")
            except Alarm:
                print(what, "alarm after %.2f" % (time.monotonic() - t0))
            assert lot.info()["slots_free"] == lot.slots, what
    finally:
        lot.unlink()
""")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("waiter", ["futex", "semaphore"])
def test_handler_exception_reaches_blocked_main_thread(waiter, lot_name):
    proc = run_python(CHILD, waiter, lot_name(), timeout=45, check=False)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.split("\n")
    for what in ("park", "semaphore", "event"):
        line = next(x for x in lines if x.startswith(what + " "))
        assert line.startswith(f"{what} alarm after"), line
        assert float(line.rsplit(" ", 1)[1]) < 1.0, line
