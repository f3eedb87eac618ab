"""``Event``, as in ``threading``, across processes.

Words: [0] bit 0 the flag, bits 1-63 a generation that every set() of an unset event advances;
[1] how many threads may be parked. ``set``, ``clear``, ``is_set`` and the first spin of ``wait``
are C (``_fast.EventCore``, keeping the GIL); ``wait`` spins on the word for up to SPIN_NS
before it backs off and parks, so a two-process ping-pong usually completes without a system call.

As in threading, a waiter released by a ``set()`` returns True even if the flag was cleared again
before it ran. It knows from the generation: one that moved since the wait began means a set()
happened during the wait. (A wake-up token could not say this: a late wake-up from an earlier
set() would release a later wait that no set() answered.)
"""
from . import _engine as _e
from . import _fast
from . import kinds
from ._base import Primitive
from ._engine import EVENT_FLAG as FLAG, OWNER_POLL_NS
from .spinwait import SpinWait

__all__ = ["Event"]

GEN_MASK = ((1 << 64) - 1) & ~FLAG  # the generation: every bit but the flag
SPIN_NS = 20_000  # the partner of a hand-off usually answers within a few microseconds


class Event(Primitive, _fast.EventCore):
    """``threading.Event()``; ``name=`` / ``lot=`` / ``.at()`` as for ``Lock``."""
    KIND = kinds.EVENT
    WORDS = 2
    SIZE = 16

    def __init__(self, *, name=None, lot=None):
        self._bind(self._new(name, lot))

    def _bind(self, place):
        super()._bind(place)
        _fast.EventCore.__init__(self, place.buffer, place.offset)

    @classmethod
    def at(cls, buffer, offset=0, *, init_value=None, lot=None, key=None):
        """An event in ``buffer[offset:offset+SIZE]``: all-zero bytes are "unset"; a true
        ``init_value`` sets it now."""
        obj = cls.__new__(cls)
        obj._bind(cls._at_place(buffer, offset, lot, key))
        if init_value:
            obj._words[0].fetch_or(FLAG)
        return obj

    # is_set(), set() and clear() are _fast.EventCore's
    isSet = _fast.EventCore.is_set  # threading keeps the old spelling too

    def _wake_waiters(self):
        """set() changed the flag and a thread may be parked: wake them all."""
        _e.unpark_all(self._place.lot, self._place.key)

    def wait(self, timeout=None):
        """Block until the flag is set or ``timeout`` seconds pass; return the flag (True also
        when a set() released this wait and a clear() followed before it ran, as in threading)."""
        if timeout is None:  # the hand-off's case first: nothing to check, nothing to compute
            start = self._spin_wait(SPIN_NS)
            if start is True:
                return True
            return self._wait_slow(start, _e.NO_DEADLINE)
        deadline = _e.wait_deadline(timeout)  # checks the timeout (TypeError) up front
        start = self._spin_wait(SPIN_NS if deadline != _e.EXPIRED else 0)
        if start is True:
            return True
        return self._wait_slow(start, deadline)

    def _wait_slow(self, start, deadline):
        """wait() once the first spin has not seen a set(): `start` is the word it began from.
        (A method of its own: its closure would cost wait()'s fast path a cell per variable.)"""
        word = self._words[0]
        gen = start & GEN_MASK

        def done():  # set now, or set (and maybe cleared) since this wait began
            w = word.load()
            return bool(w & FLAG) or (w & GEN_MASK) != gen

        spin = SpinWait()
        while spin.spin():
            if done():
                return True
        if _e.passed(deadline):
            return done()
        lot, key, waiters = self._place.lot, self._place.key, self._words[1]
        waiters.fetch_add(1)  # before the re-check below: set() reads it after its CAS
        try:
            while True:
                if done():
                    return True
                if _e.passed(deadline):
                    return done()
                # re-check every OWNER_POLL_NS: a set() killed between its CAS and its
                # unpark_all must not leave us asleep
                _e.park(lot, key, validate=lambda: not done(), deadline=deadline, poll=done,
                        poll_ns=OWNER_POLL_NS)
        finally:
            waiters.fetch_sub(1)

    def __repr__(self):
        name = f" {self._place.name!r}" if self._place.name else ""
        return f"<shmlot.Event{name} {'set' if self.is_set() else 'unset'}>"
