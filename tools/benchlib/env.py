"""The run's environment: one object, made by the command line and handed to every scenario.

It owns what the run creates (the benchmark's own lot, a temp dir, the built C floor, POSIX
semaphores) and removes all of it in close(). Children started with fork inherit the parent's
copy; a spawn child gets only what a scenario passes it, and never needs an Env."""
import json
import multiprocessing
import os
import secrets
import shutil
import subprocess
import tempfile

from .common import Unavailable, log

TOOLS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build_floor(tmp):
    """Compile tools/bench_floor.c into `tmp`; (path, "") or (None, why not)."""
    src = os.path.join(TOOLS, "bench_floor.c")
    if not os.path.exists(src):
        return None, f"{src} missing"
    cc = shutil.which("gcc") or shutil.which("cc")
    if not cc:
        return None, "gcc not found"
    exe = os.path.join(tmp, "bench_floor")
    r = subprocess.run([cc, "-O2", "-g", "-std=gnu11", "-o", exe, src], capture_output=True,
                       text=True)
    if r.returncode != 0:
        return None, "gcc failed: " + r.stderr.strip().splitlines()[-1][:200]
    return exe, ""


def posix_ipc():
    try:
        import posix_ipc as m
    except ImportError:
        raise Unavailable("posix_ipc not installed") from None
    return m


class Env:
    def __init__(self, start_method="fork", waiter=None, subject_filter=()):
        self.ctx = multiprocessing.get_context(start_method)
        self.start_method = start_method
        self.waiter = waiter
        self.subject_filter = [f.lower() for f in subject_filter]
        self.tmp = tempfile.mkdtemp(prefix="shmlot-bench-")
        self.posix_names = []
        self.files = 0
        self.floor_bin, self.floor_reason = build_floor(self.tmp)
        self.lot, self.lot_name, self.shmlot_reason = self._setup_lot()
        if self.shmlot_reason:
            log(f"[bench] shmlot not available: {self.shmlot_reason} (its rows print n/a)")
        if self.floor_reason:
            log(f"[bench] C floor not available: {self.floor_reason}")

    # ---- shmlot ------------------------------------------------------------------------------

    def _setup_lot(self):
        """The benchmark's own lot, exported as SHMLOT_LOT so that children use it too."""
        name = f"shmlot-bench-{os.getpid()}-{secrets.token_hex(3)}"
        os.environ["SHMLOT_LOT"] = name
        if self.waiter:
            os.environ["SHMLOT_WAITER"] = self.waiter
        try:
            import shmlot
        except Exception as e:
            return None, name, f"import shmlot failed ({type(e).__name__}: {e})"
        if not hasattr(shmlot, "ParkingLot"):
            return None, name, "shmlot.ParkingLot does not exist yet"
        kw = {"waiter": self.waiter} if self.waiter else {}
        try:
            lot = shmlot.ParkingLot.create(name, **kw)
        except Exception as e:
            return None, name, f"ParkingLot.create failed ({type(e).__name__}: {e})"
        return lot, name, ""

    def shmlot(self):
        if self.shmlot_reason:
            raise Unavailable(self.shmlot_reason)
        import shmlot
        return shmlot

    def shmlot_kind(self, kind):
        cls = getattr(self.shmlot(), kind, None)
        if cls is None:
            raise Unavailable(f"shmlot.{kind} does not exist yet")
        return cls

    # ---- peers' resources --------------------------------------------------------------------

    def posix_make(self, initial):
        m = posix_ipc()
        name = f"/shmlot-bench-{os.getpid()}-{secrets.token_hex(4)}"
        m.Semaphore(name, m.O_CREX, initial_value=initial).close()
        self.posix_names.append(name)
        return name

    def posix_cleanup(self, name):
        try:
            posix_ipc().unlink_semaphore(name)
        except Exception:
            pass
        if name in self.posix_names:
            self.posix_names.remove(name)

    def tmpfile(self):
        self.files += 1
        path = os.path.join(self.tmp, f"lock-{os.getpid()}-{self.files}")
        with open(path, "wb"):
            pass
        return path

    # ---- the C floor -------------------------------------------------------------------------

    def run_floor(self, *args, timeout=300):
        if self.floor_bin is None:
            raise Unavailable(self.floor_reason or "floor not built")
        out = subprocess.run([self.floor_bin, *map(str, args)], capture_output=True, text=True,
                             timeout=timeout)
        if out.returncode != 0:
            raise RuntimeError(f"bench_floor {' '.join(map(str, args))}: {out.stderr.strip()}")
        return json.loads(out.stdout)

    # ---- filters and teardown ----------------------------------------------------------------

    def wanted(self, subject):
        s = subject.lower()
        return not self.subject_filter or any(f in s for f in self.subject_filter)

    def meta(self):
        return {
            "shmlot": {"available": not self.shmlot_reason, "reason": self.shmlot_reason or None,
                       "lot": self.lot_name, "waiter": self.waiter,
                       "status": f"available (lot {self.lot_name})" if not self.shmlot_reason
                       else "n/a: " + self.shmlot_reason},
            "floor": {"available": self.floor_bin is not None,
                      "reason": self.floor_reason or None,
                      "status": "built with gcc" if self.floor_bin
                      else "n/a: " + self.floor_reason},
        }

    def close(self):
        for name in list(self.posix_names):
            self.posix_cleanup(name)
        try:
            import shmlot
            if self.lot is not None:
                self.lot.unlink()
                self.lot.close()
            elif not self.shmlot_reason:
                shmlot.ParkingLot.attach(self.lot_name).unlink()
        except Exception:
            pass
        shutil.rmtree(self.tmp, ignore_errors=True)
