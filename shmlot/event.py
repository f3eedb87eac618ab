"""``Event``, as in ``threading``, across processes.

Words: [0] the flag (0 or 1), [1] how many threads may be parked. ``wait`` spins briefly before
parking, so a two-process ping-pong usually completes without a system call.
"""
from . import _placement as _pl
from ._base import Primitive
from ._waiting import Deadline, park
from .spinwait import SpinWait

__all__ = ["Event"]

TOKEN_SET = 1  # the unpark token of a set(): "the flag was set while you waited"
POLL_NS = 200_000_000


class Event(Primitive):
    """``threading.Event()``; ``name=`` / ``lot=`` / ``.at()`` as for ``Lock``."""
    KIND = _pl.EVENT
    WORDS = 2
    SIZE = 16

    def __init__(self, *, name=None, lot=None):
        self._bind(self._new(name, lot))

    @classmethod
    def at(cls, buffer, offset=0, *, init_value=None, lot=None, key=None):
        """An event in ``buffer[offset:offset+SIZE]``: all-zero bytes are "unset"; a true
        ``init_value`` sets it now."""
        obj = cls.__new__(cls)
        obj._bind(cls._at_place(buffer, offset, lot, key))
        if init_value:
            obj._words[0].store(1)
        return obj

    def is_set(self):
        return self._words[0].load() == 1

    isSet = is_set  # threading keeps the old spelling too

    def set(self):
        """Set the flag and wake every waiter."""
        if self._words[0].swap(1) == 0 and self._words[1].load():
            self._place.lot.unpark_all(self._place.key, TOKEN_SET)

    def clear(self):
        self._words[0].store(0)

    def wait(self, timeout=None):
        """Block until the flag is set or ``timeout`` seconds pass; return the flag.

        As in threading, a waiter that a ``set()`` released returns True even if the flag was
        cleared again before it ran: the wake-up says so (token TOKEN_SET), as does a park whose
        validate found the flag set."""
        deadline = Deadline(timeout)  # checks the timeout (ValueError/TypeError) up front
        flag = self._words[0]
        if flag.load() == 1:
            return True
        spin = SpinWait()
        while spin.spin():
            if flag.load() == 1:
                return True
        if deadline.passed():
            return flag.load() == 1
        lot, key, waiters = self._place.lot, self._place.key, self._words[1]
        saw_set = []

        def is_set():
            return flag.load() == 1

        def blocked():
            if flag.load() == 1:
                saw_set.append(True)
                return False
            return True

        waiters.fetch_add(1)  # before the re-check below: set() reads it after its swap
        try:
            while True:
                if flag.load() == 1:
                    return True
                remaining = deadline.remaining()
                if remaining == 0.0:
                    return flag.load() == 1
                # re-check the flag every POLL_NS: a set() killed between its swap and its
                # unpark_all must not leave us asleep
                r = park(lot, key, blocked, None, None, 0, remaining, is_set, POLL_NS)
                if saw_set or (r.is_unparked and r.token == TOKEN_SET):
                    return True
        finally:
            waiters.fetch_sub(1)

    def __repr__(self):
        name = f" {self._place.name!r}" if self._place.name else ""
        return f"<shmlot.Event{name} {'set' if self.is_set() else 'unset'}>"
