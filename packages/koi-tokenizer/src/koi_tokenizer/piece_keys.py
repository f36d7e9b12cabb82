"""64-bit keys for all pieces of a text at once, with no Python object per piece.

Pieces are read from the text's UTF-8 bytes through an 8-byte window that starts at every
offset. Keys are exact, so the cache never confuses two pieces:

- A piece of at most 7 bytes (86% of the pieces of real text) is its own key: its bytes, with
  its length in the top byte.
- A piece of 8 to 16 bytes (13%) is fully described by its first and its last 8 bytes, which
  overlap. Its key is a hash of the two (top bit set, so it never equals a short key), and the
  two words are kept with the cached piece and compared on every hit.
- Longer pieces (under 1%: long identifiers, runs of spaces or dashes) are looked up by their text.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

SHORT_BYTES, MID_BYTES = 7, 16
_HASHED = np.uint64(1 << 63)
_LENGTH_SHIFT = np.uint64(56)
_MASKS = np.array([(1 << (8 * n)) - 1 for n in range(SHORT_BYTES + 1)], dtype=np.uint64)
_FIRST_FACTOR, _LAST_FACTOR = np.uint64(0xC2B2AE3D27D4EB4F), np.uint64(0x165667B19E3779F9)


class PieceKeys(NamedTuple):
    keys: np.ndarray  # uint64 per piece
    first_words: np.ndarray  # the first and last 8 bytes of 8..16-byte pieces (0 for the others)
    last_words: np.ndarray
    long: np.ndarray  # positions of the pieces longer than MID_BYTES, which have no key


def utf8_bytes(text: str, points: np.ndarray, bounds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The text's UTF-8 bytes and ``bounds`` (code-point offsets) turned into byte offsets."""
    if points.dtype == np.uint8:  # ASCII: one byte per code point
        return points, bounds
    data = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    char_starts = np.flatnonzero((data & 0xC0) != 0x80)  # every byte that is not a continuation byte
    return data, np.append(char_starts, len(data))[bounds]


def _windows(data: np.ndarray) -> np.ndarray:
    """``windows[i]`` = the 8 bytes of ``data`` from offset i, as a little-endian uint64."""
    padded = np.zeros(len(data) + 8, dtype=np.uint8)
    padded[: len(data)] = data
    return np.ndarray((len(data) + 1,), dtype="<u8", buffer=padded, strides=(1,))


def _mix(words: np.ndarray) -> np.ndarray:
    return words ^ (words >> np.uint64(29))


def piece_keys(data: np.ndarray, byte_bounds: np.ndarray) -> PieceKeys:
    """Keys of the pieces ``data[byte_bounds[k]:byte_bounds[k + 1]]``."""
    starts, ends = byte_bounds[:-1], byte_bounds[1:]
    size = ends - starts
    windows = _windows(data)
    short_size = np.minimum(size, SHORT_BYTES).astype(np.uint64)
    keys = (windows[starts] & _MASKS[short_size]) | (short_size << _LENGTH_SHIFT)
    first_words = np.zeros(len(starts), dtype=np.uint64)
    last_words = np.zeros(len(starts), dtype=np.uint64)
    mid = np.flatnonzero((size > SHORT_BYTES) & (size <= MID_BYTES))
    if len(mid):
        first_words[mid] = first = windows[starts[mid]]
        last_words[mid] = last = windows[ends[mid] - 8]
        keys[mid] = (_mix(first) * _FIRST_FACTOR + _mix(last) * _LAST_FACTOR + size[mid].astype(np.uint64)) | _HASHED
    return PieceKeys(keys, first_words, last_words, np.flatnonzero(size > MID_BYTES))


def is_hashed(keys: np.ndarray) -> np.ndarray:
    """Which keys are hashes (of 8..16-byte pieces) rather than a short piece's own bytes."""
    return keys >= _HASHED
