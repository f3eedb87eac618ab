"""Packaging: the sdist is complete, the sdist and the wheel install into fresh venvs outside the
source tree and work there, the wheel is manylinux-compatible, the type information checks with
mypy, and help() says how to use the primitives.

These tests build and install the package (tens of seconds each); they are marked ``packaging``
(``-m "not packaging"`` leaves them out). Build dependencies come from the package registries
through pip (its cache is used).
"""
import os
import pydoc
import shutil
import subprocess
import sys
import tarfile
import zipfile

import pytest

import shmlot

from conftest import new_lot_name

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = [pytest.mark.packaging, pytest.mark.timeout(600)]

# what a user needs from the sdist: the build inputs, and what the README refers to
SDIST_MUST_HAVE = ["cffi_build.py", "setup.py", "pyproject.toml", "MANIFEST.in", "LICENSE",
                   "README.md", "install.sh", ".ci/run", "shmlot/py.typed", "shmlot/__init__.pyi",
                   "tests/conftest.py", "tests/_prim_helpers.py", "tests/lock_tests_shmlot.py",
                   "tests/typed_usage.py", "docs/stat.md", "tools/bench.py",
                   "tools/mp_failures.py", "tools/examples/pool_lock.py",
                   "tools/examples/job_queue.py", "tools/examples/arc_mutex.py"]

# run in the installed package's venv, from a directory outside the source tree
SMOKE = r"""
import os, sys, multiprocessing as mp, pickle
import shmlot
assert not shmlot.__file__.startswith(sys.argv[1]), shmlot.__file__
here = os.path.dirname(shmlot.__file__)
assert os.path.exists(os.path.join(here, "py.typed"))
from shmlot import _core, _fast  # both native modules load

def child(lock, cond, q):
    with lock:
        q.put(os.getpid())
    with cond:
        cond.notify_all()

if __name__ == "__main__":
    ctx = shmlot.get_context("spawn")
    lock, cond, q = shmlot.Lock(), shmlot.Condition(), ctx.Queue()
    p = ctx.Process(target=child, args=(lock, cond, q))
    with cond:
        p.start()
        assert cond.wait(60)
    assert q.get(timeout=60) == p.pid
    p.join(60)
    assert p.exitcode == 0
    with ctx.Pool(2) as pool:
        assert pool.map(abs, [-1, -2]) == [1, 2]
    shmlot.default_lot().unlink()
    print("smoke ok")
"""


def _run(cmd, cwd=None, env=None, timeout=600):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def make_venv(path, python=sys.executable):
    """A fresh venv at ``path`` (with an up-to-date pip); returns its python."""
    _run([python, "-m", "venv", path])
    vpy = os.path.join(path, "bin", "python")
    _run([vpy, "-m", "pip", "install", "-q", "--upgrade", "pip"])
    return vpy


@pytest.fixture(scope="module")
def dists(tmp_path_factory):
    """The sdist and the wheel, built by ``python -m build`` into a temporary directory."""
    pytest.importorskip("build", reason="needs the 'build' package (pip install build)")
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "build", "--outdir", str(out), ROOT])
    sdist = next(out.glob("shmlot-*.tar.gz"))
    wheel = next(out.glob("shmlot-*.whl"))
    return sdist, wheel


def test_sdist_is_complete(dists):
    sdist, _ = dists
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    missing = [f for f in SDIST_MUST_HAVE if f not in names]
    assert not missing, f"missing from the sdist: {missing}"
    native = {n for n in names if n.startswith("shmlot/_native/")}
    assert {f"shmlot/_native/{f}" for f in os.listdir(os.path.join(ROOT, "shmlot", "_native"))
            if f.endswith((".c", ".h"))} <= native


def test_wheel_metadata(dists):
    _, wheel = dists
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        text = z.read(meta).decode()
        files = z.namelist()
    assert "License-Expression: MIT" in text
    assert "Classifier: Typing :: Typed" in text
    assert "Requires-Python: >=3.9" in text
    assert any(n.endswith("dist-info/licenses/LICENSE") for n in files)
    assert "shmlot/py.typed" in files and "shmlot/__init__.pyi" in files


@pytest.mark.parametrize("which", ["wheel", "sdist"])
def test_installs_into_fresh_venv_and_works(dists, tmp_path, which):
    """pip install of the wheel / the sdist (which builds it) into a venv outside the tree."""
    artifact = dists[1] if which == "wheel" else dists[0]
    vpy = make_venv(str(tmp_path / "venv"))
    proc = _run([vpy, "-m", "pip", "install", str(artifact)], cwd=str(tmp_path))
    assert "warning" not in proc.stderr.lower().replace("warning: location", ""), proc.stderr
    (tmp_path / "smoke.py").write_text(SMOKE)
    env = dict(os.environ, SHMLOT_LOT=new_lot_name("pkg-"))
    env.pop("PYTHONPATH", None)
    out = _run([vpy, "smoke.py", ROOT], cwd=str(tmp_path), env=env, timeout=300)
    assert "smoke ok" in out.stdout
    stat = _run([str(tmp_path / "venv" / "bin" / "shmlot-stat"), "--help"], cwd=str(tmp_path))
    assert "usage" in stat.stdout.lower()


def test_wheel_is_manylinux(dists):
    """auditwheel finds the wheel consistent with a manylinux tag (it links libc only), so
    ``auditwheel repair`` can retag it."""
    auditwheel = shutil.which("auditwheel", path=os.path.dirname(sys.executable))
    if auditwheel is None:
        pytest.skip("needs auditwheel (pip install auditwheel)")
    out = _run([auditwheel, "show", str(dists[1])]).stdout
    assert "manylinux_" in out, out


def test_types_check_with_mypy(tmp_path):
    """The stubs type-check the examples and a typed usage file, and catch a wrong call."""
    pytest.importorskip("mypy", reason="needs mypy")
    cmd = [sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "cache"),
           "--no-error-summary"]
    files = [os.path.join(ROOT, "tests", "typed_usage.py")] + [
        os.path.join(ROOT, "tools", "examples", f)
        for f in sorted(os.listdir(os.path.join(ROOT, "tools", "examples")))
        if f.endswith(".py")]
    _run(cmd + files, cwd=ROOT)
    bad = tmp_path / "bad.py"
    bad.write_text("import shmlot\nshmlot.Lock(name=3).acquire(timeout='x')\n")
    proc = subprocess.run(cmd + [str(bad)], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stdout.count("error:") == 2, proc.stdout


def test_typed_usage_runs(lot):
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    try:
        import typed_usage
        out = typed_usage.main(lot)
    finally:
        sys.path.remove(os.path.join(ROOT, "tests"))
    assert out[0] is True


def test_help_explains_the_primitives():
    text = pydoc.render_doc(shmlot.Lock)
    for words in ("threading.Lock", "OwnerDiedError", "OwnerDiedWarning", "name=", "Lock.at",
                  "timeout"):
        assert words in text, words
    assert "_acquire_slow" not in text.split("Methods inherited")[0]
    for cls in (shmlot.RLock, shmlot.Condition, shmlot.Semaphore, shmlot.Event, shmlot.Barrier,
                shmlot.RWLock, shmlot.get_context):
        assert len((cls.__doc__ or "").strip()) > 40, cls
