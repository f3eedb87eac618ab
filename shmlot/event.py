"""``Event``, as in ``threading``, across processes.

Words: [0] the flag (0 or 1), [1] how many threads may be parked. ``wait`` spins briefly before
parking, so a two-process ping-pong usually completes without a system call.
"""
from . import _placement as _pl
from ._base import Primitive
from ._waiting import Deadline, wait_until

__all__ = ["Event"]


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
            self._place.lot.unpark_all(self._place.key)

    def clear(self):
        self._words[0].store(0)

    def wait(self, timeout=None):
        """Block until the flag is set or ``timeout`` seconds pass; return the flag."""
        flag = self._words[0]
        if flag.load() == 1:
            return True
        wait_until(self._place.lot, self._place.key, self.is_set, lambda: flag.load() == 0,
                   self._words[1], Deadline(timeout))
        return self.is_set()

    def __repr__(self):
        name = f" {self._place.name!r}" if self._place.name else ""
        return f"<shmlot.Event{name} {'set' if self.is_set() else 'unset'}>"
