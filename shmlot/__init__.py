"""shmlot: a parking lot in shared memory, and inter-process primitives built on it."""
from .errors import LotCorruptError, LotFullError, LotNotFoundError, OwnerDiedError
from .keys import key_for
