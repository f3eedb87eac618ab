"""The exceptions (and the warning) shmlot raises."""

__all__ = ["LotNotFoundError", "LotCorruptError", "LotFullError", "OwnerDiedError",
           "OwnerDiedWarning"]


class LotNotFoundError(FileNotFoundError):
    """No lot of that name exists."""


class LotCorruptError(OSError):
    """The segment fails a check (magic, version, sizes, or a broken queue); the message says which."""


class LotFullError(RuntimeError):
    """Every slot of the lot is in use: no thread can park until one frees."""


class OwnerDiedError(RuntimeError):
    """The previous owner died while holding the lock.

    Raised by ``acquire()`` *with the lock now held by the caller*: repair the state the lock
    protects, then call ``release()``. A ``with`` statement reports the death with
    ``OwnerDiedWarning`` instead (see there).
    """


class OwnerDiedWarning(RuntimeWarning):
    """The previous owner died while holding the lock that a ``with`` statement takes.

    ``with lock:`` (and ``with cond:``, ``with rw.write():``) takes the lock over from a dead
    owner, issues this warning once for that death, and runs its body; ``__exit__`` releases the
    lock as usual. If a warnings filter turns it into an exception, ``__enter__`` releases the
    lock before the exception propagates, so a ``with`` never leaves its thread holding a lock.
    """
