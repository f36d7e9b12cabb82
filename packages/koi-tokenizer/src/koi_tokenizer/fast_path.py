"""The single-thread fast path: GPT-2 pre-tokenization with Python's C regex engine, BPE once per
distinct piece (by the HF engine, in batch), and the output assembled with numpy.

Real text repeats its pieces, so after warm-up almost every piece is a dictionary hit and the
cost is the regex scan plus one gather. Python's ``re`` has no ``\\p{L}``; the letter, number
and white-space classes are spelled out from ``unicodedata``, exactly as the Rust engines define
them. Runs of pure-ASCII lines use a small ASCII-only pattern that is much faster to match.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence
from functools import lru_cache
from itertools import repeat

import numpy as np

from .pretokenize import WHITE_SPACE

ASCII_WS = r"\t\n\x0b\x0c\r "
ASCII_PATTERN = re.compile(
    rf"""'(?:[sdmt]|ll|ve|re)| ?[A-Za-z]+| ?[0-9]+| ?[^{ASCII_WS}A-Za-z0-9]+|[{ASCII_WS}]+(?![^{ASCII_WS}])|[{ASCII_WS}]+"""
)
MAX_CACHED_PIECES = 2_000_000


def _char_class(accept: Callable[[int], bool]) -> str:
    """A regex character class body covering every code point ``accept`` is true for, as ranges."""
    parts, start = [], None
    for cp in range(0x110000 + 1):
        ok = cp <= 0x10FFFF and accept(cp)
        if ok and start is None:
            start = cp
        elif not ok and start is not None:
            end = cp - 1
            parts.append(re.escape(chr(start)) if start == end else f"{re.escape(chr(start))}-{re.escape(chr(end))}")
            start = None
    return "".join(parts)


@lru_cache(maxsize=1)
def unicode_pattern() -> re.Pattern:
    """The full GPT-2 pattern for any text (built once, about a second)."""
    categories = [unicodedata.category(chr(cp))[0] for cp in range(0x110000)]
    letters = _char_class(lambda cp: categories[cp] == "L")
    numbers = _char_class(lambda cp: categories[cp] == "N")
    space = _char_class(lambda cp: chr(cp) in WHITE_SPACE)
    return re.compile(
        rf"""'(?:[sdmt]|ll|ve|re)| ?[{letters}]+| ?[{numbers}]+| ?[^{space}{letters}{numbers}]+|[{space}]+(?![^{space}])|[{space}]+"""
    )


# A newline right after a non-space character always starts a new piece (no alternative spans
# "x\n"), and matching from there on does not depend on what came before, so text can be cut there.
_SAFE_CUT = re.compile(r"(?<=[^\s])(?=\n)")


def split_pieces(text: str) -> list[str]:
    """GPT-2 pre-tokenization of ``text``."""
    if text.isascii():
        return ASCII_PATTERN.findall(text)
    pieces: list[str] = []
    run: list[str] = []  # consecutive ASCII segments, matched together
    for segment in _SAFE_CUT.split(text):
        if segment.isascii():
            run.append(segment)
            continue
        if run:
            pieces += ASCII_PATTERN.findall("".join(run))
            run = []
        pieces += unicode_pattern().findall(segment)
    if run:
        pieces += ASCII_PATTERN.findall("".join(run))
    return pieces


class PieceCache:
    """Token ids of every distinct piece seen, stored flat so a whole text is one numpy gather."""

    def __init__(self, encode_pieces: Callable[[list[str]], Sequence[Sequence[int]]]) -> None:
        self._encode_pieces = encode_pieces
        self.clear()

    def clear(self) -> None:
        self.index: dict[str, int] = {}
        self._tokens = np.zeros(1 << 16, dtype=np.int64)
        self._offsets = np.zeros(1 << 12, dtype=np.int64)
        self._lengths = np.zeros(1 << 12, dtype=np.int64)
        self._used = 0

    @staticmethod
    def _grow(array: np.ndarray, needed: int) -> np.ndarray:
        if needed <= len(array):
            return array
        bigger = np.zeros(max(needed, 2 * len(array)), dtype=array.dtype)
        bigger[: len(array)] = array
        return bigger

    def _add(self, pieces: list[str]) -> None:
        if len(self.index) + len(pieces) > MAX_CACHED_PIECES:
            self.clear()
        encoded = self._encode_pieces(pieces)
        lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
        flat = np.fromiter((t for ids in encoded for t in ids), dtype=np.int64, count=int(lengths.sum()))
        first = len(self.index)
        self._offsets = self._grow(self._offsets, first + len(pieces))
        self._lengths = self._grow(self._lengths, first + len(pieces))
        self._tokens = self._grow(self._tokens, self._used + len(flat))
        self._offsets[first : first + len(pieces)] = self._used + np.concatenate([[0], np.cumsum(lengths)[:-1]])
        self._lengths[first : first + len(pieces)] = lengths
        self._tokens[self._used : self._used + len(flat)] = flat
        self._used += len(flat)
        self.index.update(zip(pieces, range(first, first + len(pieces))))

    def _piece_ids(self, pieces: list[str]) -> np.ndarray:
        get = self.index.get
        return np.fromiter(map(get, pieces, repeat(-1)), dtype=np.int64, count=len(pieces))

    def encode(self, text: str) -> np.ndarray:
        """Token ids of ordinary text (no special tokens), as an int64 array."""
        pieces = split_pieces(text)
        piece_ids = self._piece_ids(pieces)
        misses = np.flatnonzero(piece_ids < 0)
        if len(misses):
            self._add(list(dict.fromkeys(pieces[i] for i in misses)))
            piece_ids = self._piece_ids(pieces)
        lengths = self._lengths[piece_ids]
        total = int(lengths.sum())
        # position k of the output reads token offset[piece] + (k - start of that piece in the output)
        starts = np.repeat(self._offsets[piece_ids] - (np.cumsum(lengths) - lengths), lengths)
        return self._tokens[starts + np.arange(total)]
