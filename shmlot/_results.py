"""Result and operation types of the low-level API (parking_lot_core's ParkResult, UnparkResult,
FilterOp, RequeueOp)."""
import enum

__all__ = ["ParkResult", "UnparkResult", "FilterOp", "RequeueOp",
           "DEFAULT_PARK_TOKEN", "DEFAULT_UNPARK_TOKEN"]

DEFAULT_PARK_TOKEN = 0
DEFAULT_UNPARK_TOKEN = 0


class FilterOp(enum.IntEnum):
    """What ``unpark_filter``'s filter says about one parked thread."""
    UNPARK = 0  # unpark it and keep scanning
    SKIP = 1    # leave it parked and keep scanning
    STOP = 2    # leave it and every later thread parked


class RequeueOp(enum.IntEnum):
    """What ``unpark_requeue``'s validate decides."""
    ABORT = 0
    UNPARK_ONE_REQUEUE_REST = 1
    REQUEUE_ALL = 2
    UNPARK_ONE = 3
    REQUEUE_ONE = 4


class ParkResult:
    """How a ``park`` ended: unparked (with the unpark token), invalid, or timed out."""
    __slots__ = ("_kind", "token")
    _UNPARKED, _INVALID, _TIMED_OUT = 0, 1, 2

    def __init__(self, kind, token=None):
        self._kind = kind
        self.token = token

    @property
    def is_unparked(self):
        return self._kind == self._UNPARKED

    @property
    def is_invalid(self):
        return self._kind == self._INVALID

    @property
    def is_timed_out(self):
        return self._kind == self._TIMED_OUT

    def __eq__(self, other):
        return (isinstance(other, ParkResult) and self._kind == other._kind
                and self.token == other.token)

    def __hash__(self):
        return hash((self._kind, self.token))

    def __repr__(self):
        if self.is_unparked:
            return f"ParkResult.Unparked(token={self.token})"
        return "ParkResult.Invalid" if self.is_invalid else "ParkResult.TimedOut"


PARK_INVALID = ParkResult(ParkResult._INVALID)
PARK_TIMED_OUT = ParkResult(ParkResult._TIMED_OUT)


class UnparkResult:
    """What an unpark operation did. ``have_more_threads`` is exact for the key (``key_from`` for a
    requeue); ``be_fair`` is true about once every 0.5 ms per bucket, at random."""
    __slots__ = ("unparked_threads", "requeued_threads", "have_more_threads", "be_fair",
                 "_first_owner")

    def __init__(self, unparked_threads=0, requeued_threads=0, have_more_threads=False,
                 be_fair=False, first_owner=None):
        self.unparked_threads = unparked_threads
        self.requeued_threads = requeued_threads
        self.have_more_threads = have_more_threads
        self.be_fair = be_fair
        # (pid, tid, start) of the first thread unparked: lets a lock hand itself over with the
        # new owner already written in the lock word.
        self._first_owner = first_owner

    @classmethod
    def _from_c(cls, r):
        owner = (r.first_pid, r.first_tid, r.first_start) if r.unparked else None
        return cls(r.unparked, r.requeued, bool(r.have_more), bool(r.be_fair), owner)

    def __eq__(self, other):
        return isinstance(other, UnparkResult) and (
            self.unparked_threads, self.requeued_threads, self.have_more_threads, self.be_fair
        ) == (other.unparked_threads, other.requeued_threads, other.have_more_threads,
              other.be_fair)

    __hash__ = None

    def __repr__(self):
        return (f"UnparkResult(unparked_threads={self.unparked_threads}, "
                f"requeued_threads={self.requeued_threads}, "
                f"have_more_threads={self.have_more_threads}, be_fair={self.be_fair})")
