"""A readable, regex-free implementation of GPT-2's pre-tokenization pattern.

The pattern is ``'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+``.
Python's ``re`` has no ``\\p{..}`` classes, and the reference must not share code with the fast
engine it checks, so the alternatives are spelled out by hand, in the pattern's priority order.
"""

from __future__ import annotations

import unicodedata

# Unicode White_Space property, which is what ``\\s`` means in the Rust regex engines
# tiktoken and HF tokenizers use (str.isspace() differs on U+001C..U+001F).
WHITE_SPACE = frozenset(
    [chr(c) for c in range(0x09, 0x0E)]
    + [" ", "\x85", "\xa0", "\u1680"]
    + [chr(c) for c in range(0x2000, 0x200B)]
    + ["\u2028", "\u2029", "\u202f", "\u205f", "\u3000"]
)
CONTRACTIONS = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d")


def is_space(ch: str) -> bool:
    return ch in WHITE_SPACE


def is_letter(ch: str) -> bool:
    return unicodedata.category(ch).startswith("L")


def is_number(ch: str) -> bool:
    return unicodedata.category(ch).startswith("N")


def is_other(ch: str) -> bool:
    return not (is_space(ch) or is_letter(ch) or is_number(ch))


def _run(text: str, start: int, accept) -> int:
    end = start
    while end < len(text) and accept(text[end]):
        end += 1
    return end


def _match_at(text: str, i: int) -> int:
    """Return the end of the pre-token starting at ``i`` (always > i)."""
    for contraction in CONTRACTIONS:
        if text.startswith(contraction, i):
            return i + len(contraction)
    body = i + 1 if text[i] == " " and i + 1 < len(text) else i
    for accept in (is_letter, is_number, is_other):
        end = _run(text, body, accept)
        if end > body:
            return end
    # \s+(?!\S): a whitespace run, minus its last character when a non-space follows it.
    end = _run(text, i, is_space)
    if end == len(text):
        return end
    if end - i > 1:
        return end - 1
    return i + 1  # \s+ alone, or a lone non-space no alternative took (cannot happen)


def pretokenize(text: str) -> list[str]:
    """Split text into the pieces GPT-2 encodes independently."""
    pieces = []
    i = 0
    while i < len(text):
        end = _match_at(text, i)
        pieces.append(text[i:end])
        i = end
    return pieces
