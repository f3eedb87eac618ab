"""``Barrier``, as in ``threading``, across processes.

Words: [0] parties, [1] the state: arrived count (bits 0-31) and generation (bits 32-62), bit 63
BROKEN; [2] waiter count (see ``_engine.wait_until``). The last party to arrive claims the round
(the count reaches ``parties``, so no other thread can also think it is last; later arrivals wait
for the next round), runs the action and starts the next generation with +2; ``reset()`` starts
it with +1, so a waiter woken by a generation change knows from the parity of the step whether
its round completed or was reset. A party records a hold on the barrier's key from before it arrives until it leaves;
a waiter that finds a dead party's hold breaks the barrier (rather than wait forever for a party
that will never come), and so does the party that would complete the round (rather than pass
the rendezvous with a party that died waiting alone).
"""
import threading

from . import _engine as _e
from . import _fast
from ._base import Primitive
from .kinds import BARRIER_HOLD as HOLD_MODE  # counted: a dead party's breaks the barrier
from .kinds import (BARRIER, BARRIER_BROKEN as BROKEN, BARRIER_COUNT_MASK as COUNT_MASK,
                    BARRIER_GEN_MASK as GEN_MASK)
from ._engine import OWNER_POLL_NS  # how often a waiter checks that the other parties live
from .errors import LotFullError

__all__ = ["Barrier", "BrokenBarrierError"]

BrokenBarrierError = threading.BrokenBarrierError



def _gen(state):
    return (state & GEN_MASK) >> 32


