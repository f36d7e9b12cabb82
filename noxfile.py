"""Koi's test entry point: `nox` runs lint and every package's tests, each in a fresh venv.

Each package is tested in a venv holding only its declared dependencies (siblings installed
editable from their folders), so a missing dependency fails here, not in a user's install.
On a machine without an NVIDIA GPU, torch is pinned to the CPU build through
constraints/cpu.txt and Triton kernels run in the interpreter (TRITON_INTERPRET=1); on a GPU
machine nothing is pinned and the same tests run on the card.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import nox

sys.path.insert(0, str(Path(__file__).parent / "tools"))
from koi_data import DataError, data_root  # noqa: E402

nox.options.sessions = ["lint", "schema", "tools", "tests"]  # `gpu` runs only when asked for
nox.options.default_venv_backend = "venv"

PACKAGES = {
    "koi-tokenizer": [],
    "koi-quant": [],
    "koi-kernels": ["koi-quant"],
    "koi-eval": ["koi-tokenizer"],
    "koi-train": ["koi-tokenizer", "koi-quant", "koi-kernels", "koi-eval"],
}
KOI_IMPORTS = {name: name.replace("-", "_") for name in PACKAGES}
# The real data each package's tests read (tools/koi_data.py finds or fetches it); None: every file.
TEST_DATA = {
    "koi-tokenizer": None,  # the parity test encodes the whole corpus
    "koi-quant": ["corpus/pydocs-val.txt"],
    "koi-kernels": [],
    "koi-eval": ["corpus/pydocs-val.txt"],
    "koi-train": ["corpus/pydocs-val.txt"],
}


def has_gpu() -> bool:
    if os.environ.get("KOI_FORCE_CPU"):
        return False
    smi = shutil.which("nvidia-smi")
    return bool(smi) and subprocess.run([smi, "-L"], capture_output=True).returncode == 0


def constraint_args() -> list[str]:
    return [] if has_gpu() else ["-c", "constraints/cpu.txt"]


def test_env() -> dict[str, str]:
    return {} if has_gpu() else {"TRITON_INTERPRET": "1"}


def data_env(session: nox.Session, package: str) -> dict[str, str]:
    """KOI_SHARED_DATA for the tests: ../shared/data when it is there, else the files fetched once into a cache."""
    if TEST_DATA[package] == []:
        return {}
    try:
        return {"KOI_SHARED_DATA": str(data_root(TEST_DATA[package], log=session.log))}
    except DataError as exc:
        session.error(f"test data: {exc}")


@nox.session
def lint(session: nox.Session) -> None:
    """ruff over every package, the benches and this file."""
    session.install("-c", "constraints/tools.txt", "ruff")
    session.run("ruff", "check", "packages", "bench", "tools", "noxfile.py")


@nox.session
@nox.parametrize("package", list(PACKAGES))
def tests(session: nox.Session, package: str) -> None:
    """One package's tests in a venv with only that package's dependencies."""
    siblings = [arg for dep in PACKAGES[package] for arg in ("-e", f"packages/{dep}")]
    session.install(*constraint_args(), *siblings, "-e", f"packages/{package}[test]")
    others = [KOI_IMPORTS[p] for p in PACKAGES if p != package and p not in PACKAGES[package]]
    # The package must work without the koi packages it does not declare.
    session.run("python", "-c", f"import importlib.util as u; extra = [m for m in {others!r} if u.find_spec(m)]; "
                "assert not extra, f'undeclared koi packages installed: {extra}'")
    try:
        session.run("pytest", "-q", "-p", "no:cacheprovider", f"packages/{package}/tests", *session.posargs,
                    env={**test_env(), **data_env(session, package)})
    finally:
        drop_venv(session)


def drop_venv(session: nox.Session) -> None:
    """With KOI_NOX_DROP_VENVS=1 (CI sets it), delete a session's venv once its tests ran.

    A venv with torch and triton takes about 2 GB; five of them side by side can fill a small CI
    disk, while one at a time fits. Locally the venvs stay, so `nox -r` reuses them.
    """
    if os.environ.get("KOI_NOX_DROP_VENVS") == "1":
        shutil.rmtree(session.virtualenv.location, ignore_errors=True)
        session.log(f"dropped {session.virtualenv.location} (KOI_NOX_DROP_VENVS=1)")


@nox.session(venv_backend="none")
def gpu(session: nox.Session) -> None:
    """Every package's tests on the card, in this interpreter: your CUDA torch, no pins, no interpreter mode.

    A GPU machine already holds the right torch and triton; a fresh venv would have to download a
    multi-GB CUDA build, or (offline) could not be made at all. So this session installs only the
    koi packages (editable, no dependencies) into the current environment and runs all tests there.
    """
    if not has_gpu():
        session.error("the gpu session needs an NVIDIA GPU (nvidia-smi -L failed)")
    session.run("python", "-c", "import torch; assert torch.cuda.is_available(), 'torch cannot see the GPU'; "
                "print('torch', torch.__version__, 'on', torch.cuda.get_device_name())")
    editable = [arg for name in PACKAGES for arg in ("-e", f"packages/{name}")]
    session.run("python", "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", *editable)
    env = {"TRITON_INTERPRET": "0", "NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
    chosen = os.environ.get("KOI_PACKAGES", "").split() or PACKAGES  # e.g. KOI_PACKAGES="koi-quant koi-kernels"
    unknown = sorted(set(chosen) - set(PACKAGES))
    if unknown:
        session.error(f"KOI_PACKAGES names {', '.join(unknown)}; the packages are {', '.join(PACKAGES)}")
    failed = []
    for name in chosen:  # every chosen package runs, so one failure does not hide another's
        try:
            session.run("python", "-m", "pytest", "-q", "-p", "no:cacheprovider", f"packages/{name}/tests", *session.posargs,
                        env={**env, **data_env(session, name)})
        except nox.command.CommandFailed:
            failed.append(name)
    if failed:
        session.error(f"tests failed on the GPU in: {', '.join(failed)}")


@nox.session
def schema(session: nox.Session) -> None:
    """The JSON Schema is valid and the typed config mirrors it key for key, default for default.

    Reading a config needs only jsonschema, so this session runs without torch, straight from the source tree.
    """
    session.install("jsonschema>=4.18", "pytest>=7")
    session.run("pytest", "-q", "-p", "no:cacheprovider", "packages/koi-train/tests/test_schema.py",
                env={"PYTHONPATH": "packages/koi-train/src"})


@nox.session
def tools(session: nox.Session) -> None:
    """The repo's own tools (the data fetcher first): standard library only, so pytest is all they need."""
    session.install("pytest>=7")
    session.run("pytest", "-q", "-p", "no:cacheprovider", "tools/tests")


