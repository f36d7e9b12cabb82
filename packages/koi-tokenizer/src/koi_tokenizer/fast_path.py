"""The encoder's hot path: a whole text in a handful of numpy passes, no Python object per piece.

1. `splitter.piece_bounds` finds every GPT-2 piece boundary.
2. `piece_keys` gives every piece an exact 64-bit key (or sends it to a dict if it is long).
3. A `PieceTable` maps all keys to cached token spans in one vectorised probe.
4. The token ids of the whole text are one gather from the flat cache.

BPE runs once per distinct piece, for all new pieces of a call together (`PieceBPE`). Real text
repeats its pieces, so after the first megabytes almost every piece is a hit.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .piece_keys import PieceKeys, is_hashed, piece_keys, utf8_bytes
from .piece_table import MISSING, PieceTable
from .splitter import code_points, piece_bounds

MAX_CACHED_PIECES = 2_000_000  # learnt pieces (beyond the whole tokens) kept before a reset
_BY_TEXT = -2
Encoder = Callable[[list[str]], tuple[np.ndarray, np.ndarray]]


class PieceCache:
    """Token ids of every distinct piece seen, stored flat so a whole text is one numpy gather."""

    def __init__(self, bpe: Encoder, whole_tokens: dict[str, int] | None = None) -> None:
        """``whole_tokens``: pieces known to be one token each (text -> id), stored up front."""
        self._bpe = bpe
        self._whole_tokens = whole_tokens or {}
        self.clear()

    def clear(self) -> None:
        self._table = PieceTable()
        self._by_text: dict[str, int] = {}
        self._tokens = np.zeros(1 << 16, dtype=np.int64)
        self._offsets = np.zeros(1 << 12, dtype=np.int64)
        self._lengths = np.zeros(1 << 12, dtype=np.int64)
        self._first_words = np.zeros(1 << 12, dtype=np.uint64)
        self._last_words = np.zeros(1 << 12, dtype=np.uint64)
        self._records = 0
        self._used = 0
        if self._whole_tokens:
            self._seed(list(self._whole_tokens), np.fromiter(self._whole_tokens.values(), dtype=np.int64))

    def _seed(self, pieces: list[str], ids: np.ndarray) -> None:
        """Store pieces that are one token each, without BPE: a fresh cache then BPEs only the
        pieces of two or more tokens (most distinct pieces of new text are whole tokens)."""
        encoded = [p.encode("utf-8") for p in pieces]
        data = np.frombuffer(b"".join(encoded), dtype=np.uint8)
        bounds = np.concatenate(([0], np.cumsum([len(b) for b in encoded])))
        keys = piece_keys(data, bounds)
        records = self._store(ids, np.ones(len(ids), dtype=np.int64), keys.first_words, keys.last_words)
        keyed = np.ones(len(ids), dtype=bool)
        keyed[keys.long] = False
        keyed[np.flatnonzero(keyed)[~self._table.insert(keys.keys[keyed], records[keyed])]] = False
        # Long pieces, and 8..16-byte ones whose hashed key another token took, go by their text.
        record_list = records.tolist()
        self._by_text.update((pieces[k], record_list[k]) for k in np.flatnonzero(~keyed).tolist())

    def __len__(self) -> int:
        return self._records

    @staticmethod
    def _grow(array: np.ndarray, needed: int) -> np.ndarray:
        if needed <= len(array):
            return array
        bigger = np.zeros(max(needed, 2 * len(array)), dtype=array.dtype)
        bigger[: len(array)] = array
        return bigger

    def _add(self, pieces: list[str], first_words=None, last_words=None) -> np.ndarray:
        """BPE ``pieces`` (distinct, new) and store them; returns their record numbers."""
        return self._store(*self._bpe(pieces), first_words, last_words)

    def _store(self, tokens: np.ndarray, lengths: np.ndarray, first_words=None, last_words=None) -> np.ndarray:
        """Append the token spans of new pieces (``lengths`` tokens each); returns their record numbers."""
        first, count = self._records, len(lengths)
        for name in ("_offsets", "_lengths", "_first_words", "_last_words"):
            setattr(self, name, self._grow(getattr(self, name), first + count))
        self._tokens = self._grow(self._tokens, self._used + len(tokens))
        self._offsets[first : first + count] = self._used + np.cumsum(lengths) - lengths
        self._lengths[first : first + count] = lengths
        if first_words is not None:
            self._first_words[first : first + count] = first_words
            self._last_words[first : first + count] = last_words
        self._tokens[self._used : self._used + len(tokens)] = tokens
        self._used += len(tokens)
        self._records += count
        return np.arange(first, first + count)

    def _add_keyed(self, text: str, missing: np.ndarray, bounds: np.ndarray, keys: PieceKeys, records) -> None:
        """Fill ``records[missing]`` for pieces the table lacks: BPE each distinct one once, insert it."""
        distinct, first, where = np.unique(keys.keys[missing], return_index=True, return_inverse=True)
        sample = missing[first]  # one position of each distinct key
        new = self._add([text[s:e] for s, e in zip(bounds[sample].tolist(), bounds[sample + 1].tolist())],
                        keys.first_words[sample], keys.last_words[sample])
        self._table.insert(distinct, new)
        records[missing] = new[where]
        # Two different 8..16-byte pieces of this text with one key: the dict serves the second.
        records[missing[self._differs(keys, missing, new[where])]] = _BY_TEXT

    def _differs(self, keys: PieceKeys, at: np.ndarray, records: np.ndarray) -> np.ndarray:
        """Which pieces ``at`` are not the piece stored in ``records`` (possible for hashed keys only)."""
        return (self._first_words[records] != keys.first_words[at]) | (self._last_words[records] != keys.last_words[at])

    def _add_by_text(self, text: str, at: np.ndarray, bounds: np.ndarray, records) -> None:
        """Fill ``records[at]`` for long or colliding pieces through the dict keyed by their text."""
        pieces = [text[s:e] for s, e in zip(bounds[at].tolist(), bounds[at + 1].tolist())]
        new = list(dict.fromkeys(p for p in pieces if p not in self._by_text))
        if new:
            self._by_text.update(zip(new, self._add(new).tolist()))
        records[at] = [self._by_text[p] for p in pieces]

    def encode(self, text: str) -> np.ndarray:
        """Token ids of ordinary text (no special tokens), as an int64 array."""
        return self.encode_many([text])[0]

    def encode_many(self, texts: list[str]) -> list[np.ndarray]:
        """`encode` of each text, done as one joined text so the per-call cost is paid once."""
        if not texts:
            return []
        if self._records - len(self._whole_tokens) > MAX_CACHED_PIECES:
            self.clear()
        text = "".join(texts)
        cuts = np.cumsum([len(t) for t in texts[:-1]], dtype=np.int64)
        points = code_points(text)
        bounds = piece_bounds(points, cuts)
        keys = piece_keys(*utf8_bytes(text, points, bounds))
        records = self._table.lookup(keys.keys)
        records[keys.long] = _BY_TEXT
        hashed_hit = np.flatnonzero(is_hashed(keys.keys))
        hashed_hit = hashed_hit[records[hashed_hit] >= 0]
        records[hashed_hit[self._differs(keys, hashed_hit, records[hashed_hit])]] = _BY_TEXT
        unresolved = np.flatnonzero(records < 0)
        if len(unresolved):
            missing = unresolved[records[unresolved] == MISSING]
            if len(missing):
                self._add_keyed(text, missing, bounds, keys, records)
            by_text = unresolved[records[unresolved] == _BY_TEXT]
            if len(by_text):
                self._add_by_text(text, by_text, bounds, records)
        lengths = self._lengths[records]
        ends = np.cumsum(lengths)
        # position k of the output reads token offset[piece] + (k - start of that piece in the output)
        shift = np.repeat(self._offsets[records] - (ends - lengths), lengths)
        tokens = self._tokens[shift + np.arange(len(shift))]
        if len(texts) == 1:
            return [tokens]
        first_piece = np.searchsorted(bounds[:-1], cuts)  # pieces never cross a cut
        return np.split(tokens, np.concatenate(([0], ends))[first_piece])
