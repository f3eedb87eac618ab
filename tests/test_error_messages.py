"""Every entry point of the C core starts by clearing the thread's error message, so that an
error carries its own message and a success leaves none behind: an exception never shows an
older, unrelated message."""
import pytest

from shmlot._core import ffi, lib


def message():
    return ffi.string(lib.sl_last_error()).decode()


def leave_a_message():
    out = ffi.new("sl_lot **")
    assert lib.sl_attach(b"shmlot-no-such-lot-for-this-test", 0, out) < 0
    assert message()


@pytest.fixture
def handle(lot_name):
    name = lot_name().encode()
    out = ffi.new("sl_lot **")
    assert lib.sl_create(name, 4, 4, 4, 8, 0o600, lib.SL_WAITER_FUTEX, out) == 0, message()
    yield out[0]
    lib.sl_close(out[0])
    lib.sl_unlink(name)


def test_a_successful_rwlock_step_clears_the_message(handle):
    words = ffi.new("uint64_t[4]")
    mine = ffi.new("uint32_t *")
    out = ffi.new("uint64_t *")
    leave_a_message()
    assert lib.sl_rw_step(handle, words, 1, 2, lib.SL_RW_READ, 0, mine, out) == lib.SL_RW_DONE
    assert message() == ""
    assert lib.sl_rw_step(handle, words, 1, 2, lib.SL_RW_UNREAD, 0, mine, out) == lib.SL_RW_DONE
    words[3] = lib.SL_LOCKED_BIT  # the readers' mutex held: the step touches nothing else
    leave_a_message()
    assert lib.sl_rw_step(handle, words, 1, 2, lib.SL_RW_READ, 0, mine, out) == lib.SL_RW_BUSY
    assert message() == ""


def test_successful_asyncio_steps_clear_the_message(handle):
    leave_a_message()
    assert lib.sl_aio_wake(handle, 0, 1) == 0
    assert message() == ""
    slot = ffi.new("uint32_t *")
    word = ffi.new("uint64_t *", lib.SL_LOCKED_BIT)  # not PARKED: the park is refused
    leave_a_message()
    assert lib.sl_aio_word_park(handle, 5, 6, word, slot) == lib.SL_PARK_INVALID
    assert message() == ""


def test_a_failed_asyncio_step_says_why(handle):
    leave_a_message()
    assert lib.sl_aio_wake(handle, 1000, 1) == lib.SL_ECORRUPT
    assert "out of range" in message()
    assert lib.sl_aio_wait_once(handle, 2, 0) == lib.SL_SLEEP_UNPARKED  # a free slot
    assert message() == ""
