"""What every part of the benchmark uses: the two exceptions, the watchdog, logging, killing."""
import signal
import sys
import time

pc = time.perf_counter_ns
FLOOR = "floor (C futex)"


class Unavailable(Exception):
    """The subject cannot run here (not installed, not implemented yet): its row says n/a."""


class BenchTimeout(Exception):
    pass


def log(msg):
    print(msg, file=sys.stderr, flush=True)


class watchdog:
    """Raise BenchTimeout in the main thread if the block takes longer than `seconds`.

    Nestable: an inner watchdog runs on the same timer and gives the outer one back its
    remaining time on exit."""

    def __init__(self, seconds, message=None):
        self.seconds = seconds
        self.message = message or f"no result after {seconds:.0f} s (hung?)"

    def _fire(self, signum, frame):
        raise BenchTimeout(self.message)

    def __enter__(self):
        self.t0 = time.monotonic()
        self.outer_left, _ = signal.getitimer(signal.ITIMER_REAL)
        self.old = signal.signal(signal.SIGALRM, self._fire)
        signal.setitimer(signal.ITIMER_REAL, self.seconds)
        return self

    def __exit__(self, *exc):
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, self.old)
        if self.outer_left:
            left = self.outer_left - (time.monotonic() - self.t0)
            signal.setitimer(signal.ITIMER_REAL, max(left, 0.001))


def kill_procs(procs):
    for p in procs:
        if p.is_alive():
            p.kill()
    for p in procs:
        p.join(5)


def expect(conn, timeout, stuck=None):
    """The next message from a child on `conn`; a child's ("error", text) becomes RuntimeError."""
    if not conn.poll(timeout):
        raise BenchTimeout(stuck or f"child did not answer within {timeout} s")
    msg = conn.recv()
    if isinstance(msg, tuple) and msg and msg[0] == "error":
        raise RuntimeError("in child: " + msg[1])
    return msg


def wait_until(pred, timeout, what):
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise BenchTimeout(f"timed out waiting for {what}")
        time.sleep(0.001)
