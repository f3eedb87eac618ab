"""How a parked thread sleeps and how an unparker wakes it: the two sleep backends.

Both sleep on the slot's wait word becoming 0 (the unparker stores 0 under the bucket lock), in
bounded slices, so a wake-up that never comes (an unparker killed between unlocking and waking)
costs at most one slice, and signals reach the main thread promptly.

- ``FutexSleep``: a shared (non-private) futex on the wait word; the C core wakes it.
- ``SemaphoreSleep``: one POSIX named semaphore per slot (posix_ipc), for platforms without
  futexes. Posts may outlive the park they were meant for; the sleeper always re-checks the word,
  so a stale post is only a spurious wake-up.

The engine (``_engine.py``) makes one backend per lot handle (``_engine.make_sleep``) and hands it
the core (``core``: the cffi library) and the lot's C handle: this module calls the core only
through what it is given.
"""
import errno
import os
import re
import threading
import time

from . import _fast

SEM_DIR = "/dev/shm"  # where glibc keeps named semaphores, as files "sem.NAME"
# A glibc named semaphore's file, value 0: sem_t (32 bytes on the 64-bit platforms shmlot
# supports) holding struct new_sem {u64 value and waiters; int private = FUTEX_SHARED (128)}.
SEM_FILE_ZERO = (0).to_bytes(8, "little") + (128).to_bytes(4, "little") + bytes(20)
ORPHAN_SLICE_NS = 10_000_000  # semaphore backend, lot unlinked while in use: poll this often


class FutexSleep:
    """A shared futex on the slot's wait word; the core wakes it."""
    name = "futex"

    def __init__(self, core, lot):
        self._core = core
        self._l = lot

    def sleep(self, slot, deadline_ns):
        """Sleep until the slot is unparked (SL_SLEEP_UNPARKED) or deadline_ns passes
        (SL_SLEEP_TIMED_OUT) or a signal arrives (SL_SLEEP_INTERRUPTED). Releases the GIL
        (every cffi call does)."""
        r = self._core.sl_futex_wait(self._l, slot, deadline_ns)
        return r if r >= 0 else self._core.SL_SLEEP_TIMED_OUT

    def wake(self, woken, n):
        """The C core already woke them."""

    def unlink(self, lot_id, nslots):
        """Nothing to remove."""

    def reap_stale(self, lot_id):
        """Nothing to remove."""
        return 0


