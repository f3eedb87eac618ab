"""One thread-identity cache: the core's (lib.sl_identity, refreshed in a fork child by one fork
handler). The C-API module's owner bits come from it, so after os.fork, in a new thread, and in a
thread of a fork child the two modules name the calling thread alike, and rightly."""
import os
import threading

import pytest

from shmlot import _fast
from shmlot._core import ffi, lib

pytestmark = pytest.mark.timeout(60)


def core_identity():
    pid, tid, start = ffi.new("uint32_t *"), ffi.new("uint32_t *"), ffi.new("uint64_t *")
    lib.sl_identity(pid, tid, start)
    return pid[0], tid[0], start[0]


def check_here():
    """The calling thread's identity through both modules; raises AssertionError if they (or
    the kernel) disagree."""
    ident = core_identity()
    assert _fast.self_ident() == ident
    assert ident[:2] == (os.getpid(), threading.get_native_id())
    assert ident[2] != 0
    assert _fast.self_owner_bits() == _fast.owner_bits(*ident)
    return ident


def in_thread(fn):
    out = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    t.join(10)
    assert out, "the thread raised or hung"
    return out[0]


def in_fork_child(fn):
    """Run fn in a fork child of the calling thread: its exit status says whether it held."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(r)
            ident = fn()
            os.write(w, repr(ident).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r) as f:
        text = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, "the child's identities differ"
    return eval(text)


def test_the_two_modules_agree_in_this_thread_and_a_new_one():
    mine = check_here()
    other = in_thread(check_here)
    assert other[0] == mine[0] and other[2] == mine[2] and other[1] != mine[1]


def test_after_fork_both_name_the_child():
    parent = check_here()
    child = in_fork_child(check_here)
    assert child[0] != parent[0]


def test_after_fork_from_a_thread_and_in_a_thread_of_the_child():
    def child_side():
        here = check_here()
        there = in_thread(check_here)
        assert there[0] == here[0] and there[1] != here[1]
        return here

    parent = check_here()
    child = in_thread(lambda: in_fork_child(child_side))
    assert child[0] != parent[0]


def test_a_grandchild_is_refreshed_again():
    child = in_fork_child(lambda: in_fork_child(check_here))
    assert child[0] != os.getpid()
