"""GPT-2's reversible map between bytes and printable unicode characters.

GPT-2 stores its vocabulary as text, so each byte is given a visible character: printable
Latin-1 bytes map to themselves, the rest to code points from 256 upwards in byte order.
"""

from __future__ import annotations

from functools import lru_cache


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


def bytes_to_token_text(data: bytes) -> str:
    # Latin-1 maps each byte to the code point of the same number, which translate() then maps.
    return data.decode("latin-1").translate(byte_to_unicode())


def token_text_to_bytes(text: str) -> bytes:
    """Inverse of `bytes_to_token_text`; raises KeyError on a character outside the map."""
    table = unicode_to_byte()
    return bytes(table[c] for c in text)