class SemaphoreSleep:
    """One POSIX named semaphore per slot; the unparker posts it (``wake``)."""
    name = "semaphore"

    def __init__(self, core, lot, lot_id, mode, linked=None, *, sem_name):
        import posix_ipc
        self._ipc = posix_ipc
        self._core = core
        self.sem_name = sem_name  # (lot_id, slot) -> name, as the core spells it (sl_sem_name)
        self._l = lot
        self._lot_id = lot_id
        self._mode = mode
        self._linked = linked  # None, or: does the lot's name still lead to this lot?
        self._orphaned = False  # the lot was unlinked under us: posts may miss, poll instead
        self._sems = {}
        self._pid = os.getpid()

    def _sem(self, slot):
        if self._pid != os.getpid():  # handles survive fork, but be safe with the cache
            self._sems = {}
            self._pid = os.getpid()
        sem = self._sems.get(slot)
        if sem is None:
            sem = self._sems[slot] = self._open(self.sem_name(self._lot_id, slot))
        return sem

    def _open(self, name):
        """Create the semaphore with the lot's mode, or open it.

        glibc's sem_open(O_CREAT) writes a file under a random name (sem.XXXXXX) and links it
        to the final one: a process killed in between leaves that file behind, and nothing
        says whose it is. So the file is made here instead, under a name derived from the
        semaphore's own (NAME.tmp<pid>-<tid>: its lot, slot and maker), written in full, given
        the lot's mode (whatever the umask), then linked to the final name (which a racing
        maker may have taken first: then this one is dropped) and removed; the reaper removes
        what a killed maker left (reap_stale). posix_ipc then opens the final name."""
        ipc = self._ipc
        final = f"{SEM_DIR}/sem.{name[1:]}"
        if not os.path.exists(final):
            tmp = f"{final}.tmp{os.getpid()}-{threading.get_native_id()}"
            try:
                os.unlink(tmp)  # left by a killed thread that had our ids
            except FileNotFoundError:
                pass
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, SEM_FILE_ZERO)
                os.fchmod(fd, self._mode)
            finally:
                os.close(fd)
            # test hook: a maker killed before linking
            self._core.sl_maybe_die(b"sem_file_written")
            try:
                os.link(tmp, final)
            except (FileExistsError, FileNotFoundError):
                pass  # another maker was first (or the lot went, its leftovers with it)
            finally:
                try:
                    os.unlink(tmp)
                except FileNotFoundError:
                    pass  # the lot was unlinked meanwhile, its leftovers with it
        deadline = None
        while True:
            try:
                sem = ipc.Semaphore(name)
            except ipc.ExistentialError:
                return self._open(name)  # unlinked meanwhile: make it again
            except ipc.PermissionsError:
                now = time.monotonic()
                if deadline is None:
                    deadline = now + 1.0
                elif now > deadline:
                    raise PermissionError(errno.EACCES, f"cannot open semaphore {name}") from None
                time.sleep(0.001)
                continue
            if self._is_orphaned():
                self._unlink_name(name)  # leave no name behind an unlinked lot
            return sem

    def reap_stale(self, lot_id):
        """Remove the half-made semaphore files of this lot whose maker is dead (see _open);
        returns how many."""
        lot_part = re.escape(self.sem_name(lot_id, 0)[1:].rsplit(".", 1)[0])
        pattern = re.compile(rf"sem\.{lot_part}\.\d+\.tmp(\d+)-\d+$")
        removed = 0
        try:
            entries = os.listdir(SEM_DIR)
        except OSError:
            return 0
        for entry in entries:
            m = pattern.match(entry)
            if m is None or _pid_alive(int(m.group(1))):
                continue
            try:
                os.unlink(f"{SEM_DIR}/{entry}")
                removed += 1
            except OSError:
                pass
        return removed

    def sleep(self, slot, deadline_ns):
        lib = self._core
        if lib.sl_park_is_unparked(self._l, slot):
            return lib.SL_SLEEP_UNPARKED
        self._sem(slot)  # make sure it exists (created through posix_ipc, with the lot's mode)
        if self._is_orphaned():
            if lib.sl_park_is_unparked(self._l, slot):
                return lib.SL_SLEEP_UNPARKED  # the post may have gone to another of that name
            limit = lib.sl_now_ns() + ORPHAN_SLICE_NS
            deadline_ns = min(deadline_ns, limit) if deadline_ns else limit
        # The blocking wait is the core's sem_clockwait: posix_ipc's acquire() would turn the
        # exception of a Python signal handler (other than SIGINT's) into its SignalError.
        r = lib.sl_sem_wait(self._l, slot, self._lot_id, deadline_ns)
        if r < 0:
            return lib.SL_SLEEP_TIMED_OUT
        if lib.sl_park_is_unparked(self._l, slot):
            return lib.SL_SLEEP_UNPARKED
        return lib.SL_SLEEP_INTERRUPTED if r == lib.SL_SLEEP_INTERRUPTED else \
            lib.SL_SLEEP_TIMED_OUT

    def wake(self, woken, n):
        for i in range(n):
            self._sem(woken[i]).release()

    def _is_orphaned(self):
        """Has the lot been unlinked while in use? Its unlink removed the semaphores, so from
        then on a post and a sleep may meet different semaphores of the same name (each side
        re-creates, then removes, its own), and sleepers poll the wait word every
        ORPHAN_SLICE_NS instead. Checked on each sleep and creation (a stat of the lot's name)."""
        if not self._orphaned and self._linked is not None and not self._linked():
            self._orphaned = True
        return self._orphaned

    def _unlink_name(self, name):
        try:
            self._ipc.unlink_semaphore(name)
        except self._ipc.ExistentialError:
            pass

    def unlink(self, lot_id, nslots):
        """Remove the lot's semaphores (after its name is gone). Each is posted first: a thread
        asleep on one wakes, finds the lot unlinked, and polls from then on (_is_orphaned)."""
        for slot in range(nslots):
            name = self.sem_name(lot_id, slot)
            try:
                sem = self._ipc.Semaphore(name)
            except self._ipc.ExistentialError:
                continue
            except self._ipc.PermissionsError:
                sem = None
            if sem is not None:
                try:
                    sem.release()
                finally:
                    sem.close()
            self._unlink_name(name)
        self.reap_stale(lot_id)
        # Forget the handles but do not close them: another thread of this process may be
        # asleep in acquire() on one of them, and sem_close() unmaps it under that thread
        # (SIGSEGV). The mappings (one page each) go when the process exits.
        self._sems = {}


def _pid_alive(pid):
    return _fast.process_alive(pid, 0, 0)  # the liveness predicate, any start time


__all__ = ["FutexSleep", "SemaphoreSleep"]
