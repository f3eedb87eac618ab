"""shmlot.kinds: one descriptor for every kind a lot's registry holds, and what it decodes.

Every primitive's registry record carries a kind code that has a descriptor of the same name and
size; every hold mode a primitive records is named; known word values decode to the states
shmlot-stat shows; park tokens read as words.
"""
import pytest

import shmlot
from shmlot import _fast, kinds
from shmlot._core import lib
from shmlot.snapshot import snapshot

CLASSES = (shmlot.Lock, shmlot.RLock, shmlot.Condition, shmlot.Semaphore,
           shmlot.BoundedSemaphore, shmlot.Event, shmlot.Barrier, shmlot.RWLock)


def make(cls, lot):
    return cls(2, name=cls.__name__, lot=lot) if cls is shmlot.Barrier else \
        cls(name=cls.__name__, lot=lot)


def test_every_kind_in_a_registry_has_its_descriptor(lot):
    objs = [make(cls, lot) for cls in CLASSES]
    found = {o.name: o for o in snapshot(lot, processes=False).objects}
    for cls in CLASSES:
        obj = found[cls.__name__]
        kind = kinds.by_code(obj.kind_code)
        assert kind is kinds.by_name(cls.__name__)
        assert (kind.name, obj.kind) == (cls.__name__, cls.__name__)
        assert kind.size == cls.SIZE
    assert len(objs) == len(kinds.KINDS) == len({k.code for k in kinds.KINDS})


def test_primitives_take_their_codes_from_the_descriptors():
    for cls in CLASSES:
        if cls is not shmlot.Condition:  # a Condition's record is made by its module
            assert kinds.by_name(cls.__name__).code == cls.KIND


@pytest.mark.parametrize("kind", kinds.KINDS, ids=lambda k: k.name)
def test_layout_fits_the_record(kind):
    offsets = [w.offset for w in kind.words]
    assert offsets == sorted(set(offsets)) and all(o % 8 == 0 for o in offsets)
    assert offsets[0] == 0 and offsets[-1] + 8 <= kind.size <= 48  # a record has six words
    assert all(r.offset in offsets for r in kind.roles)
    assert kind.lock_word is None or kind.words[kind.lock_word].offset == 0
    for mode in kind.holds:
        assert mode & lib.SL_HOLD_COUNTED  # the kind's own word counts them: the reaper must not


def test_every_hold_mode_has_a_name_or_is_the_writers_wait():
    modes = {m for k in kinds.KINDS for m in k.holds} | {kinds.RESOURCE_HOLD}
    assert modes - set(kinds.HOLD_MODE_NAMES) == {kinds.WRITE_WAIT_HOLD}
    assert kinds.HOLDS_KEY == {kinds.READ_HOLD, kinds.RESOURCE_HOLD}


def test_an_unknown_code_decodes_to_its_words():
    kind = kinds.by_code(99)
    assert kind.name == "kind 99" and kind.roles == ()
    assert kind.decode([1, 2, 3, 0, 0, 0], []) == ("?", {"words": [1, 2, 3, 0, 0, 0]}, None)


class _Hold:
    def __init__(self, pid, mode):
        self.pid, self.mode = pid, mode


WORD = _fast.owner_bits(1234, 5678, 99) | _fast.LOCKED_BIT
OWNER = (1234, 5678, 99)


@pytest.mark.parametrize("name, data, holds, state, details, owner", [
    ("Lock", [0], [], "unlocked", {"locked": False, "parked_bit": False}, None),
    ("Lock", [WORD | _fast.PARKED_BIT], [], "locked by pid 1234 tid 5678",
     {"locked": True, "parked_bit": True}, OWNER),
    ("RLock", [WORD, 3], [], "locked by pid 1234 tid 5678 (x3)",
     {"locked": True, "parked_bit": False, "count": 3}, OWNER),
    ("RLock", [_fast.PARKED_BIT, 3], [], "unlocked",
     {"locked": False, "parked_bit": True, "count": 0}, None),
    ("Condition", [WORD, 1, 0], [], "lock locked by pid 1234 tid 5678",
     {"locked": True, "parked_bit": False, "count": 1}, OWNER),
    ("Condition", [0, 0, 0], [], "lock unlocked",
     {"locked": False, "parked_bit": False, "count": 0}, None),
    ("Semaphore", [2, 0, 5], [], "value 2", {"value": 2}, None),
    ("BoundedSemaphore", [2, 0, 5], [], "value 2/5", {"value": 2, "bound": 5}, None),
    ("Event", [0b101], [], "set", {"set": True}, None),
    ("Event", [0b100], [], "unset", {"set": False}, None),
    ("Barrier", [3, (7 << 32) | 2, 0], [], "2/3 waiting",
     {"parties": 3, "broken": False, "waiting": 2, "generation": 7}, None),
    ("Barrier", [3, (1 << 63) | (7 << 32) | 2, 0], [], "broken (3 parties)",
     {"parties": 3, "broken": True, "waiting": 0, "generation": 7}, None),
    ("RWLock", [WORD, 0, 1, 0], [], "write-locked by pid 1234 tid 5678",
     {"writer": {"pid": 1234, "tid": 5678}, "readers": 0, "reader_pids": [],
      "readers_waiting": 0, "writers_waiting": 1}, OWNER),
    ("RWLock", [2 << 2, 1, 0, 0], [_Hold(9, kinds.READ_HOLD), _Hold(8, kinds.READ_HOLD),
                                   _Hold(7, kinds.WRITE_WAIT_HOLD)], "2 readers (pid 8,9)",
     {"writer": None, "readers": 2, "reader_pids": [8, 9], "readers_waiting": 1,
      "writers_waiting": 0}, None),
    ("RWLock", [0, 0, 0, 0], [], "unlocked",
     {"writer": None, "readers": 0, "reader_pids": [], "readers_waiting": 0,
      "writers_waiting": 0}, None),
])
def test_decode_known_words(name, data, holds, state, details, owner):
    assert kinds.by_name(name).decode(data, holds) == (state, details, owner)


@pytest.mark.parametrize("kind, role, token, text", [
    ("Lock", "acquire", 0, "acquirer"), ("RWLock", "read", 0, "reader"),
    ("RWLock", "write", 0, "writer"), ("Barrier", "wait", 0, "party"),
    ("Event", "wait", 0, "waiter"), ("Condition", "wait", kinds.TOKEN_BURST, "waiter"),
    ("Condition", "lock", kinds.TOKEN_BURST, "notified"),
    ("Lock", "acquire", lib.SL_TOKEN_AIO, "asyncio"), ("Lock", "acquire", 7, "7"),
    (None, None, 0, "0"), (None, None, 2**40, f"0x{2**40:x}"),
])
def test_token_text(kind, role, token, text):
    assert kinds.token_text(kind, role, token) == text
