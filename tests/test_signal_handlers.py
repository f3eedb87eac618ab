"""A Python signal handler's own exception (not only KeyboardInterrupt) reaches a thread blocked
in the lot, on both backends. posix_ipc's acquire() would replace it with its SignalError; the
semaphore backend therefore waits in the core (regression: pytest-timeout's SIGALRM was lost and
a blocked test hung forever)."""
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = textwrap.dedent("""
    import os, signal, sys, time, uuid
    import shmlot

    class Alarm(BaseException):
        pass

    def handler(signum, frame):
        raise Alarm()

    signal.signal(signal.SIGALRM, handler)
    lot = shmlot.ParkingLot.create(f"shmlot-test-{os.getpid()}-{uuid.uuid4().hex[:8]}",
                                   waiter=sys.argv[1])
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
def test_handler_exception_reaches_blocked_main_thread(waiter):
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-c", CHILD, waiter], capture_output=True, text=True,
                          timeout=45, env=env)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.split("\n")
    for what in ("park", "semaphore", "event"):
        line = next(x for x in lines if x.startswith(what + " "))
        assert line.startswith(f"{what} alarm after"), line
        assert float(line.rsplit(" ", 1)[1]) < 1.0, line
