"""The exceptions shmlot raises (SPEC section 6)."""

__all__ = ["LotNotFoundError", "LotCorruptError", "LotFullError", "OwnerDiedError"]


class LotNotFoundError(FileNotFoundError):
    """No lot of that name exists."""


class LotCorruptError(OSError):
    """The segment fails a check (magic, version, sizes, or a broken queue); the message says which."""


class LotFullError(RuntimeError):
    """Every slot of the lot is in use: no thread can park until one frees."""


class OwnerDiedError(RuntimeError):
    """The previous owner died while holding the lock.

    Raised by ``acquire()`` *with the lock now held by the caller*: repair the state the lock
    protects, then call ``release()``.
    """
