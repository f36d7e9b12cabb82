"""koi_train's public names: visible to type checkers, importable, and the version read from pyproject.toml."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import koi_train

tomllib = pytest.importorskip("tomllib")  # Python 3.11+
PACKAGES = Path(__file__).resolve().parents[2]


def _type_checking_imports() -> dict[str, str]:
    """name -> module of each `from .x import name` under `if TYPE_CHECKING:` in koi_train/__init__.py."""
    tree = ast.parse(Path(koi_train.__file__).read_text())
    block = next(n for n in tree.body if isinstance(n, ast.If) and getattr(n.test, "id", "") == "TYPE_CHECKING")
    return {alias.name: "." + node.module for node in block.body for alias in node.names}


def test_type_checking_block_lists_every_lazy_export():
    assert _type_checking_imports() == koi_train._EXPORTS
    assert sorted(koi_train.__all__) == sorted(koi_train._EXPORTS)
    assert set(koi_train.__all__) <= set(dir(koi_train))


@pytest.mark.parametrize("name", sorted(koi_train._EXPORTS))
def test_every_export_resolves(name):
    assert getattr(koi_train, name) is not None


@pytest.mark.parametrize("package", ["koi-tokenizer", "koi-quant", "koi-kernels", "koi-eval", "koi-train"])
def test_version_is_the_one_in_pyproject(package):
    module = __import__(package.replace("-", "_"))
    declared = tomllib.loads((PACKAGES / package / "pyproject.toml").read_text())["project"]["version"]
    assert module.__version__ == declared
