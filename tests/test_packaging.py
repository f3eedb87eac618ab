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

from helpers.lots import new_lot_name

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = [pytest.mark.packaging, pytest.mark.timeout(600)]

# what a user needs from the sdist: the build inputs, and what the README refers to
SDIST_MUST_HAVE = ["cffi_build.py", "setup.py", "pyproject.toml", "MANIFEST.in", "LICENSE",
                   "README.md", "install.sh", ".ci/run", "shmlot/py.typed", "shmlot/__init__.pyi",
                   "tests/conftest.py", "tests/helpers/__init__.py", "tests/lock_tests_shmlot.py",
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


# ---- the other Pythons ------------------------------------------------------------------------
#
# The whole suite runs on the interpreter that runs pytest; every other Python the package claims
# (3.9-3.13) that is on this machine gets the sdist built and installed into a fresh venv (which
# compiles the C-API module against that version's headers, with its version-only branches) and a
# representative subset of the suite run from the sdist's own tests/. Interpreters that are not
# here are skipped; two run at a time.

CLAIMED = [(3, minor) for minor in range(9, 14)]
SUBSET = ["test_lock_tests.py",          # threading's exact behaviour, version by version
          "test_with_owner_death.py",    # owner death in `with`, a Pool with killed workers
          "test_context.py",             # multiprocessing's call forms and context
          "test_atomics.py"]             # the C-API module's atomics, LockCore subclasses


def _find_python(version):
    """A working interpreter of ``version`` (major, minor): on PATH or under ~/.pyenv."""
    import glob
    name = "python%d.%d" % version
    candidates = sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{version[0]}."
                                                     f"{version[1]}.*/bin/{name}")), reverse=True)
    on_path = shutil.which(name)
    if on_path:
        candidates.append(on_path)
    for exe in candidates:
        try:
            out = subprocess.run([exe, "-c", "import sys; print(sys.version_info[:2])"],
                                 capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out.returncode == 0 and out.stdout.strip() == str(version):
            return exe
    return None


OTHERS = [v for v in CLAIMED if v != sys.version_info[:2]]


def _subset_run(python, sdist, workdir):
    """venv + ``pip install sdist[test]`` + the subset; returns (ok, log)."""
    log = []
    try:
        vpy = make_venv(os.path.join(workdir, "venv"), python)
        _run([vpy, "-m", "pip", "install", "-q", f"{sdist}[test]"], cwd=workdir, timeout=900)
        with tarfile.open(sdist) as tar:
            tar.extractall(workdir)
        src = os.path.join(workdir, os.path.basename(str(sdist))[:-len(".tar.gz")])
        # the sdist's tests and tools, without its shmlot/ (which tests/helpers would put first on
        # sys.path, in place of the installed package)
        suite = os.path.join(workdir, "suite")
        for part in ("tests", "tools"):
            shutil.copytree(os.path.join(src, part), os.path.join(suite, part))
        shutil.copy(os.path.join(src, "pyproject.toml"), suite)  # pytest's settings
        tests = [os.path.join(suite, "tests", t) for t in SUBSET]
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)
        env.pop("SHMLOT_LOT", None)
        proc = subprocess.run([vpy, "-m", "pytest", "-p", "no:cacheprovider", "-q"] + tests,
                              cwd=workdir, env=env, capture_output=True, text=True,
                              timeout=1200)
        log.append(proc.stdout[-6000:] + proc.stderr[-3000:])
        return proc.returncode == 0, "\n".join(log)
    except (AssertionError, subprocess.TimeoutExpired) as exc:
        log.append(str(exc)[-6000:])
        return False, "\n".join(log)


@pytest.fixture(scope="module")
def other_python_runs(dists, tmp_path_factory):
    """Start every other claimed Python's subset run, two at a time; {version: future}."""
    from concurrent.futures import ThreadPoolExecutor
    pool = ThreadPoolExecutor(max_workers=2)
    futures = {}
    for version in OTHERS:
        python = _find_python(version)
        if python is not None:
            workdir = str(tmp_path_factory.mktemp("py%d%d" % version))
            futures[version] = pool.submit(_subset_run, python, dists[0], workdir)
    yield futures
    pool.shutdown(wait=True)


@pytest.mark.timeout(2400)
@pytest.mark.parametrize("version", OTHERS, ids=["py%d.%d" % v for v in OTHERS])
def test_other_python_builds_and_passes_subset(other_python_runs, version):
    if version not in other_python_runs:
        pytest.skip("Python %d.%d is not installed here" % version)
    ok, log = other_python_runs[version].result()
    assert ok, log