class Barrier(Primitive):
    """``threading.Barrier(parties, action=None, timeout=None)``; ``name=`` / ``lot=`` as for
    ``Lock``. A named barrier opened again takes its parties from the lot (a different ``parties``
    raises ValueError)."""
    KIND = BARRIER
    WORDS = 3
    SIZE = 24

    def __init__(self, parties, action=None, timeout=None, *, name=None, lot=None):
        if isinstance(parties, bool) or not isinstance(parties, int):
            raise TypeError("parties must be an int")
        if parties < 1:
            raise ValueError("parties must be > 0")
        self._bind(self._new(name, lot))
        if self._created():
            self._words[0].store(parties)
        elif self._words[0].load() != parties:
            raise ValueError(f"barrier {name!r} has {self._words[0].load()} parties, "
                             f"not {parties}")
        self._action = action
        self._timeout = timeout

    def _extra_state(self):
        return (self._action, self._timeout)

    def _set_extra_state(self, state):
        self._action, self._timeout = state

    @property
    def parties(self):
        return self._words[0].load()

    @property
    def n_waiting(self):
        state = self._words[1].load()
        return 0 if state & BROKEN else state & COUNT_MASK

    @property
    def broken(self):
        return bool(self._words[1].load() & BROKEN)

    def _break(self):
        state = self._words[1]
        s = state.load()
        while not s & BROKEN:
            ok, s = state.compare_exchange(s, s | BROKEN)
            if ok:
                break
        _e.unpark_all(self._place.lot, self._place.key)

    def abort(self):
        """Put the barrier into the broken state: waiters (now and later) get BrokenBarrierError
        until reset()."""
        self._break()

    def reset(self):
        """Return to the empty state; parties waiting now get BrokenBarrierError."""
        state = self._words[1]
        s = state.load()
        while True:
            ok, s = state.compare_exchange(s, ((_gen(s) + 1) << 32) & GEN_MASK)
            if ok:
                break
        _e.unpark_all(self._place.lot, self._place.key)

    def wait(self, timeout=None):
        """Wait for all parties; returns this party's arrival index (0 .. parties-1)."""
        if timeout is None:
            timeout = self._timeout
        deadline = _e.wait_deadline(timeout)
        lot, key = self._place.lot, self._place.key
        state = self._words[1]
        parties = self._words[0].load()
        # The hold says "a party of this process is in the barrier" from before it arrives until
        # it leaves, so a party killed at any point in between is seen by the others (who break
        # the barrier instead of waiting for it forever).
        pid, tid, start = _fast.self_ident()
        self._add_hold(lot, key, pid, tid, start, deadline)
        try:
            while True:
                s = state.load()
                if s & BROKEN:
                    raise BrokenBarrierError
                index = s & COUNT_MASK
                if index >= parties:
                    # the last party of this round is running the action: join the next round
                    self._park_while(lambda s=s: state.load() == s, deadline)
                    continue
                if index + 1 == parties and _e.hold_take_dead(lot, key) > 0:
                    # completing the round with a party that died waiting (alone, so no
                    # waiter's poll saw it) would pass the rendezvous with a dead process
                    self._break()
                    raise BrokenBarrierError
                ok, _ = state.compare_exchange(s, s + 1)
                if not ok:
                    continue
                if index + 1 == parties:
                    return self._release_round(s + 1, index)
                try:
                    self._park_while(lambda gen=_gen(s): self._same_round(gen), deadline)
                except BrokenBarrierError:
                    raise
                except BaseException:
                    self._withdraw(_gen(s), parties)  # Ctrl-C: leave the round, as threading
                    raise
                step = (_gen(state.load()) - _gen(s)) % (1 << 31)
                if step == 0 or step % 2 == 1:  # still this round (so broken), or it was reset
                    raise BrokenBarrierError
                return index
        finally:
            _e.hold_remove(lot, key, pid, tid, HOLD_MODE)

    def _add_hold(self, lot, key, pid, tid, start, deadline):
        """Record this party's hold. The primitives never raise LotFullError: while the hold
        table is full, back off and retry (counter ``full_waits``); a deadline that passes
        first breaks the barrier, as any timeout does."""
        while True:
            try:
                _e.hold_add(lot, key, pid, tid, start, HOLD_MODE)
                _e.full_done()
                return
            except LotFullError:
                if _e.passed(deadline):
                    self._break()
                    raise BrokenBarrierError from None
                _e.full_backoff(lot, deadline)

    def _withdraw(self, gen, parties):
        """An exception (Ctrl-C) took this party out of round ``gen`` before it completed:
        un-count its arrival, as threading.Barrier does, so that the round still waits for
        ``parties`` parties. Not once the round is claimed (the count reached ``parties``: the
        last party is releasing it, with this one counted), broken or over."""
        state = self._words[1]
        s = state.load()
        while _gen(s) == gen and not s & BROKEN and 0 < s & COUNT_MASK < parties:
            ok, s = state.compare_exchange(s, s - 1)
            if ok:
                return

    def _same_round(self, gen):
        s = self._words[1].load()
        return _gen(s) == gen and not s & BROKEN

    def _release_round(self, claimed, index):
        """The last party (it set the count to ``parties``, so no one else can claim the round):
        run the action, then start the next generation, waking the round."""
        if self._action is not None:
            try:
                self._action()
            except BaseException:
                self._break()
                raise
        ok, _ = self._words[1].compare_exchange(claimed, ((_gen(claimed) + 2) << 32) & GEN_MASK)
        _e.unpark_all(self._place.lot, self._place.key)
        if not ok:  # aborted or reset while the action ran: the round did not complete
            raise BrokenBarrierError
        return index

    def _park_while(self, waiting, deadline):
        """Park on the barrier's key while ``waiting()``; break the barrier (and raise) when the
        deadline passes or a party in the barrier died."""
        lot, key = self._place.lot, self._place.key
        died = []

        def party_died():
            # taking a dead party's hold consumes it: remember that we did (and leave the queue
            # if the state moved on, in case whoever moved it died before unparking us)
            if _e.hold_take_dead(lot, key) > 0:
                died.append(True)
            return bool(died) or not waiting()

        self._words[2].fetch_add(1)
        try:
            while waiting():
                if died:
                    self._break()
                    raise BrokenBarrierError
                if _e.passed(deadline):
                    self._break()  # threading: a timeout breaks the barrier
                    raise BrokenBarrierError
                _e.park(lot, key, validate=waiting, deadline=deadline, poll=party_died,
                        poll_ns=OWNER_POLL_NS)
        finally:
            self._words[2].fetch_sub(1)

    def __repr__(self):
        if self.broken:
            return f"<shmlot.Barrier broken parties={self.parties}>"
        return f"<shmlot.Barrier waiters={self.n_waiting}/{self.parties}>"
