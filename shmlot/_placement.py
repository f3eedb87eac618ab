"""Where a primitive's bytes live, and how a handle on them travels to other processes.

Three placements:
- named: a record in the lot's object registry, found by name (create-or-open);
- anonymous: a registry record with no name, freed when its last handle goes; handles pickle to
  (lot name, record index) and each unpickled handle counts as one more;
- ``at``: bytes in the caller's own shared memory (a SharedMemory, or a buffer plus a key).

Every primitive parks on the lot it was placed with (for ``at``: ``lot=`` or the default lot).
"""
import os
import sys
import threading
import weakref

from . import _engine as _e
from . import lot as _lot
from .errors import LotCorruptError, ObjectGoneError
from .keys import check_u64, private_word_id, word_location
from .kinds import KIND_NAMES

__all__ = ["Place", "new_place", "at_place", "lot_by_name", "KIND_NAMES"]

lot_by_name = _lot.lot_by_name


# ---- registry references held by this process ------------------------------------------------
#
# Every Place on a registry record holds one reference to it (sl_object_ref), given back when the
# Place is collected. Whatever this process still holds when it exits is given back by an exit
# hook, because weakref finalizers do not run in multiprocessing's fork and forkserver children
# (they leave through os._exit) and a record would never be freed.
#
# A fork child inherits its parent's handles, and takes references of its own to them at fork,
# so that a record lives while any living process can use it (the parent may drop its handles,
# or exit, while the child still works with them). Between fork() and the child's hook the
# parent could drop its last reference, so the parent first pins every record it holds (one
# reference each, counted as the parent's), and the child turns each pin into its own
# references (sl_object_adopt). A pin nobody adopts (fork failed, the child was killed at once)
# stays counted as the parent's and is given back with the parent's when it dies.

_taken = {}                 # (lot, index, generation) -> references this process holds
_taken_lock = threading.Lock()
_hook_pid = None            # the process the exit hooks are registered in
_pins = []                  # [(lot, index, gen, n)] pinned by the last fork (see above)
_pins_pid = 0               # the process that pinned them
_pins_failed = 0            # records the last fork could not pin (hold table full)


def _take(lot, index, gen):
    """Count one reference (already taken in the lot) as this process's."""
    if _hook_pid != os.getpid():
        _register_exit_hooks()
    key = (lot, index, gen)
    with _taken_lock:
        _taken[key] = _taken.get(key, 0) + 1


def _drop_ref(lot, index, gen):
    """Give back one reference of this process's (see above)."""
    key = (lot, index, gen)
    with _taken_lock:
        n = _taken.get(key, 0)
        if n <= 0:
            return  # already given back by the exit hook, or never this process's
        if n == 1:
            del _taken[key]
        else:
            _taken[key] = n - 1
    try:
        _e.object_ref(lot, index, -1)
    except Exception:  # interpreter shutdown, lot unmapped: nothing useful to do
        pass


def _release_all():
    """Exit hook: give back every reference this process still holds."""
    if _hook_pid != os.getpid():
        return
    with _taken_lock:
        items = list(_taken.items())
        _taken.clear()
    for (lot, index, _gen), n in items:
        try:
            _e.object_ref(lot, index, -n)
        except Exception:
            pass


def _pin_for_child():
    """Before fork, in the parent: pin every record this process holds (see above)."""
    global _pins, _pins_pid, _pins_failed
    pins, failed = [], 0
    with _taken_lock:
        items = list(_taken.items())
    for (lot, index, gen), n in items:
        try:
            _e.object_ref(lot, index, +1)
        except Exception:  # the hold table full (LotFullError): the child will say so
            failed += 1
            continue
        pins.append((lot, index, gen, n))
    _pins, _pins_pid, _pins_failed = pins, os.getpid(), failed


def _after_fork_in_parent():
    global _pins
    _pins = []  # the pins are the children's to adopt (or given back with ours at our end)


