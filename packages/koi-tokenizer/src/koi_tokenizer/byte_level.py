"""GPT-2's reversible map between bytes and printable unicode characters.

GPT-2 stores its vocabulary as text, so each byte is given a visible character: printable
Latin-1 bytes map to themselves, the rest to code points from 256 upwards in byte order.
"""

from __future__ import annotations

from functools import lru_cache
from itertools import accumulate


@lru_cache(maxsize=1)
def byte_to_unicode() -> dict[int, str]:
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    mapping = {b: chr(b) for b in printable}
    next_code = 256
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(next_code)
            next_code += 1
    return mapping


@lru_cache(maxsize=1)
def unicode_to_byte() -> dict[str, int]:
    return {c: b for b, c in byte_to_unicode().items()}


@lru_cache(maxsize=1)
def _to_latin1() -> dict[int, int | str]:
    """A `str.translate` table from token text to Latin-1, whose ``encode`` then gives the bytes.

    Each of the 256 token characters maps to the code point of its byte. A code point below
    256 that is not a token character (a raw space, say) would pass through translate and
    encode as itself, so it maps to U+FFFF instead, which Latin-1 cannot encode.
    """
    table: dict[int, int | str] = {ord(c): b for c, b in unicode_to_byte().items()}
    for code in range(256):
        table.setdefault(code, "\uffff")
    return table


def bytes_to_token_text(data: bytes) -> str:
    # Latin-1 maps each byte to the code point of the same number, which translate() then maps.
    return data.decode("latin-1").translate(byte_to_unicode())


def token_text_to_bytes(text: str) -> bytes:
    """Inverse of `bytes_to_token_text`; raises KeyError on a character outside the map.

    Two C calls per token (about 0.3 us), not a Python loop per character: a tokenizer's
    construction converts 150k of these.
    """
    try:
        return text.translate(_to_latin1()).encode("latin-1")
    except UnicodeEncodeError:
        bad = next(c for c in text if c not in unicode_to_byte())
        raise KeyError(bad) from None


def _split_by_lengths(joined, lengths: list[int]) -> list:
    """``joined`` (a str or bytes) cut back into consecutive parts of the given lengths."""
    ends = list(accumulate(lengths))
    return list(map(joined.__getitem__, map(slice, [0, *ends[:-1]], ends)))


def bytes_to_token_texts(tokens: list[bytes]) -> list[str]:
    """`bytes_to_token_text` of each token in one translate: byte-level text has one character per byte."""
    return _split_by_lengths(bytes_to_token_text(b"".join(tokens)), list(map(len, tokens)))


def token_texts_to_bytes(texts: list[str]) -> list[bytes]:
    """`token_text_to_bytes` of each text in one translate (one character per byte); KeyError as it."""
    try:
        blob = "".join(texts).translate(_to_latin1()).encode("latin-1")
    except UnicodeEncodeError:
        for text in texts:
            token_text_to_bytes(text)  # raises the KeyError of the first bad text
        raise
    return _split_by_lengths(blob, list(map(len, texts)))
