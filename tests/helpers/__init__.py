"""Helpers of the shmlot test suite, one module per job.

``lots``       unique names, the backends, removing what a test left in /dev/shm, a fresh lot made
               the default lot of this process and of its children.
``processes``  child interpreters (``python -c``), multiprocessing children, joining them.
``kills``      SIGKILL a child and reap it; kill whatever is still running at the end of a test.
``segments``   plain shared-memory segments with int64 atomics, and SharedMemory blocks.
``waiting``    waiting for an observable condition; the threads queued in a lot; parker threads.
``workers``    targets of multiprocessing children (module level, so spawn children import them).
``aio``        the asyncio tests' waiting modes and loop helpers.

pytest puts ``tests/`` first on ``sys.path`` (``conftest.py`` sits there, with no
``__init__.py``), so tests import ``from helpers.x import ...``; child interpreters get ``tests/``
on ``PYTHONPATH`` from :func:`helpers.processes.python_env`. The fixtures live in
``conftest.py``.
"""
import os
import sys

TESTS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO_ROOT = os.path.dirname(TESTS_DIR)
SHM_DIR = "/dev/shm"

# shmlot is imported from this checkout, also when pytest runs from elsewhere
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)
