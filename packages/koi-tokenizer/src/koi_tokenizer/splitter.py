"""GPT-2 pre-tokenization as array operations: every piece boundary of a text in a few numpy passes.

The pattern ``'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+`` is
a left-to-right scan, but what it produces has a closed form. Pieces are the maximal runs of one
character class (letter, number, other, white space), corrected in three places:

1. a white-space run of two or more characters followed by a non-space gives up its last
   character (``\\s+(?!\\S)`` backs off by one), which becomes a piece of its own...
2. ...unless that last character (or a lone white-space character) is the ASCII space, which
   joins the run after it (the `` ?`` of the letter, number and other alternatives);
3. an apostrophe that starts a piece and is followed by ``s d m t`` or ``re ve ll`` is a
   contraction: it takes those letters, and the letter run goes on from after them.

Working on whole arrays instead of asking a regex engine for one Python string per piece is what
makes this faster than Python's ``re`` (and than the Rust engines' per-piece loop).
`pretokenize.pretokenize` is the readable scan this is tested against.
"""

from __future__ import annotations

import numpy as np

from .pretokenize import is_letter, is_number, is_space

LETTER, NUMBER, OTHER, SPACE = 0, 1, 2, 3


def _class_of(code_point: int) -> int:
    char = chr(code_point)
    return SPACE if is_space(char) else LETTER if is_letter(char) else NUMBER if is_number(char) else OTHER


ASCII_CLASSES = np.array([_class_of(c) for c in range(128)], dtype=np.uint8)
_SHORT_CONTRACTION = np.zeros(128, dtype=bool)  # the letter after the apostrophe in 's 'd 'm 't
_SHORT_CONTRACTION[[ord(c) for c in "sdmt"]] = True
_APOSTROPHE, _SPACE = ord("'"), ord(" ")


def code_points(text: str) -> np.ndarray:
    """The text's code points: uint8 for ASCII text (the common case, and 4x less memory), else uint32."""
    if text.isascii():
        return np.frombuffer(text.encode("ascii"), dtype=np.uint8)
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)


def char_classes(points: np.ndarray) -> np.ndarray:
    """LETTER / NUMBER / OTHER / SPACE of each code point, as ``\\p{L}``, ``\\p{N}`` and ``\\s`` define them."""
    if points.dtype == np.uint8:
        return ASCII_CLASSES.take(points)
    classes = np.empty(len(points), dtype=np.uint8)
    ascii_mask = points < 128
    classes[ascii_mask] = ASCII_CLASSES[points[ascii_mask]]
    if not ascii_mask.all():
        # Distinct non-ASCII code points are few even in long texts: classify each once.
        distinct, where = np.unique(points[~ascii_mask], return_inverse=True)
        classes[~ascii_mask] = np.array([_class_of(c) for c in distinct.tolist()], dtype=np.uint8)[where]
    return classes


def piece_bounds(points: np.ndarray, cuts: np.ndarray | None = None) -> np.ndarray:
    """Start of every piece, then ``len(points)``: piece k is ``points[bounds[k]:bounds[k + 1]]``.

    ``cuts`` are offsets where one text ends and the next begins (several texts joined to share
    the per-call cost): each text is split exactly as it would be alone.
    """
    n = len(points)
    if n == 0:
        return np.zeros(1, dtype=np.int64)
    classes = char_classes(points)
    start = np.empty(n + 1, dtype=bool)
    start[0] = start[n] = True
    np.not_equal(classes[1:], classes[:-1], out=start[1:n])
    space = classes == SPACE
    at_cut = np.zeros(n + 1, dtype=bool)
    if cuts is not None and len(cuts):
        at_cut[cuts] = True
        start[cuts] = True

    # 1 and 2: white-space runs that end before a non-space character of the same text, at run_end.
    run_end = np.flatnonzero(start[1:n] & space[:-1] & ~at_cut[1:n]) + 1
    longer_than_one = ~start[run_end - 1]
    start[run_end[longer_than_one] - 1] = True
    start[run_end[points[run_end - 1] == _SPACE]] = False

    # 3: contractions. An apostrophe is its own "other" run only when a letter follows it.
    quote = np.flatnonzero(points[:-1] == _APOSTROPHE)
    quote = quote[start[quote] & ~at_cut[quote + 1]]
    if len(quote):
        after = points[quote + 1]
        short = (after < 128) & _SHORT_CONTRACTION[np.minimum(after, 127)]
        rest = quote[~short & (quote + 2 < n)]
        rest = rest[~at_cut[rest + 2]]
        a, b = points[rest + 1], points[rest + 2]
        long = rest[((a == ord("r")) | (a == ord("v"))) & (b == ord("e")) | (a == ord("l")) & (b == ord("l"))]
        for taken, apostrophes in ((1, quote[short]), (2, long)):
            start[apostrophes + 1] = False
            start[apostrophes + 1 + taken] = True
    return np.flatnonzero(start)
