"""cffi build of shmlot._core (out-of-line API mode) from the C sources in shmlot/_native/.

The cdef is the part of each header in HEADERS between "CDEF BEGIN" and "CDEF END", so the C
prototypes and what Python sees cannot drift apart. Callbacks into Python are `extern "Python+C"`: they are called
from park.c, a separate C file of the same module.
"""
import os
import re

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
NATIVE = os.path.join(HERE, "shmlot", "_native")
SOURCES = ["lot.c", "ilock.c", "alive.c", "park.c", "registry.c", "wordlock.c", "semwait.c",
           "rwstep.c", "waitv.c"]
HEADERS = ["api.h", "waitv.h"]  # each one's part between CDEF BEGIN and CDEF END, in this order


def _cdef_part(header):
    with open(os.path.join(NATIVE, header)) as f:
        text = f.read()
    body = text.split("/* CDEF BEGIN */", 1)[1].split("/* CDEF END */", 1)[0]
    body = body.replace("SL_PYCB", 'extern "Python+C"')
    return re.sub(r"/\*.*?\*/", "", body, flags=re.S)


def _cdef_text():
    return "\n".join(_cdef_part(h) for h in HEADERS)


ffibuilder = FFI()
ffibuilder.cdef(_cdef_text())
ffibuilder.set_source(
    "shmlot._core",
    "".join(f'#include "{h}"\n' for h in HEADERS),
    sources=[os.path.relpath(os.path.join(NATIVE, s)) for s in SOURCES],
    include_dirs=[NATIVE],
    define_macros=[("SL_PYCB", "")],
    extra_compile_args=["-O2", "-Wall", "-Wextra", "-std=gnu11", "-fno-strict-aliasing"],
    libraries=["rt", "pthread"],
)

if __name__ == "__main__":
    # In-place build for development: writes shmlot/_core.c and shmlot/_core*.so.
    os.chdir(HERE)
    ffibuilder.compile(tmpdir=".", verbose=False)
