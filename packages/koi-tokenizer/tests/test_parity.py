"""The fast engine must encode exactly as tiktoken's gpt2, and as the pure-Python reference."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from koi_tokenizer import ReferenceBPE
from koi_tokenizer.pretokenize import pretokenize

TRICKY = [
    "Hello world", "  leading spaces", "trailing spaces   ", "tabs\tand\nnewlines\r\n", "\n\n\n   \n",
    "it's we're they've I'm you'll he'd 'S 'T", "don't", "1234567890 3.14159 -42 1e10", "x = a+b*c//d",
    "emoji 🐍🚀 and 👩‍👩‍👧", "日本語のテキスト", "Ünïcödé Ĉĥàŕš", "mixed123abc456", "    def f(x):\n        return x\n",
    "\u00a0nbsp\u2003em space", "a\x1cb\x1fc", "Ǆ ǅ ǆ", "²³ ½ Ⅻ ٣", "\u200bzero width", "", " ", "a", "  \n",
]


@pytest.fixture(scope="module")
def reference(gpt2_tokenizer):
    data = gpt2_tokenizer.bpe_data
    return ReferenceBPE(data.vocab, data.merges)


@pytest.mark.parametrize("text", TRICKY)
def test_tricky_strings_match_tiktoken_and_reference(text, gpt2_tokenizer, tiktoken_gpt2, reference):
    expected = tiktoken_gpt2.encode_ordinary(text)
    assert gpt2_tokenizer.encode(text) == expected
    assert reference.encode(text) == expected
    assert gpt2_tokenizer.decode(expected) == text


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=60))
def test_random_unicode_matches_reference_and_tiktoken(text, gpt2_tokenizer, tiktoken_gpt2, reference):
    ids = gpt2_tokenizer.encode(text, disallowed_special=())
    assert ids == tiktoken_gpt2.encode_ordinary(text)
    assert ids == reference.encode(text)
    assert gpt2_tokenizer.decode(ids) == text


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet=" \t\n'sdmtlvre0123456789abcXYZ.,!é🐍", max_size=40))
def test_whitespace_contraction_number_mixes(text, gpt2_tokenizer, tiktoken_gpt2, reference):
    assert gpt2_tokenizer.encode(text) == tiktoken_gpt2.encode_ordinary(text) == reference.encode(text)


def test_pretokenizer_matches_tiktoken_regex_on_real_text(pydocs_val_text):
    import regex

    pattern = regex.compile(r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
    sample = pydocs_val_text[:300_000]
    assert pretokenize(sample) == pattern.findall(sample)


def test_reference_equals_fast_engine_on_real_text(pydocs_val_text, gpt2_tokenizer, reference):
    sample = pydocs_val_text[:150_000]
    assert reference.encode(sample) == gpt2_tokenizer.encode(sample, disallowed_special=())


def test_whole_shared_corpus_matches_tiktoken_and_round_trips(corpus_files, gpt2_tokenizer, tiktoken_gpt2):
    total = 0
    for path in corpus_files:
        text = path.read_text(encoding="utf-8")
        ids = gpt2_tokenizer.encode(text, allowed_special="all")
        expected = tiktoken_gpt2.encode(text, allowed_special="all")
        assert len(ids) == len(expected), path.name
        assert ids == expected, f"{path.name}: first mismatch at {next(i for i, (a, b) in enumerate(zip(ids, expected)) if a != b)}"
        assert gpt2_tokenizer.decode(ids) == text, path.name
        total += len(ids)
    assert total > 12_000_000  # DATA.md: 12.55 M training tokens plus the val files