@nox.session
@nox.parametrize("package", list(PACKAGES))
def wheel(session: nox.Session, package: str) -> None:
    """Build a package's wheel (what a release would upload)."""
    session.install("-c", "constraints/tools.txt", "build")
    session.run("python", "-m", "build", "--wheel", "--outdir", "dist", f"packages/{package}")


@nox.session(venv_backend="none")
def boundaries(session: nox.Session) -> None:
    """Imports go one way: no back-import between packages (lazy ones too), no file cycle, declared koi deps match.

    Reads the sources with `ast` in nox's own interpreter (no venv, nothing installed), in about a second.
    The allowed graph lives in tools/check_imports.py; it must agree with PACKAGES here.
    """
    sys.path.insert(0, "tools")
    from check_imports import ALLOWED

    if {name: tuple(deps) for name, deps in PACKAGES.items()} != ALLOWED:
        session.error("noxfile PACKAGES and tools/check_imports.py ALLOWED disagree on which koi package may import which")
    session.run(sys.executable, "tools/check_imports.py", "packages")


nox.options.sessions.append("boundaries")  # fast, so CI's default run has it


def _closure(package: str) -> list[str]:
    """The koi packages ``package`` needs installed, dependencies first."""
    seen: list[str] = []
    for dep in PACKAGES[package]:
        for name in [*_closure(dep), dep]:
            if name not in seen:
                seen.append(name)
    return seen


@nox.session
@nox.parametrize("package", list(PACKAGES))
def release(session: nox.Session, package: str) -> None:
    """Build one package's sdist and wheel, check them, install each alone in a clean venv and use it.

    `python3 -m nox -s "release(package='koi-quant')"` leaves dist/koi-quant/ ready to upload and prints
    the tag (koi-quant-v0.1.0). Not in the default sessions: twine may come from PyPI. Sibling koi
    packages are built into a local wheelhouse (as their own releases would be); everything else is
    installed from the index, torch pinned to the CPU build where there is no GPU.
    """
    session.install("-c", "constraints/tools.txt", "build", "twine>=5")
    out = Path("dist") / package
    shutil.rmtree(out, ignore_errors=True)
    session.run("python", "-m", "build", "--outdir", str(out), f"packages/{package}")  # the wheel is built from the sdist
    archives = sorted(str(p) for p in out.iterdir())
    session.run("twine", "check", "--strict", *archives)
    session.run("python", "tools/release_check.py", package, str(out))
    wheelhouse = Path(session.create_tmp()) / "wheelhouse"
    shutil.rmtree(wheelhouse, ignore_errors=True)
    for dep in _closure(package):
        session.run("python", "-m", "build", "--wheel", "--outdir", str(wheelhouse), f"packages/{dep}", silent=True)
    version = next(p.name for p in out.glob("*.whl")).split("-")[1]
    for archive in (next(out.glob("*.whl")), next(out.glob("*.tar.gz"))):
        venv = Path(session.create_tmp()) / f"clean-{archive.suffix.strip('.')}"
        shutil.rmtree(venv, ignore_errors=True)
        session.run("python", "-m", "venv", str(venv))
        python = str(venv / "bin" / "python")
        session.run(python, "-m", "pip", "install", "-q", *constraint_args(), "--find-links", str(wheelhouse), str(archive),
                    external=True)
        session.run(python, "tools/smoke_install.py", package, version, external=True, env=test_env())


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy over every package's sources (not in the default sessions: it installs all five packages and torch)."""
    editable = [arg for name in PACKAGES for arg in ("-e", f"packages/{name}")]
    session.install(*constraint_args(), *editable, "mypy>=1.10")
    session.run("mypy", *[f"packages/{name}/src" for name in PACKAGES], *session.posargs)


@nox.session
def floor(session: nox.Session) -> None:
    """The test suites against the oldest torch the packages declare (2.6), not the one CI pins.

    Not in the default sessions: PyPI's torch 2.6 wheel for Linux is the CUDA build (several GB with its
    nvidia-* dependencies); point pip at a CPU index (PIP_INDEX_URL) where one is reachable.
    """
    siblings = [arg for name in PACKAGES for arg in ("-e", f"packages/{name}[test]")]
    # numpy 1.x: the floor of numpy too, and triton 3.2's interpreter fails on numpy 2's scalar rules
    session.install("torch==2.6.*", "triton<3.3", "numpy<2", *siblings)
    for name in PACKAGES:
        session.run("pytest", "-q", "-p", "no:cacheprovider", f"packages/{name}/tests", *session.posargs, env=test_env())
