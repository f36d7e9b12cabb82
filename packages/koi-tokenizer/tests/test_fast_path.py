"""The parts of the fast encoder, each against a plain reference: splitter, batch BPE, key table, cache."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from koi_tokenizer import ReferenceBPE, Tokenizer
from koi_tokenizer.batch_bpe import BatchBPE
from koi_tokenizer.piece_bpe import PieceBPE
from koi_tokenizer.piece_table import MISSING, PieceTable
from koi_tokenizer.pretokenize import pretokenize
from koi_tokenizer.splitter import code_points, piece_bounds


def _pieces_of(text: str) -> list[str]:
    bounds = piece_bounds(code_points(text)).tolist()
    return [text[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


@settings(max_examples=400, deadline=None)
@given(text=st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=80))
def test_array_splitter_equals_readable_scan_on_any_text(text):
    assert _pieces_of(text) == pretokenize(text)


@settings(max_examples=400, deadline=None)
@given(text=st.text(alphabet=" \t\n\r'sdmtlvreSD0123x.,é\u00a0\u3000", max_size=50))
def test_array_splitter_on_space_apostrophe_and_contraction_mixes(text):
    assert _pieces_of(text) == pretokenize(text)


def test_array_splitter_on_real_text(pydocs_val_text):
    sample = pydocs_val_text[:200_000]
    assert _pieces_of(sample) == pretokenize(sample)


@pytest.fixture(scope="module")
def reference(gpt2_tokenizer):
    data = gpt2_tokenizer.bpe_data
    return ReferenceBPE(data.vocab, data.merges)


def _split(tokens: np.ndarray, lengths: np.ndarray) -> list[list[int]]:
    ends = np.cumsum(lengths)
    return [tokens[e - n : e].tolist() for e, n in zip(ends, lengths)]


def test_batch_bpe_equals_reference_on_real_and_awkward_pieces(gpt2_tokenizer, reference, pydocs_val_text):
    real = list(dict.fromkeys(pretokenize(pydocs_val_text[:60_000])))
    awkward = ["aaaaaaa", " " * 33, "\x00\x00ab\x00", "ééééé", "🐍🐍", "x", "====================", "'ll"]
    pieces = [p.encode("utf-8") for p in real + awkward]
    tokens, lengths = BatchBPE(gpt2_tokenizer.bpe_data.vocab, gpt2_tokenizer.bpe_data.merges).encode(pieces)
    expected = [[reference.vocab[part] for part in reference._merge_word(p)] for p in pieces]
    assert _split(tokens, lengths) == expected


@settings(max_examples=60, deadline=None)
@given(pieces=st.lists(st.binary(min_size=1, max_size=24), min_size=1, max_size=40))
def test_batch_bpe_equals_reference_on_random_bytes(pieces, gpt2_tokenizer, reference):
    tokens, lengths = BatchBPE(gpt2_tokenizer.bpe_data.vocab, gpt2_tokenizer.bpe_data.merges).encode(pieces)
    assert _split(tokens, lengths) == [[reference.vocab[part] for part in reference._merge_word(p)] for p in pieces]


def test_both_bpe_engines_agree(gpt2_tokenizer, pydocs_val_text):
    bpe = PieceBPE(gpt2_tokenizer.bpe_data)
    pieces = list(dict.fromkeys(pretokenize(pydocs_val_text[:40_000])))
    engine, batch = bpe.engine_encode(pieces), bpe.batch_encode(pieces)
    assert _split(*engine) == _split(*batch)


def test_piece_table_with_crowded_slots_and_growth():
    rng = np.random.default_rng(0)
    table = PieceTable(bits=4)  # 16 slots: inserts must grow it and probe past taken slots
    keys = np.unique(rng.integers(1, 1 << 63, 5000, dtype=np.uint64))
    # Keys that share their home slot: equal top bits after the spreading multiply are likely in a
    # small table; add runs of consecutive keys as well.
    keys = np.unique(np.concatenate([keys, np.arange(1, 200, dtype=np.uint64)]))
    records = rng.permutation(len(keys)).astype(np.int64)
    order = rng.permutation(len(keys))
    for part in np.array_split(order, 7):
        assert table.insert(keys[part], records[part]).all()
    assert (table.lookup(keys) == records).all()
    absent = np.setdiff1d(rng.integers(1, 1 << 63, 3000, dtype=np.uint64), keys)
    assert (table.lookup(absent) == MISSING).all()
    assert not table.insert(keys[:10], records[:10]).any()  # present already: not placed twice
    assert (table.lookup(keys) == records).all()


def test_cache_stays_exact_when_every_hashed_key_collides(monkeypatch, data_dir, tiktoken_gpt2, pydocs_val_text):
    """Force all 8..16-byte pieces of one length onto one key: the stored words must tell them apart."""
    import koi_tokenizer.piece_keys as piece_keys

    monkeypatch.setattr(piece_keys, "_FIRST_FACTOR", np.uint64(0))
    monkeypatch.setattr(piece_keys, "_LAST_FACTOR", np.uint64(0))
    tokenizer = Tokenizer.from_gpt2_files(data_dir / "gpt2" / "vocab.json", data_dir / "gpt2" / "merges.txt")
    sample = pydocs_val_text[:30_000]
    for _ in range(2):  # the second pass runs on a warm cache
        assert tokenizer.encode(sample, disallowed_special=()) == tiktoken_gpt2.encode_ordinary(sample)


def test_caches_clear_at_their_bound_and_stay_exact(monkeypatch, data_dir, tiktoken_gpt2, pydocs_val_text):
    import koi_tokenizer.fast_path as fast_path
    import koi_tokenizer.small_text as small_text

    monkeypatch.setattr(fast_path, "MAX_CACHED_PIECES", 500)
    monkeypatch.setattr(small_text, "MAX_CACHED_PIECES", 500)
    tokenizer = Tokenizer.from_gpt2_files(data_dir / "gpt2" / "vocab.json", data_dir / "gpt2" / "merges.txt")
    seeded = len(tokenizer._pieces)
    text = pydocs_val_text[:80_000]
    chunks = [text[i : i + 4000] for i in range(0, len(text), 4000)]
    for chunk in chunks:
        expected = tiktoken_gpt2.encode_ordinary(chunk)
        assert tokenizer.encode_ordinary_array(chunk).tolist() == expected  # the array path
        assert tokenizer.encode(chunk, disallowed_special=()) == expected  # the small-text path
    assert len(tokenizer._pieces) < seeded + 2000
    assert len(tokenizer._small._pieces) < seeded + 2000


def test_long_pieces_and_mixed_scripts(gpt2_tokenizer, tiktoken_gpt2):
    rng = random.Random(0)
    words = ["x" * 40, " " * 300, "-" * 70, "αβγδεζηθικλμνξοπ", "日本語のテキスト", "émigré", "naïve", "🐍" * 9, "it's"]
    for _ in range(50):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(1, 30)))
        assert gpt2_tokenizer.encode(text) == tiktoken_gpt2.encode_ordinary(text)


def test_lone_surrogates_become_replacement_characters_like_tiktoken(gpt2_tokenizer, tiktoken_gpt2):
    text = "a\ud800b \udfff"
    assert gpt2_tokenizer.encode(text) == tiktoken_gpt2.encode_ordinary(text)


@settings(max_examples=300, deadline=None)
@given(texts=st.lists(st.text(alphabet=" \t\n'sdmtlvreab0é🐍.", max_size=12), min_size=1, max_size=8))
def test_texts_encoded_together_equal_texts_encoded_alone(texts, gpt2_tokenizer, tiktoken_gpt2):
    """Joined texts must split exactly as alone: no space attaches, no run or contraction spans a cut."""
    together = gpt2_tokenizer.encode_ordinary_many(texts)
    assert [ids.tolist() for ids in together] == [tiktoken_gpt2.encode_ordinary(t) for t in texts]


def test_batch_of_real_documents_equals_one_by_one(gpt2_tokenizer, pydocs_val_text):
    documents = pydocs_val_text.split("\n\n")[:400]
    assert gpt2_tokenizer.encode_batch(documents, disallowed_special=()) == [
        gpt2_tokenizer.encode(d, disallowed_special=()) for d in documents
    ]
