"""Keys: 64-bit integers naming a location in shared memory, equal in every process.

A key is the FNV-1a hash of the segment's name plus the byte offset, so that two processes that map
the same segment at different addresses compute the same key for the same word.
"""
import mmap

__all__ = ["key_for", "name_key", "check_u64", "U64_MAX"]

U64_MAX = 2**64 - 1
_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3


def name_key(name):
    """Base key of a shared-memory segment called ``name`` (leading '/' ignored)."""
    h = _FNV_OFFSET
    for byte in name.lstrip("/").encode():
        h = ((h ^ byte) * _FNV_PRIME) & U64_MAX
    return h


def check_u64(value, what="key"):
    """Validate a key or token: an int in [0, 2**64)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    if not 0 <= value <= U64_MAX:
        raise ValueError(f"{what} must be in [0, 2**64), got {value}")
    return value


def key_for(obj, offset=0):
    """A key naming byte ``offset`` of a shared segment, the same in every process mapping it.

    ``obj`` is a ``multiprocessing.shared_memory.SharedMemory``, a segment name (str), or any
    object with a ``.key`` (every shmlot primitive and atomic; the offset is then added to it).
    An anonymous ``mmap`` shared by fork has no name: its key is its address, valid only in the
    processes that inherited the mapping.
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
        return (name_key(name) + offset) & U64_MAX
    if isinstance(obj, mmap.mmap):
        import ctypes
        addr = ctypes.addressof(ctypes.c_char.from_buffer(obj))
        return (addr + offset) & U64_MAX
    raise TypeError(
        "key_for() needs a SharedMemory, a segment name, or an object with a .key, "
        f"not {type(obj).__name__}")
