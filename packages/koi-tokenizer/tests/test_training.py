"""BPE training is deterministic, round-trips text and lays out ids like GPT-2."""

from __future__ import annotations

import pytest

from koi_tokenizer import EOT_TOKEN, Tokenizer, train_bpe


@pytest.fixture(scope="module")
def documents(pydocs_val_text):
    return [d for d in pydocs_val_text.split(EOT_TOKEN) if d.strip()][:25]


def test_training_is_deterministic(documents, tmp_path):
    first = train_bpe(documents, vocab_size=700)
    second = train_bpe(documents, vocab_size=700)
    assert first.bpe_data.merges == second.bpe_data.merges
    assert first.bpe_data.vocab == second.bpe_data.vocab


def test_trained_vocab_layout_and_round_trip(documents, tmp_path):
    tok = train_bpe(documents, vocab_size=700)
    assert tok.vocab_size == 700
    assert tok.eot_id == 699  # specials after the ordinary tokens, as in GPT-2
    assert [tok.bpe_data.vocab[bytes([b])] for b in range(256)] == list(range(256))
    text = "\n".join(documents[:3])
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert len(ids) < len(text.encode()) / 2  # merges learned from real text compress it
    path = tmp_path / "bpe.json"
    tok.save(path)
    assert Tokenizer.load(path).encode(text) == ids


def test_vocab_size_too_small_is_refused(documents):
    with pytest.raises(ValueError, match="vocab_size"):
        train_bpe(documents, vocab_size=100)
