"""Encoding spread over processes: long texts cut at piece boundaries, the caller sharing the work."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

import koi_tokenizer.parallel as parallel
from koi_tokenizer.parallel import cut_at_piece_boundaries

HELD_OUT = sorted((Path(__file__).parent / "data").glob("heldout-*.txt"))
SPACEY = ["a  b   c\t d", " lead", "trail  ", "x\n  y \n z", "'ll 's  're", "\u3000 a\xa0 b", "no_spaces_at_all"]


@pytest.mark.parametrize("size", [1, 7, 200, 5000])
def test_cuts_join_to_the_texts_ids(size, pydocs_val_text, tiktoken_gpt2):
    texts = [p.read_text(encoding="utf-8") for p in HELD_OUT] + [pydocs_val_text[:40_000]] + SPACEY
    for text in texts:
        segments = cut_at_piece_boundaries(text, size)
        assert "".join(segments) == text
        assert all(segment for segment in segments) or segments == [""]
        assert [i for s in segments for i in tiktoken_gpt2.encode_ordinary(s)] == tiktoken_gpt2.encode_ordinary(text)


def test_cuts_on_random_whitespace_runs(tiktoken_gpt2):
    rng = random.Random(0)
    alphabet = [*"ab  \t\n'sx1.,", "\u3000", "\xa0", "  ", "'ll", "\r\n"]
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        segments = cut_at_piece_boundaries(text, rng.randint(1, 8))
        assert [i for s in segments for i in tiktoken_gpt2.encode_ordinary(s)] == tiktoken_gpt2.encode_ordinary(text), repr(text)


def test_two_long_texts_spread_over_two_processes(monkeypatch, gpt2_tokenizer, pydocs_val_text, tiktoken_gpt2):
    """Fewer texts than workers still forks: each long text is cut, and the caller encodes its share too."""
    monkeypatch.setattr(parallel, "CHUNK_CHARS", 16_384)
    started = []
    start_workers = parallel.EncodePool._start_workers
    monkeypatch.setattr(parallel.EncodePool, "_start_workers", lambda pool: (started.append(pool.workers), start_workers(pool)))
    texts = [pydocs_val_text[:150_000], pydocs_val_text[150_000:260_000]]
    assert gpt2_tokenizer.encode_batch(texts, disallowed_special=(), workers=2) == [tiktoken_gpt2.encode_ordinary(t) for t in texts]
    assert started == [2]


def test_small_batches_do_not_fork(monkeypatch, gpt2_tokenizer, tiktoken_gpt2):
    monkeypatch.setattr(parallel.EncodePool, "_start_workers", lambda pool: pytest.fail("forked for a small batch"))
    texts = [p.read_text(encoding="utf-8") for p in HELD_OUT]
    assert gpt2_tokenizer.encode_batch(texts, workers=4) == [tiktoken_gpt2.encode_ordinary(t) for t in texts]
