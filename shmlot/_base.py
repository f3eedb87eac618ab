"""What every primitive shares: its Place, its key and name, pickling, and AtomicU64 views of its
words."""
from . import _placement as _pl
from ._fast import AtomicU64  # the raw type: a primitive's words need no key of their own

__all__ = ["Primitive"]


class Primitive:
    """Base of the primitives whose state is a few u64 words (``WORDS`` of them)."""
    KIND = 0
    WORDS = 1
    SIZE = 8  # bytes: 8 * WORDS, restated by each subclass

    def _bind(self, place):
        self._place = place
        self._words = [AtomicU64(place.buffer, place.offset + 8 * i) for i in range(self.WORDS)]

    @classmethod
    def _new(cls, name, lot):
        return _pl.new_place(cls.KIND, name, lot)

    @classmethod
    def _at_place(cls, buffer, offset, lot, key):
        return _pl.at_place(cls.KIND, buffer, offset, 8 * cls.WORDS, lot, key)

    @property
    def key(self):
        """The key this object parks on (``shmlot.key_for(obj)``)."""
        return self._place.key

    @property
    def name(self):
        return self._place.name

    def _created(self):
        return self._place.created

    def __reduce__(self):
        return (_rebuild, (type(self), self._place.reduce_args(), self._extra_state()))

    def _extra_state(self):
        return None

    def _set_extra_state(self, state):
        pass


def _rebuild(cls, args, extra):
    obj = cls.__new__(cls)
    obj._bind(_pl.rebuild_place(args))
    obj._set_extra_state(extra)
    return obj