def _adopt_inherited():
    """In a fork child: the parent's references are not ours; take our own to everything we
    inherited (turning the parent's pins into them)."""
    global _taken, _taken_lock, _hook_pid, _pins
    _taken_lock = threading.Lock()  # another thread of the parent may have held it
    _taken = {}
    _hook_pid = None
    pins, _pins = _pins, []
    failed = _pins_failed
    for lot, index, gen, n in pins:
        try:
            _e.object_adopt(lot, index, gen, _pins_pid, n)
        except ObjectGoneError:
            continue  # freed before we could adopt it (the parent died and was reaped)
        except Exception:
            failed += 1
            continue
        _taken[(lot, index, gen)] = n
    if _taken:
        # the exit hooks inherited from the parent run here too once they know this process
        _hook_pid = os.getpid()
    if failed:
        import warnings
        warnings.warn(f"shmlot: this fork child could not take its own references to {failed} "
                      "inherited object(s) (the lot's hold table is full): they live only as "
                      "long as the parent", RuntimeWarning)


class _Anchor:
    """What multiprocessing's after-fork registry holds on to (it keeps weak references)."""


_anchor = _Anchor()


def _register_exit_hooks():
    global _hook_pid
    import atexit
    from multiprocessing import util
    _hook_pid = os.getpid()
    atexit.register(_release_all)  # a normal interpreter exit (spawn children, scripts)
    # multiprocessing children run util._exit_function() before os._exit (fork, forkserver);
    # their bootstrap clears the finalizers registered so far (a forkserver child unpickles its
    # arguments, taking references, before that), then runs the after-fork hooks
    util.Finalize(None, _release_all, exitpriority=-100)
    util.register_after_fork(_anchor, _reregister_in_child)


def _reregister_in_child(_anchor):
    if _hook_pid == os.getpid():
        from multiprocessing import util
        util.Finalize(None, _release_all, exitpriority=-100)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_pin_for_child, after_in_parent=_after_fork_in_parent,
                        after_in_child=_adopt_inherited)


class Place:
    """A primitive's storage: ``buffer[offset:offset+size]``, its ``key``, the ``lot`` it parks
    on, and for registry records the ``index`` and ``name``."""
    __slots__ = ("lot", "buffer", "offset", "key", "index", "name", "kind", "created", "shm",
                 "gen", "word", "_finalizer", "__weakref__")

    def __init__(self, lot, buffer, offset, key, index=None, name=None, kind=0, created=True,
                 shm=None, gen=0, word=None):
        self.lot = lot
        self.buffer = buffer
        self.offset = offset
        self.key = key
        self.index = index
        self.name = name
        self.kind = kind
        self.created = created
        self.shm = shm
        self.gen = gen  # the record's generation (registry records): which object it names
        # the word's identity (from its mapping and offset, never 0), whatever key it parks on:
        # a lock is handed over only to a waiter parked for the same word
        self.word = word if word is not None else (key or 1)
        self._finalizer = None
        if index is not None:
            # one registry reference per Place (taken by the caller); given back when the Place
            # is collected, or at exit
            _take(lot, index, gen)
            self._finalizer = weakref.finalize(self, _drop_ref, lot, index, gen)
            self._finalizer.atexit = False  # the exit hook gives back what is left

    def reduce_args(self):
        """What a pickled handle carries."""
        if self.index is not None:
            return ("record", self.lot.name, self.index, self.kind, self.gen)
        if self.shm is not None:
            # an explicit key= travels too (the receiver finds the natural one itself)
            key = self.key if self.key != self.word else None
            return ("shm", self.lot.name, self.shm.name, self.offset, self.kind, key)
        raise TypeError("a primitive placed with .at() on a plain buffer cannot be pickled; place "
                        "it in a multiprocessing.shared_memory.SharedMemory to share it")


def _check_object_name(name):
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, not {type(name).__name__}")
    raw = name.encode("utf-8")
    if not raw or len(raw) > _e.NAME_MAX or "/" in name or "\0" in name:
        raise ValueError(f"name must be 1 to {_e.NAME_MAX} bytes with no '/' or NUL: {name!r}")
    return name


def _lot_for_place(lot):
    """The handle a new primitive binds to: ``lot`` (default: the default lot) as _bound()
    gives it, so that closing the user's handle later leaves the primitive working."""
    if lot is None:
        lot = _lot.default_lot()
    elif not isinstance(lot, _lot.ParkingLot):
        raise TypeError(f"lot must be a ParkingLot, not {type(lot).__name__}")
    if lot.closed:
        raise ValueError(f"lot {lot.name!r} is closed")
    return _e.bound(lot)


