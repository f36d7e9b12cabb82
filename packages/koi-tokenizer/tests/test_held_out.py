"""Unseen real text, short and long, every API, a fresh tokenizer: token for token equal to tiktoken.

The text (tests/data, see its README) comes from Debian documentation that is not in
../shared/data, so neither path's cache has seen it; each test starts from a fresh tokenizer
because the first encounter of a piece is where a cache or its seed can be wrong.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path

import pytest

from koi_tokenizer import Tokenizer
from koi_tokenizer.small_text import bmp_letters_and_numbers, bmp_piece_pattern, fits

HELD_OUT = sorted((Path(__file__).parent / "data").glob("heldout-*.txt"))

# Chat- and code-like strings that take the short path, with the Unicode that trips splitters up:
# supplementary-plane letters and digits (𝐀, 𝟏, 𠀀: the BMP-only pattern must hand these to the
# array path), emoji with joiners and skin tones, combining marks, RTL text, the C0 separators
# U+001C..U+001F (str.isspace() but not \s), NEL, NBSP, line/paragraph separators, lone surrogates.
ADVERSARIAL = [
    "𝐇𝐞𝐥𝐥𝐨 𝐰𝐨𝐫𝐥𝐝", "x = 𝟏𝟐𝟑 + 4", "𠀀𠀁 CJK ext B", "mixed 𝐀bc's 𝟏2", "👩🏽‍💻 ships 🚀🚀 it's done 👍🏿",
    "e\u0301te\u0301 cafe\u0301 n\u0303", "שלום עולם مرحبا بالعالم 123", "a\x1cb\x1dc\x1e d\x1f", "tab\x85nel\xa0nbsp",
    "line\u2028sep\u2029para", "a\ud800b \udfff c", "  'll 'S 'RE ’s", "\u3000全角\u3000スペース", "Ⅻ ½ ² ٣ ໓",
    "<|endoftext|> inside text", "def f(x):\n\treturn x**2  # 😀\n", "\r\n\r\n  \n", "🐍" * 40,
]


@pytest.fixture
def fresh(data_dir) -> Tokenizer:
    return Tokenizer.from_gpt2_files(data_dir / "gpt2" / "vocab.json", data_dir / "gpt2" / "merges.txt")


@pytest.fixture(scope="module")
def fresh_for_module(data_dir) -> Tokenizer:
    """One fresh tokenizer for a run of short cases (each new to it); a tokenizer costs ~1 s to build."""
    return Tokenizer.from_gpt2_files(data_dir / "gpt2" / "vocab.json", data_dir / "gpt2" / "merges.txt")


def _documents(path: Path) -> list[str]:
    return [d for d in path.read_text(encoding="utf-8").split("\n\n") if d]


@pytest.mark.parametrize("path", HELD_OUT, ids=lambda p: p.stem)
def test_short_documents_one_call_each_equal_tiktoken(path, fresh, tiktoken_gpt2):
    for document in _documents(path):
        assert fresh.encode(document) == tiktoken_gpt2.encode_ordinary(document), document[:80]


@pytest.mark.parametrize("path", HELD_OUT, ids=lambda p: p.stem)
def test_batch_and_whole_file_equal_tiktoken(path, fresh, tiktoken_gpt2):
    documents = _documents(path)
    assert fresh.encode_batch(documents) == tiktoken_gpt2.encode_ordinary_batch(documents, num_threads=1)
    text = path.read_text(encoding="utf-8") * 3  # past the short path's length limit: the array path
    assert fresh.encode(text) == tiktoken_gpt2.encode_ordinary(text)


def test_short_and_array_paths_agree_on_every_held_out_document(fresh):
    for path in HELD_OUT:
        for document in _documents(path):
            assert fresh.encode_ordinary(document) == fresh.encode_ordinary_array(document).tolist()


@pytest.mark.parametrize("text", ADVERSARIAL)
def test_adversarial_unicode_equals_tiktoken_on_both_paths(text, fresh_for_module, tiktoken_gpt2):
    fresh = fresh_for_module
    expected = tiktoken_gpt2.encode(text, allowed_special="all")
    assert fresh.encode(text, allowed_special="all") == expected
    assert fresh.encode_batch([text, text[::-1]], allowed_special="all") == [
        expected, tiktoken_gpt2.encode(text[::-1], allowed_special="all")]
    ordinary = tiktoken_gpt2.encode_ordinary(text)
    assert fresh.encode_ordinary(text) == ordinary
    assert fresh.encode_ordinary_array(text).tolist() == ordinary


def test_supplementary_plane_letters_leave_the_short_path():
    assert fits("emoji 🐍 only") and fits("ascii") and fits("日本語")
    assert not fits("𝐀") and not fits("x𝟏")


def test_bmp_classes_are_unicode_letters_and_numbers():
    letters, numbers = map(set, bmp_letters_and_numbers())
    for code in range(0x10000):
        category = unicodedata.category(chr(code))[0]
        assert (code in letters, code in numbers) == (category == "L", category == "N"), hex(code)


def test_bmp_pattern_splits_held_out_text_like_the_tiktoken_regex():
    import regex

    reference = regex.compile(r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
    for path in HELD_OUT:
        text = path.read_text(encoding="utf-8")
        assert bmp_piece_pattern().findall(text) == reference.findall(text), path.name


def test_every_gpt2_token_is_its_own_bpe(gpt2_tokenizer):
    """The seed of both caches: each token that is whole UTF-8 text encodes as itself (tiktoken's rule)."""
    decodable = {t for t in gpt2_tokenizer.bpe_data.vocab if _is_utf8(t)}
    assert len(gpt2_tokenizer._small._whole_tokens) == len(decodable) > 30_000


def _is_utf8(token: bytes) -> bool:
    try:
        token.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
