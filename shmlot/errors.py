"""The exceptions shmlot raises (SPEC section 6)."""

__all__ = ["LotNotFoundError", "LotCorruptError", "LotFullError", "OwnerDiedError",
           "ObjectGoneError"]


class LotNotFoundError(FileNotFoundError):
    """No lot of that name exists."""


class LotCorruptError(OSError):
    """The segment fails a check (magic, version, sizes, or a broken queue); the message says which."""


class LotFullError(RuntimeError):
    """Every slot of the lot is in use: no thread can park until one frees."""


class ObjectGoneError(LookupError):
    """A handle names an object that no longer exists: its last handle was dropped (so its
    record was freed, and may hold another object by now) before this one was unpickled or
    inherited. Every record carries a generation, and so does every handle, so such a handle
    is refused instead of naming whatever the record holds now."""


class OwnerDiedError(RuntimeError):
    """The previous owner died while holding the lock.

    Raised by ``acquire()`` *with the lock now held by the caller*: repair the state the lock
    protects, then call ``release()``.
    """