def new_place(kind, name=None, lot=None):
    """A registry record for a new (or, by name, existing) object of ``kind``."""
    lot = _lot_for_place(lot)
    if name is not None:
        _check_object_name(name)
        # a name found in a lot other processes no longer reach would silently be two objects
        _e.check_linked(lot)
    index, created, actual = _e.object_create(lot, name or "", kind)
    if actual != kind:
        _e.object_ref(lot, index, -1)  # taken by object_create, not yet counted as ours
        raise TypeError(f"object {name!r} in lot {lot.name!r} is a "
                        f"{KIND_NAMES.get(actual, actual)}, not a {KIND_NAMES[kind]}")
    offset = _e.object_offset(lot, index)
    return Place(lot, _e.segment(lot), offset, lot.key_at(offset), index, name, kind, created,
                 gen=_e.object_gen(lot, index))


def rebuild_place(args):
    """The Place of an unpickled handle (see Place.reduce_args)."""
    how = args[0]
    if how == "record":
        _, lot_name, index, kind, gen = args
        lot = _e.bound(lot_by_name(lot_name))
        try:
            _e.object_acquire(lot, index, gen)  # ObjectGoneError if it was freed meanwhile
        except ObjectGoneError as exc:
            raise ObjectGoneError(
                f"shmlot {KIND_NAMES.get(kind, kind)} (object {index} of lot {lot_name!r}) no "
                "longer exists: its last handle was dropped before this one was unpickled") \
                from exc
        offset = _e.object_offset(lot, index)
        place = Place(lot, _e.segment(lot), offset, lot.key_at(offset), index, None, kind, False,
                      gen=gen)
        if _e.object_kind(lot, index) != kind:  # the same generation is the same object
            raise LotCorruptError(f"object {index} of lot {lot_name!r} changed kind")
        return place
    _, lot_name, shm_name, offset, kind, key = args
    shm = _attach_shm(shm_name)
    return at_place(kind, shm, offset, 8, lot_by_name(lot_name), key)


def _attach_shm(name):
    from multiprocessing import shared_memory
    if sys.version_info >= (3, 13):
        return shared_memory.SharedMemory(name, track=False)
    shm = shared_memory.SharedMemory(name)
    try:  # attaching must not make the resource tracker unlink it when we exit
        from multiprocessing import resource_tracker
        resource_tracker.unregister(shm._name, "shared_memory")
    except Exception:
        pass
    return shm


def at_place(kind, buffer, offset, size, lot=None, key=None):
    """Storage in the caller's own shared memory: ``buffer`` is a SharedMemory (or anything with
    ``.buf`` and ``.name``), or a writable buffer in shared memory (``shm.buf``, an ``mmap`` of a
    shared file or an anonymous one shared by fork, a NumPy array over shared memory). The key
    comes from the mapping that contains the word (see shmlot.keys), unless ``key=`` gives one
    (needed for memory private to this process, where only its threads can share the word)."""
    if isinstance(offset, bool) or not isinstance(offset, int):
        raise TypeError(f"offset must be an int, not {type(offset).__name__}")
    if offset < 0 or offset % 8:
        raise ValueError(f"offset must be a non-negative multiple of 8, got {offset}")
    if key is not None:
        check_u64(key, "key")
    lot = _lot_for_place(lot)
    shm = None
    view = buffer
    if hasattr(buffer, "buf") and hasattr(buffer, "name"):
        shm = buffer
        view = buffer.buf
    try:
        nbytes = memoryview(view).nbytes
    except TypeError:
        raise TypeError("Kind.at() needs a SharedMemory or a writable buffer in shared memory, "
                        f"not {type(buffer).__name__}") from None
    if offset + size > nbytes:
        raise ValueError(f"offset {offset} + size {size} is outside the buffer")
    natural, address = word_location(view, offset)
    if key is None:
        if natural is None:
            raise TypeError(f"this {type(buffer).__name__} is not in shared memory (a private "
                            "mapping): place the object in a SharedMemory or an mmap, or pass "
                            "key= to share it between the threads of this process only")
        key = natural
    word = natural if natural is not None else private_word_id(address)
    return Place(lot, view, offset, key, None, None, kind, False, shm, word=word or 1)
