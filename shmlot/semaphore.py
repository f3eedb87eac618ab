"""``Semaphore`` and ``BoundedSemaphore``, as in ``threading``, across processes.

Words: [0] the value, [1] how many threads may be parked (see ``_engine.wait_until``), [2] the
bound of a BoundedSemaphore. Acquire takes one unit by CAS (GIL kept); only a thread that finds the value 0
parks, and release unparks only when the waiter count says someone may be parked.

Owner death. A ``Semaphore``'s permits are not owned: it is a counter that anyone may release
(one process may acquire and another release, as with a producer and a consumer), so a permit
taken by a process that dies before releasing it is gone. A ``BoundedSemaphore``'s permits are
owned: each process's are recorded as a counted hold on the semaphore's key (taken after the
unit, given back before it), so those of a dead process are given back by the next acquirer
that finds none free (it looks every OWNER_POLL_NS while it waits) and by ``shmlot-stat --reap``.
"""
from . import _engine as _e
from . import _fast
from . import kinds
from ._base import Primitive
from .kinds import PERMIT_HOLD  # a process's BoundedSemaphore permits (tid 0: per process)
from ._engine import OWNER_POLL_NS
from .errors import LotFullError

__all__ = ["Semaphore", "BoundedSemaphore"]

VALUE_MAX = 2**64 - 1  # the value is one u64 word


def _check_value(value):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"semaphore value must be an int, not {type(value).__name__}")
    if value < 0:
        raise ValueError("semaphore initial value must be >= 0")
    if value >= 2**63:
        raise ValueError("semaphore initial value too large")
    return value


class Semaphore(Primitive):
    """``threading.Semaphore(value=1)``; ``name=`` / ``lot=`` / ``.at()`` as for ``Lock``. A named
    semaphore takes ``value`` only when this call creates it.

    Its permits are not owned: it is a counter anyone may release, so a process that dies
    holding permits takes them along (use ``BoundedSemaphore``, whose permits are given back
    when their process dies, to limit how many processes do something at once)."""
    KIND = kinds.SEMAPHORE
    WORDS = 3
    SIZE = 24

    def __init__(self, value=1, *, name=None, lot=None):
        _check_value(value)
        self._bind(self._new(name, lot))
        if self._created():
            self._init_value(value)

    def _init_value(self, value):
        self._words[0].store(value)
        self._words[2].store(value)

    @classmethod
    def at(cls, buffer, offset=0, *, init_value=None, lot=None, key=None):
        """A semaphore in ``buffer[offset:offset+SIZE]``: all-zero bytes are value 0; with
        ``init_value`` the value is set now (only do that before others use it)."""
        obj = cls.__new__(cls)
        obj._bind(cls._at_place(buffer, offset, lot, key))
        if init_value is not None:
            obj._init_value(_check_value(init_value))
        return obj

    def _try_take(self):
        value = self._words[0]
        v = value.load()
        while v > 0:
            ok, v = value.compare_exchange(v, v - 1)
            if ok:
                return True
        return False

    def acquire(self, blocking=True, timeout=None):
        """Take one unit; block while the value is 0 (up to ``timeout`` seconds). Returns True
        when taken, False on timeout or when non-blocking and nothing is available."""
        if not blocking and timeout is not None:
            raise ValueError("can't specify timeout for non-blocking acquire")
        deadline = _e.wait_deadline(timeout)  # checks the timeout (TypeError) up front
        if self._try_take() or (self._reclaim() and self._try_take()):
            return True
        if not blocking:
            return False
        value = self._words[0]
        got = _e.wait_until(self._place.lot, self._place.key, self._try_take,
                            lambda: value.load() == 0, self._words[1], deadline,
                            **self._poll())
        return bool(got)

    def _poll(self):
        """wait_until's poll options for a waiting acquirer (none: it re-checks the value)."""
        return {}

    def _reclaim(self):
        """Permits of dead processes given back (none: a Semaphore's permits are not owned)."""
        return 0

    __enter__ = acquire

    def release(self, n=1):
        """Add ``n`` units, waking up to ``n`` waiters."""
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(f"n must be an int, not {type(n).__name__}")
        if n < 1:
            raise ValueError("n must be one or more")
        self._add(n)
        if self._words[1].load():
            self._wake(n)

    def _add(self, n):
        self._add_within(n, VALUE_MAX, "Semaphore value would exceed 2**64-1")

    def _add_within(self, n, bound, message):
        """Add ``n`` to the value by CAS, or raise ValueError (value unchanged) if that would
        take it past ``bound`` (a 64-bit word must not wrap round to a few permits)."""
        value = self._words[0]
        v = value.load()
        while True:
            if v + n > bound:
                raise ValueError(message)
            ok, v = value.compare_exchange(v, v + n)
            if ok:
                return

    def _wake(self, n):
        lot, key = self._place.lot, self._place.key
        for _ in range(n):
            if not _e.unpark_one(lot, key).have_more_threads:
                break

    def __exit__(self, *exc):
        self.release()

    def _value(self):
        return self._words[0].load()

    def __repr__(self):
        name = f" {self._place.name!r}" if self._place.name else ""
        return f"<shmlot.{type(self).__name__}{name} value={self._value()}>"


class BoundedSemaphore(Semaphore):
    """``threading.BoundedSemaphore``: release() beyond the initial value raises ValueError.

    Its permits are owned by the process that acquired them (recorded as a hold on the
    semaphore's key): those of a process that dies holding them are given back, by the next
    acquirer that finds none free and by ``shmlot-stat --reap``. A release by a process that
    holds none (another process's permit) gives back an anonymous unit, as threading allows."""
    KIND = kinds.BOUNDED_SEMAPHORE

    def _add(self, n):
        self._add_within(n, self._words[2].load(), "Semaphore released too many times")

    def _try_take(self):
        if not super()._try_take():
            return False
        # owned from here on: record it (with the table full, put the unit back and retry later)
        pid, _, start = _fast.self_ident()
        try:
            _e.hold_add(self._place.lot, self._place.key, pid, 0, start, PERMIT_HOLD)
        except LotFullError:
            self._words[0].fetch_add(1)
            _e.full_backoff(self._place.lot, _e.EXPIRED)
            return False
        _e.full_done()
        return True

    def release(self, n=1):
        """Give back ``n`` units (this process's permits first)."""
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(f"n must be an int, not {type(n).__name__}")
        if n < 1:
            raise ValueError("n must be one or more")
        self._add(n)  # ValueError beyond the bound, with nothing changed
        lot, key = self._place.lot, self._place.key
        pid, _, _ = _fast.self_ident()
        for _ in range(n):
            if not _e.hold_remove(lot, key, pid, 0, PERMIT_HOLD):
                break  # not ours: an anonymous unit
        if self._words[1].load():
            self._wake(n)

    def _poll(self):
        return {"poll": lambda: self._reclaim() > 0 or self._words[0].load() > 0,
                "poll_ns": OWNER_POLL_NS}  # how often a waiting acquirer looks for dead owners

    def _reclaim(self):
        """Give back the permits of dead processes (never beyond the bound); returns how many
        were given back."""
        dead = _e.hold_take_dead(self._place.lot, self._place.key)
        if dead <= 0:
            return 0
        value, bound = self._words[0], self._words[2].load()
        v = value.load()
        while True:
            n = min(dead, max(0, bound - v))
            if not n:
                return 0
            ok, v = value.compare_exchange(v, v + n)
            if ok:
                break
        if self._words[1].load():
            self._wake(n)
        return n

    def __repr__(self):
        return super().__repr__()[:-1] + f"/{self._words[2].load()}>"
