"""Encoding a short text (a chat message, a line of code) with no numpy: regex pieces and a dict.

Why a second path: the array path (`fast_path`) costs about a hundred numpy calls per call
whatever the text's length, which is 20-50x what tiktoken spends on a 200-byte text. Here a call
is one `re.findall` and one dict lookup per piece, all of it in C loops, and a piece BPE has
never seen is merged once (`PieceBPE.encode_piece`) and then kept.

Python's ``re`` has no ``\\p{L}`` or ``\\p{N}``, so the GPT-2 pattern is written with explicit
classes, and only for the Basic Multilingual Plane: ``re`` keeps a class as a fast bitmap only
while every code point in it is below U+10000 (a class with higher ones is a list of ranges it
scans per character, 20x slower). A code point above U+FFFF therefore counts as "other" here,
which is right for emoji and the rest of the supplementary planes' symbols; a text with a
supplementary-plane letter or number goes to the array path (`fits`).
"""

from __future__ import annotations

import re
import unicodedata
from array import array
from collections.abc import Callable
from functools import lru_cache
from itertools import count, filterfalse

from .pretokenize import WHITE_SPACE

SMALL_TEXT_CHARS = 8192  # longer texts go to the array path, whose fixed cost they amortise
MAX_CACHED_PIECES = 1_000_000  # learnt pieces (beyond the whole tokens) kept before a reset
_BMP_END = 0x10000


def _class_ranges(code_points: list[int]) -> str:
    """A regex class body for sorted code points, consecutive ones written as ranges."""
    out, k = [], 0
    while k < len(code_points):
        end = k
        while end + 1 < len(code_points) and code_points[end + 1] == code_points[end] + 1:
            end += 1
        first, last = re.escape(chr(code_points[k])), re.escape(chr(code_points[end]))
        out.append(first if end == k else f"{first}-{last}")
        k = end + 1
    return "".join(out)


def bmp_letters_and_numbers() -> tuple[list[int], list[int]]:
    """Code points below U+10000 in ``\\p{L}`` and in ``\\p{N}`` (Unicode general category L*, N*)."""
    bmp = "".join(map(chr, range(_BMP_END)))
    letters, numbers = [], []
    # ``[^\\W_]`` finds every alphanumeric run in one C pass; only their characters need a category.
    for run in re.finditer(r"[^\W_]+", bmp):
        if run.group().isalpha():  # isalpha() is exactly category L
            letters.extend(range(run.start(), run.end()))
            continue
        for offset, char in enumerate(run.group()):
            category = unicodedata.category(char)[0]
            if category in "LN":
                (letters if category == "L" else numbers).append(run.start() + offset)
    return letters, numbers


@lru_cache(maxsize=1)
def bmp_piece_pattern() -> re.Pattern:
    """GPT-2's ``'(?:[sdmt]|ll|ve|re)| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+`` for ``re``."""
    letters, numbers = bmp_letters_and_numbers()
    letter, number = _class_ranges(letters), _class_ranges(numbers)
    space = _class_ranges(sorted(map(ord, WHITE_SPACE)))
    return re.compile(
        rf"'(?:[sdmt]|ll|ve|re)| ?[{letter}]+| ?[{number}]+| ?[^{space}{letter}{number}]+|[{space}]+(?![^{space}])|[{space}]+"
    )


def fits(text: str) -> bool:
    """Whether the BMP-only pattern splits ``text`` exactly: no letter or number above U+FFFF in it."""
    if text.isascii() or max(text) < "\U00010000":
        return True
    return not any(unicodedata.category(c)[0] in "LN" for c in text if c >= "\U00010000")


def _as_valid_text(piece: str) -> str:
    """Lone surrogates are not text; like tiktoken, encode each as U+FFFD."""
    return piece.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


class SmallTextEncoder:
    """Token ids of short ordinary texts; every piece seen is kept in a dict.

    The dict holds each piece's ids packed as machine integers in a ``bytes``: a text's ids are
    then one ``b"".join`` and one ``memoryview.cast(...).tolist()``, C loops that cost a third
    of flattening a tuple per piece.
    """

    def __init__(self, whole_tokens: dict[str, int], encode_piece: Callable[[str], tuple[int, ...]]) -> None:
        self._id_format = "H" if max(whole_tokens.values(), default=0) < 1 << 16 else "I"
        # A piece that is a whole token is that token, so those seed the dict: a fresh tokenizer
        # then BPEs only the pieces that take two or more tokens.
        width = array(self._id_format).itemsize
        packed = array(self._id_format, whole_tokens.values()).tobytes()  # each id's bytes, sliced out below
        self._whole_tokens = dict(zip(whole_tokens, map(packed.__getitem__, map(slice, count(0, width), count(width, width)))))
        self._encode_piece = encode_piece
        self._findall = bmp_piece_pattern().findall
        self.clear()

    def _pack(self, ids: tuple[int, ...]) -> bytes:
        return array(self._id_format, ids).tobytes()

    def clear(self) -> None:
        self._pieces = dict(self._whole_tokens)

    def encode(self, text: str) -> list[int]:
        """Ids of ``text``, which must pass `fits`."""
        pieces = self._findall(text)
        try:
            packed = b"".join(map(self._pieces.__getitem__, pieces))
        except KeyError:
            self._add(pieces)
            packed = b"".join(map(self._pieces.__getitem__, pieces))
        return memoryview(packed).cast(self._id_format).tolist()

    def _add(self, pieces: list[str]) -> None:
        if len(self._pieces) - len(self._whole_tokens) > MAX_CACHED_PIECES:
            self.clear()
        known = self._pieces
        for piece in dict.fromkeys(filterfalse(known.__contains__, pieces)):  # new ones, found in C
            try:
                ids = self._encode_piece(piece)
            except UnicodeEncodeError:
                ids = self._encode_piece(_as_valid_text(piece))
            if max(ids) >= 1 << 16 and self._id_format == "H":
                raise ValueError(f"token id {max(ids)} does not fit the 16-bit ids of this vocabulary")
            known[piece] = self._pack(ids)
