"""SIGKILL a child and reap it, for a ``subprocess.Popen`` and a ``multiprocessing`` Process
alike."""
import os
import signal
import subprocess
import time


def _reap(proc, timeout):
    """Wait up to ``timeout`` s for ``proc`` to end; its exit status (negative: the signal), or
    None if it still runs."""
    if isinstance(proc, subprocess.Popen):
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
    proc.join(timeout)
    return proc.exitcode


def kill_and_reap(proc, timeout=10):
    """SIGKILL ``proc`` (running), reap it (no zombie left), check that the SIGKILL ended it, and
    return the moment of the kill (``time.monotonic()``), from which a test measures recovery."""
    os.kill(proc.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    status = _reap(proc, timeout)
    assert status is not None, f"pid {proc.pid} still running {timeout} s after SIGKILL"
    assert status == -signal.SIGKILL, f"pid {proc.pid} ended with {status}, not by SIGKILL"
    return killed_at


def kill_all(*procs, timeout=10):
    """SIGKILL every one of ``procs`` still running (None entries are skipped), then reap them
    all; for ``finally`` blocks, so that a failing test leaves no child behind. A Popen's pipes
    are drained and closed."""
    for p in procs:
        if p is None:
            continue
        running = p.poll() is None if isinstance(p, subprocess.Popen) else p.is_alive()
        if running:
            p.kill()
    for p in procs:
        if p is None:
            continue
        if isinstance(p, subprocess.Popen):
            try:
                p.communicate(timeout=timeout)
            except (subprocess.TimeoutExpired, ValueError, OSError):
                pass
        else:
            p.join(timeout)
