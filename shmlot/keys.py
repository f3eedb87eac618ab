"""Keys: 64-bit integers naming a location in shared memory, equal in every process.

A key names a word the way the kernel names a shared futex: by the object that is mapped (the
device and inode of the file behind the mapping) and the byte offset in it. Two processes that map
the same segment at different addresses compute the same key for the same word; a segment
unlinked and re-created under the same name is another file (tmpfs gives every new file a new
inode number, never reused while the mount lives short of 2**32 creations), so its words get new
keys while processes that still map the old one keep the old keys.

The mapping behind a buffer is found in ``/proc/self/maps`` (cached per exporting object). An
anonymous shared mapping (``mmap.mmap(-1, n)``, inherited across fork) has an inode of its own
there too, the same in every process that inherited it, so its words have keys that work
between those processes.
"""
import ctypes
import os
import struct
import threading
import weakref
from collections import namedtuple

__all__ = ["key_for", "name_key", "file_key", "check_u64", "U64_MAX", "word_location",
           "private_word_id"]

U64_MAX = 2**64 - 1
_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3
SHM_DIR = "/dev/shm"


def _fnv(data, h=_FNV_OFFSET):
    for byte in data:
        h = ((h ^ byte) * _FNV_PRIME) & U64_MAX
    return h


def file_key(major, minor, ino):
    """Base key of the file (device major:minor, inode) behind a mapping: the key of its byte 0."""
    return _fnv(struct.pack("<IIQ", major & 0xFFFFFFFF, minor & 0xFFFFFFFF, ino & U64_MAX))


def _dev_key(st_dev, st_ino):
    return file_key(os.major(st_dev), os.minor(st_dev), st_ino)


def name_key(name):
    """Base key of the shared-memory segment called ``name`` (leading '/' ignored), as it is
    now: the segment that name leads to (FileNotFoundError if there is none)."""
    st = os.stat(os.path.join(SHM_DIR, name.lstrip("/")))
    return _dev_key(st.st_dev, st.st_ino)


def check_u64(value, what="key"):
    """Validate a key or token: an int in [0, 2**64)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    if not 0 <= value <= U64_MAX:
        raise ValueError(f"{what} must be in [0, 2**64), got {value}")
    return value


# ---- the mapping behind an address ------------------------------------------------------------

Mapping = namedtuple("Mapping", "start end pgoff major minor ino shared path")
_cache = weakref.WeakKeyDictionary()  # exporting object -> Mapping
_cache_lock = threading.Lock()


def _read_mapping(address):
    """The line of /proc/self/maps that contains ``address``, parsed (None if none does)."""
    with open("/proc/self/maps", "rb") as f:
        for line in f:
            fields = line.split(None, 5)
            lo, _, hi = fields[0].partition(b"-")
            start, end = int(lo, 16), int(hi, 16)
            if not start <= address < end:
                continue
            major, _, minor = fields[3].partition(b":")
            path = fields[5].strip().decode("utf-8", "replace") if len(fields) > 5 else ""
            return Mapping(start, end, int(fields[2], 16), int(major, 16), int(minor, 16),
                           int(fields[4]), fields[1][3:4] == b"s", path)
    return None


def _mapping_of(address, owner):
    """The mapping that contains ``address``; ``owner`` (the object exporting the buffer) keys
    the cache, so that a mapping found once is not looked up again while its owner lives."""
    try:
        m = _cache.get(owner)
    except TypeError:  # not weak-referenceable: no cache
        m = owner = None
    if m is not None and m.start <= address < m.end:
        return m
    m = _read_mapping(address)
    if m is not None and owner is not None:
        with _cache_lock:
            _cache[owner] = m
    return m


def _address_of(view):
    """The address of a writable, contiguous buffer's first byte in this process."""
    if view.readonly:
        raise TypeError("a shmlot word needs a writable buffer, not a read-only one")
    if not view.contiguous:
        raise TypeError("a shmlot word needs a contiguous buffer")
    if view.nbytes == 0:
        raise ValueError("the buffer is empty")
    return ctypes.addressof(ctypes.c_char.from_buffer(view.cast("B")))


def word_location(buffer, offset):
    """(key, address) of byte ``offset`` of ``buffer`` (anything exporting a writable buffer: a
    memoryview such as ``SharedMemory.buf``, an ``mmap``, a NumPy array). The key comes from the
    mapping that contains the address: the file (device, inode) behind it and the offset in that
    file. It is None when the memory is private to this process (not a shared mapping), which
    no other process can name."""
    view = memoryview(buffer)
    try:
        address = _address_of(view) + offset
        m = _mapping_of(address, view.obj)
    finally:
        view.release()
    if m is None or not m.shared:
        return None, address
    return (file_key(m.major, m.minor, m.ino) + m.pgoff + (address - m.start)) & U64_MAX, address


def private_word_id(address):
    """An identity for a word in memory private to this process (see word_location): its
    address, with this process's pid, since another process's private word at the same address
    is another word."""
    return _fnv(struct.pack("<QQ", os.getpid(), address)) or 1


def key_for(obj, offset=0):
    """A key naming byte ``offset`` of a shared segment, the same in every process mapping it.

    ``obj`` is a ``multiprocessing.shared_memory.SharedMemory``, a segment name (str; the segment
    the name leads to now), any object with a ``.key`` (every shmlot primitive and atomic; the
    offset is then added to it), or a buffer in shared memory (a memoryview such as ``shm.buf``,
    an ``mmap`` of a shared file, or an anonymous ``mmap`` shared by fork: that one's key is
    valid between the processes that inherited it).
    """
    if isinstance(offset, bool) or not isinstance(offset, int):
        raise TypeError(f"offset must be an int, not {type(offset).__name__}")
    if offset < 0:
        raise ValueError("offset must be >= 0")
    if isinstance(obj, str):
        if not obj.lstrip("/"):
            raise ValueError("segment name must not be empty")
        return (name_key(obj) + offset) & U64_MAX
    key = getattr(obj, "key", None)
    if isinstance(key, int) and not isinstance(key, bool):
        return (key + offset) & U64_MAX
    name = getattr(obj, "name", None)
    if isinstance(name, str) and hasattr(obj, "buf"):
        if offset >= obj.size:
            raise ValueError(f"offset {offset} is outside the segment ({obj.size} bytes)")
        obj = obj.buf
        if obj is None:
            raise ValueError(f"SharedMemory {name!r} is closed")
    try:
        view = memoryview(obj)
    except TypeError:
        raise TypeError(
            "key_for() needs a SharedMemory, a segment name, an object with a .key, or a buffer "
            f"in shared memory, not {type(obj).__name__}") from None
    with view:
        if offset >= view.nbytes:
            raise ValueError(f"offset {offset} is outside the buffer ({view.nbytes} bytes)")
    key, _ = word_location(obj, offset)
    if key is None:
        raise TypeError(f"this {type(obj).__name__} is not in shared memory (a private mapping): "
                        "no other process can name it")
    return key
