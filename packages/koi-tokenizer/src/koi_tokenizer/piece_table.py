"""An open-addressing hash table from 64-bit piece keys to record numbers, probed for many keys at once.

A Python dict would need one Python string per piece just to ask; this table takes the keys of a
whole text as one array and answers with one array, a few vectorised probes deep (linear probing,
at most a quarter full, so almost every key is answered by its first probe). A slot is a
(key, record) row, so one probe is one memory access.
"""

from __future__ import annotations

import numpy as np

EMPTY = np.uint64(0)  # no real key is 0 (see `piece_keys`)
MISSING = -1
_SPREAD = np.uint64(0x9E3779B97F4A7C15)  # odd multiplier: every key bit reaches the top bits


class PieceTable:
    def __init__(self, bits: int = 16) -> None:
        self._bits = bits
        self._rows = np.zeros((1 << bits, 2), dtype=np.uint64)  # key, record
        self._slot_keys, self._slot_records = self._rows[:, 0], self._rows[:, 1]  # views
        self.count = 0

    def _home(self, keys: np.ndarray) -> np.ndarray:
        return ((keys * _SPREAD) >> np.uint64(64 - self._bits)).astype(np.intp)

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """Record of each key, or MISSING."""
        mask = len(self._rows) - 1
        slots = self._home(keys)
        home = self._rows.take(slots, axis=0)  # take: several times faster than fancy row indexing
        found = home[:, 1].astype(np.int64)
        pending = np.flatnonzero(home[:, 0] != keys)
        found[pending] = MISSING
        # Not at home: an empty home slot means absent; one held by another key means probe on.
        pending = pending[home[pending, 0] != EMPTY]
        slots = (slots[pending] + 1) & mask
        while len(pending):
            held = self._rows.take(slots, axis=0)
            hit = held[:, 0] == keys[pending]
            found[pending[hit]] = held[hit, 1].astype(np.int64)
            probe_on = ~hit & (held[:, 0] != EMPTY)
            pending, slots = pending[probe_on], (slots[probe_on] + 1) & mask
        return found

    def insert(self, keys: np.ndarray, records: np.ndarray) -> np.ndarray:
        """Add distinct keys; returns a mask of those placed (a key already present is not)."""
        if 4 * (self.count + len(keys)) > len(self._rows):
            self._grow(self.count + len(keys))
        placed = np.zeros(len(keys), dtype=bool)
        pending = np.arange(len(keys))
        slots = self._home(keys)
        mask = len(self._rows) - 1
        while len(pending):
            free = np.flatnonzero(self._slot_keys[slots] == EMPTY)
            # Several keys may want one free slot: all write, the last write stays; the others see
            # the slot taken and probe on, like keys that found it taken.
            self._slot_keys[slots[free]] = keys[pending[free]]
            landed = free[self._slot_keys[slots[free]] == keys[pending[free]]]
            self._slot_records[slots[landed]] = records[pending[landed]].astype(np.uint64)
            placed[pending[landed]] = True
            # Taken by the key itself (already present): stop. Taken by another key: probe on.
            probe_on = self._slot_keys[slots] != keys[pending]
            pending, slots = pending[probe_on], (slots[probe_on] + 1) & mask
        self.count += int(placed.sum())
        return placed

    def _grow(self, needed: int) -> None:
        rows = self._rows[self._slot_keys != EMPTY]
        bits = self._bits
        while (1 << bits) < 4 * needed:
            bits += 1
        self.__init__(bits)
        self.insert(rows[:, 0], rows[:, 1].astype(np.int64))
