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

nox.options.sessions = ["lint", "schema", "tests"]  # `gpu` runs only when asked for
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
    session.run("pytest", "-q", "-p", "no:cacheprovider", f"packages/{package}/tests", *session.posargs,
                env={**test_env(), **data_env(session, package)})


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
    failed = []
    for name in PACKAGES:  # every package runs, so one failure does not hide another's
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
@nox.parametrize("package", list(PACKAGES))
def wheel(session: nox.Session, package: str) -> None:
    """Build a package's wheel (what a release would upload)."""
    session.install("-c", "constraints/tools.txt", "build")
    session.run("python", "-m", "build", "--wheel", "--outdir", "dist", f"packages/{package}")
