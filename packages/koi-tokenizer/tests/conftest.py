"""Shared fixtures: the real GPT-2 files and corpus from ../shared/data (see shared/DATA.md)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


def shared_data() -> Path:
    root = Path(os.environ.get("KOI_SHARED_DATA", REPO.parent / "shared" / "data"))
    if not (root / "gpt2" / "vocab.json").exists():
        raise RuntimeError(f"real test data not found at {root}; set KOI_SHARED_DATA to the shared/data folder")
    return root


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
