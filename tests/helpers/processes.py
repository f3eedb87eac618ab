"""Child processes: ``python -c`` interpreters and multiprocessing children, with timeouts."""
import os
import subprocess
import sys
import textwrap

import multiprocessing
import pytest

from helpers import REPO_ROOT, TESTS_DIR
from helpers.kills import kill_all
from helpers.lots import default_lot_vars


def python_env(extra=None):
    """Environment for a child interpreter that imports shmlot from this checkout (and the
    helpers, with ``tests/`` on its path); ``extra`` variables are added as strings."""
    env = dict(os.environ)
    parts = [REPO_ROOT, TESTS_DIR]
    if env.get("PYTHONPATH"):
        parts.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(parts)
    env.pop("PYTHONSTARTUP", None)
    if extra:
        env.update({k: str(v) for k, v in extra.items()})
    return env


def child_env(lot, extra=None):
    """:func:`python_env` for a child whose default lot is ``lot``."""
    env = default_lot_vars(lot)
    if extra:
        env.update(extra)
    return python_env(env)


# Source to splice into a ``python -c`` child that Ctrl-C tests interrupt: SIGINT raises
# KeyboardInterrupt (as Python's default handler does) only while ``armed[0]`` is true, and once
# per arming, so it strikes anywhere in the guarded code and never twice in one clean-up (a
# second one landing in the first one's clean-up is beyond what Python code can guard against).
# Spliced rather than imported: the children stay free of the tests' helpers.
ARMED_SIGINT = """
import signal
armed = [False]
def on_sigint(signum, frame):
    if armed[0]:
        armed[0] = False
        raise KeyboardInterrupt
signal.signal(signal.SIGINT, on_sigint)
"""


_started = []


def start_python(code, *args, env=None, **popen_kwargs):
    """Start ``python -c code args...`` with the repo on PYTHONPATH; pipes for stdin, stdout and
    stderr (text). The process is killed after the test if it is still running
    (:func:`kill_started`, from an autouse fixture)."""
    popen_kwargs.setdefault("stdin", subprocess.PIPE)
    popen_kwargs.setdefault("stdout", subprocess.PIPE)
    popen_kwargs.setdefault("stderr", subprocess.PIPE)
    popen_kwargs.setdefault("text", True)
    popen_kwargs.setdefault("cwd", REPO_ROOT)
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
                            env=python_env(env), **popen_kwargs)
    _started.append(proc)
    return proc


def kill_started():
    """Kill and reap every child :func:`start_python` started that still runs."""
    procs = list(reversed(_started))
    _started.clear()
    kill_all(*procs)


def run_python(code, *args, env=None, timeout=60, check=True, input=None, **popen_kwargs):
    """Run ``python -c code args...`` to completion (killed after ``timeout`` s, failing the
    test). Returns the CompletedProcess; with ``check`` a nonzero exit fails the test showing the
    child's output."""
    proc = start_python(code, *args, env=env, **popen_kwargs)
    try:
        out, err = proc.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"child timed out after {timeout} s\nstdout:\n{out}\nstderr:\n{err}")
    result = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    if check and proc.returncode != 0:
        pytest.fail(f"child exited with {proc.returncode}\nstdout:\n{out}\nstderr:\n{err}")
    return result


def run_procs(ctx, target, args_list, timeout=50):
    """Run ``target(*args)`` in one process of ``ctx`` (a multiprocessing context or a start
    method's name) per ``args`` tuple; fail on a process still running after ``timeout`` s (it is
    killed) or one that exited nonzero. Returns the processes."""
    if isinstance(ctx, str):
        ctx = multiprocessing.get_context(ctx)
    procs = [ctx.Process(target=target, args=args) for args in args_list]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join(timeout)
            assert not p.is_alive(), f"{p} still running after {timeout} s"
        assert [p.exitcode for p in procs] == [0] * len(procs)
    finally:
        kill_all(*procs)
    return procs


def join_all(threads=(), procs=(), timeout=20):
    """Join ``threads`` and then ``procs``, failing on one still running after ``timeout`` seconds
    or a process that exited nonzero."""
    for t in threads:
        t.join(timeout)
        assert not t.is_alive(), f"{t} still running after {timeout} s"
    for p in procs:
        p.join(timeout)
        assert p.exitcode == 0, f"{p} exited with {p.exitcode}"
