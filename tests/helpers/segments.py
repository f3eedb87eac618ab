"""Shared-memory segments for tests: :class:`Segment` (int64 atomics at byte offsets, no resource
tracker) and ``multiprocessing.shared_memory`` blocks attached without the tracker."""
import ctypes
import ctypes.util
import mmap
import os
import sys
from multiprocessing import shared_memory

import shmlot

from helpers.lots import remove_name


def _load_atomics():
    path = ctypes.util.find_library("atomic") or "libatomic.so.1"
    try:
        lib_ = ctypes.CDLL(path)
        fetch_add = lib_.__atomic_fetch_add_8
        load = lib_.__atomic_load_8
        store = lib_.__atomic_store_8
    except (OSError, AttributeError):
        return None
    fetch_add.argtypes = (ctypes.c_void_p, ctypes.c_int64, ctypes.c_int)
    fetch_add.restype = ctypes.c_int64
    load.argtypes = (ctypes.c_void_p, ctypes.c_int)
    load.restype = ctypes.c_int64
    store.argtypes = (ctypes.c_void_p, ctypes.c_int64, ctypes.c_int)
    store.restype = None
    return fetch_add, load, store


_ATOMICS = _load_atomics()
_SEQ_CST = 5


class Segment:
    """A POSIX shared-memory segment mapped here, with int64 atomics at 8-aligned offsets.

    Deliberately independent of ``multiprocessing.shared_memory`` (whose resource tracker would
    unlink or warn about segments attached in children) and of shmlot's own atomics (tested
    elsewhere): the atomics are libatomic's, or a lock-free-enough fallback through shmlot's
    ``AtomicU64`` when libatomic is missing."""

    def __init__(self, name, create=False, size=0):
        import _posixshmem
        flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0)
        fd = _posixshmem.shm_open("/" + name, flags, mode=0o600)
        try:
            if create:
                os.ftruncate(fd, size)
            else:
                size = os.fstat(fd).st_size
            self.buf = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self.name = name
        self.size = size
        self._anchor = (ctypes.c_char * size).from_buffer(self.buf)
        self.base = ctypes.addressof(self._anchor)
        self._fallback = {}

    def key(self, offset):
        """The lot key of byte ``offset``: ``key_for(name, offset)``, equal in every process."""
        return shmlot.key_for(self.name, offset)

    def _addr(self, offset):
        if offset % 8 or not 0 <= offset <= self.size - 8:
            raise ValueError(f"bad atomic offset {offset}")
        return self.base + offset

    def _atomic(self, offset):
        a = self._fallback.get(offset)
        if a is None:
            from shmlot.atomics import AtomicU64
            a = self._fallback[offset] = AtomicU64(self.buf, offset)
        return a

    def fetch_add(self, offset, delta):
        """Atomically add ``delta`` (may be negative); returns the previous (signed) value."""
        if _ATOMICS:
            return _ATOMICS[0](self._addr(offset), delta, _SEQ_CST)
        old = self._atomic(offset).fetch_add(delta & (2**64 - 1))
        return old - 2**64 if old >= 2**63 else old

    def load(self, offset):
        if _ATOMICS:
            return _ATOMICS[1](self._addr(offset), _SEQ_CST)
        old = self._atomic(offset).load()
        return old - 2**64 if old >= 2**63 else old

    def store(self, offset, value):
        if _ATOMICS:
            _ATOMICS[2](self._addr(offset), value, _SEQ_CST)
        else:
            self._atomic(offset).store(value & (2**64 - 1))

    def close(self):
        for a in self._fallback.values():
            a.close()
        self._fallback = {}
        self._anchor = None
        try:
            self.buf.close()
        except BufferError:
            pass

    def unlink(self):
        remove_name(self.name)


def attach_segment(name):
    """Map an existing segment made by :class:`Segment` (in any process)."""
    return Segment(name)


def attach_shared_memory(name):
    """Attach an existing ``SharedMemory`` block without leaving work for the resource tracker.

    On 3.13+ track=False. Before that, attaching registers the name again with the tracker the
    parent started (fork and spawn children share it); the registration is a set entry the
    parent's unlink() removes, so it is harmless, and unregistering here would remove the
    parent's too."""
    if sys.version_info >= (3, 13):
        return shared_memory.SharedMemory(name, track=False)
    return shared_memory.SharedMemory(name)
