"""Build glue: setuptools cannot express cffi_modules or the C-API extension in pyproject alone.

Two native modules are built from the C sources in shmlot/_native/:
- shmlot._core  (cffi, out-of-line API mode; see cffi_build.py): the table, park/unpark, waiters.
  Every call through it releases the GIL, which is right for everything that may block.
- shmlot._fast  (plain CPython C-API, shmlot/_native/fast/): atomics and the uncontended lock
  paths, which must keep the GIL (a GIL hand-off per call costs 10-30 us when a second thread is
  busy).
"""
import glob

from setuptools import Extension, setup

CFLAGS = ["-O2", "-Wall", "-Wextra", "-std=gnu11", "-fno-strict-aliasing"]

setup(
    cffi_modules=["cffi_build.py:ffibuilder"],
    ext_modules=[
        Extension(
            "shmlot._fast",
            sources=sorted(glob.glob("shmlot/_native/fast/*.c")),
            include_dirs=["shmlot/_native", "shmlot/_native/fast"],
            extra_compile_args=CFLAGS,
        )
    ],
)
