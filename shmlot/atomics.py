"""Atomic integers on shared memory: what custom primitives are built from.

``AtomicU32(buffer, offset=0)`` and ``AtomicU64(buffer, offset=0)`` name a naturally aligned
word at byte ``offset`` of a writable buffer and operate on it with sequentially consistent
atomics, keeping the GIL (each call is one machine instruction plus the call overhead)::

    shm = SharedMemory(name, create=True, size=4096)
    refs = AtomicU64(shm, 0)          # the SharedMemory itself, or shm.buf, an mmap, a bytearray
    refs.fetch_add(1)                 # -> previous value
    ok, actual = refs.compare_exchange(1, 0)

``buffer`` is anything that exports a writable buffer, or an object with a ``.buf`` that does (a
``multiprocessing.shared_memory.SharedMemory``). Values are ints in ``[0, 2**32)`` / ``[0, 2**64)``
(``TypeError`` for non-ints, ``ValueError`` outside the range); arithmetic wraps. A misaligned or
out-of-range ``offset`` raises ``ValueError``; a read-only buffer raises what Python raises for it
(``TypeError`` or ``BufferError``).

``.key`` names the word for ``park``/``unpark``:

- given an object with an int ``.key`` and a ``.buf``, it is ``obj.key + offset``;
- otherwise (a ``SharedMemory``, ``shm.buf``, an ``mmap``, a NumPy array) it is
  ``key_for(buffer, offset)``: named by the file behind the mapping (device, inode) and the
  offset in it, so the same in every process that maps it, at whatever address (for an
  anonymous ``mmap`` shared by fork: in the processes that inherited it);
- for memory private to this process (a ``bytearray``), which no other process can name, it is
  the word's address.

The atomic holds the buffer exported for as long as it lives: ``SharedMemory.close()`` (and
``mmap.close()``) raise ``BufferError`` until every atomic on it is gone or ``close()``d.
Atomics cannot be pickled; pass the SharedMemory (or its name) and the offset instead.
"""
from . import _fast
from .keys import U64_MAX, word_location

__all__ = ["AtomicU32", "AtomicU64"]


def _key_of(buffer, offset, address):
    """The key of the word at ``offset`` of ``buffer`` (mapped at ``address`` here)."""
    if hasattr(buffer, "buf"):
        key = getattr(buffer, "key", None)
        if isinstance(key, int) and not isinstance(key, bool):
            return (key + offset) & U64_MAX
        buffer = buffer.buf
    key, _ = word_location(buffer, offset)
    return key if key is not None else address


class _AtomicMixin:
    __slots__ = ()

    def __repr__(self):
        cls = type(self).__name__
        if self.closed:
            return f"<{cls} closed>"
        return f"<{cls} key={self.key:#x} value={self.load()} at {self.address:#x}>"

    def __reduce__(self):
        raise TypeError(
            f"{type(self).__name__} objects cannot be pickled; "
            "pass the SharedMemory (or its name) and the offset instead")


class AtomicU32(_AtomicMixin, _fast.AtomicU32):
    """A sequentially consistent unsigned 32-bit word in shared memory (see the module doc).

    Methods: ``load()``, ``store(v)``, ``swap(v)``, ``compare_exchange(expected, new) -> (ok,
    actual)``, ``fetch_add(v)``, ``fetch_sub(v)``, ``fetch_or(v)``, ``fetch_and(v)`` (each
    ``fetch_*`` returns the previous value), ``close()``. Attributes: ``key``, ``address``,
    ``offset``, ``buffer``, ``closed``. ``SIZE`` = 4 bytes, 4-aligned.
    """

    __slots__ = ("key", "__weakref__")
    SIZE = 4

    def __init__(self, buffer, offset=0):
        super().__init__(buffer, offset)
        self.key = _key_of(buffer, offset, self.address)


class AtomicU64(_AtomicMixin, _fast.AtomicU64):
    """A sequentially consistent unsigned 64-bit word in shared memory (see the module doc).

    Methods and attributes as for :class:`AtomicU32`. ``SIZE`` = 8 bytes, 8-aligned.
    """

    __slots__ = ("key", "__weakref__")
    SIZE = 8

    def __init__(self, buffer, offset=0):
        super().__init__(buffer, offset)
        self.key = _key_of(buffer, offset, self.address)
