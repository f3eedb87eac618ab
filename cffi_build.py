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

# The segment layout, for the tests and tools that write into a segment on purpose (the fuzzer,
# the corruption tests): ffi.offsetof("sl_header", "registry_lock"), ffi.sizeof("sl_ilock").
# "...;" stands for the fields not named here; cffi takes every offset and size from lot.h
# itself, so these cannot drift from the C.
LAYOUT_CDEF = """
typedef struct { uint64_t word; uint32_t wake; ...; } sl_ilock;
typedef struct {
    uint64_t magic; uint32_t version; uint32_t header_size; uint64_t total_size;
    uint32_t nbuckets, nslots, nobjects, nholds;
    uint32_t bucket_stride, slot_stride, object_stride, hold_stride;
    uint64_t buckets_off, slots_off, objects_off, holds_off;
    uint32_t waiter; uint64_t created_ns; uint64_t lot_id; uint64_t pidns; uint32_t creator_pid;
    uint64_t free_head; uint64_t counters[16]; sl_ilock registry_lock;
    ...;
} sl_header;
typedef struct { sl_ilock lock; uint32_t head, tail; uint32_t count; ...; } sl_bucket;
typedef struct {
    uint32_t wait; uint32_t state; uint64_t key; uint64_t park_token; uint64_t unpark_token;
    uint32_t next, prev; uint32_t bucket; uint32_t next_free; uint32_t pid, tid; uint64_t start;
    ...;
} sl_slot;
"""


def _cdef_part(header):
    with open(os.path.join(NATIVE, header)) as f:
        text = f.read()
    body = text.split("/* CDEF BEGIN */", 1)[1].split("/* CDEF END */", 1)[0]
    body = body.replace("SL_PYCB", 'extern "Python+C"')
    return re.sub(r"/\*.*?\*/", "", body, flags=re.S)


def _cdef_text():
    return "\n".join(_cdef_part(h) for h in HEADERS) + LAYOUT_CDEF


ffibuilder = FFI()
ffibuilder.cdef(_cdef_text())
ffibuilder.set_source(
    "shmlot._core",
    "".join(f'#include "{h}"\n' for h in HEADERS + ["lot.h"]),
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
