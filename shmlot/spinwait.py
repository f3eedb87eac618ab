"""SpinWait: parking_lot's back-off counter for spin loops.

Exactly ``parking_lot_core::SpinWait``::

    spin = SpinWait()
    while not condition():
        if not spin.spin():      # False after 10 spins: stop spinning, park instead
            park(...)

- ``spin() -> bool``: once the counter has reached 10, returns False (the caller should park).
  Otherwise increments it, then executes ``2**counter`` CPU spin-loop hints (``pause`` on x86,
  ``isb`` on arm64) for the first 3 spins, or yields the CPU (``sched_yield``) for spins 4-10,
  and returns True.
- ``spin_no_yield()``: increments the counter (capped at 10) and executes ``2**counter`` hints;
  never yields, never says stop.
- ``reset()``: counter back to 0. ``counter`` is the read-only count so far.

Implemented in C (``shmlot._fast``); every call keeps the GIL, including the yield: spinning is
for waiting on other processes (or on threads running without the GIL), and the wait on a
thread of this process that needs the GIL is short because the caller parks after 10 spins.
"""
from ._fast import SpinWait

__all__ = ["SpinWait"]
