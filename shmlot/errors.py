"""The exceptions (and the warning) shmlot raises."""

__all__ = ["LotNotFoundError", "LotUnlinkedError", "LotCorruptError", "LotFullError",
           "OwnerDiedError", "OwnerDiedWarning", "ObjectGoneError"]


class LotNotFoundError(FileNotFoundError):
    """No lot of that name exists."""


class LotUnlinkedError(LotNotFoundError):
    """The lot's name no longer leads to the lot this handle uses: it was unlinked while in use
    (``shmlot-stat --unlink``, a /dev/shm cleaner, systemd-logind's ``RemoveIPC=yes``), and
    processes that open the name from now on get another lot. Raised when a name is resolved
    through this handle (a named object, ``default_lot()``, an unpickled handle) and by waits
    once the name leads to another lot, rather than coordinate with only some of the processes.
    """


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
