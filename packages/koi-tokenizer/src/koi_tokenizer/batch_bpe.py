"""BPE of many pieces at once, as array operations over all of them.

A tokenizer sees each distinct piece once (a cache answers the rest), but a fresh corpus still
brings ~100k new pieces per 40 MB. Merging them one by one in Python costs microseconds each;
here every round merges, in every piece at once, all occurrences of that piece's best-ranked
pair, left to right, which is exactly GPT-2's original encoder (and `ReferenceBPE`). Rounds
stop when no piece has a mergeable pair; finished pieces leave the working arrays.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .piece_table import MISSING, PieceTable


class BatchBPE:
    """Ranked merges of a byte-level vocabulary, applied to many byte strings per call."""

    def __init__(self, vocab: dict[bytes, int], merges: Sequence[tuple[bytes, bytes]]) -> None:
        missing = [b for b in range(256) if bytes([b]) not in vocab]
        if missing:
            raise ValueError(f"a byte-level vocabulary needs all 256 single bytes; byte {missing[0]} has no token")
        self.byte_ids = np.array([vocab[bytes([b])] for b in range(256)], dtype=np.int64)
        self._base = max(vocab.values()) + 2  # ids and the separator -1, shifted by one, fit below it
        left = np.array([vocab[a] for a, _ in merges], dtype=np.int64)
        right = np.array([vocab[b] for _, b in merges], dtype=np.int64)
        self._pair_ranks = PieceTable()
        self._pair_ranks.insert(self._pair_key(left, right), np.arange(len(merges), dtype=np.int64))
        self._merged = np.array([vocab[a + b] for a, b in merges], dtype=np.int64)
        self._no_merge = len(merges)

    def _pair_key(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        """A distinct non-zero key for each (left, right) pair, separators (-1) included."""
        return ((left + 1) * self._base + (right + 1) + 1).astype(np.uint64)

    def _ranks(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        """Merge rank of each (left, right) token pair; ``len(merges)`` where the pair never merges."""
        ranks = self._pair_ranks.lookup(self._pair_key(left, right))
        ranks[ranks == MISSING] = self._no_merge
        return ranks

    def encode(self, pieces: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
        """``(tokens, lengths)``: the token ids of all pieces, concatenated, and how many each got."""
        lengths = np.fromiter(map(len, pieces), dtype=np.int64, count=len(pieces))
        if len(pieces) and lengths.min() == 0:
            raise ValueError("cannot BPE-encode an empty piece")
        # One flat array, pieces separated by SEPARATOR; pairs that touch a separator never merge.
        raw = np.frombuffer(b"\0".join([b"", *pieces, b""]), dtype=np.uint8)
        is_separator = np.zeros(len(raw), dtype=bool)
        is_separator[0] = True
        is_separator[np.cumsum(lengths + 1)] = True
        tokens = np.where(is_separator, SEPARATOR, self.byte_ids[raw])
        numbers = np.arange(len(pieces))  # original number of each piece in ``tokens``
        finished: list[tuple[np.ndarray, np.ndarray]] = []
        while len(numbers):
            rank = self._ranks(tokens[:-1], tokens[1:])  # of pair (k, k+1)
            bounds = np.flatnonzero(tokens == SEPARATOR)
            best = np.minimum.reduceat(rank, bounds[:-1])  # per piece
            done = best == self._no_merge
            if done.all():
                break
            if 2 * done.sum() > len(done):  # most pieces are done: drop them from the working set
                finished.append((_select_pieces(tokens, bounds, done), numbers[done]))
                tokens, numbers = _select_pieces(tokens, bounds, ~done), numbers[~done]
                continue
            best[done] = -1
            merge_at = _leftmost_non_overlapping(np.flatnonzero(rank == np.repeat(best, np.diff(bounds))))
            tokens[merge_at] = self._merged[rank[merge_at]]
            tokens = np.delete(tokens, merge_at + 1)
        finished.append((tokens, numbers))
        return _in_original_order(finished)


SEPARATOR = -1


def _select_pieces(tokens: np.ndarray, bounds: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """The pieces flagged in ``keep`` (one flag per piece), still separated, in order."""
    per_token = np.repeat(np.append(keep, True), np.diff(np.append(bounds, len(tokens))))
    return tokens[per_token]


def _in_original_order(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate the pieces of every part (separated tokens, piece numbers) in piece-number order."""
    lengths = np.concatenate([np.diff(np.flatnonzero(t == SEPARATOR)) - 1 for t, _ in parts])
    flat = np.concatenate([t[t != SEPARATOR] for t, _ in parts])
    order = np.argsort(np.concatenate([n for _, n in parts]), kind="stable")
    start = np.cumsum(lengths) - lengths
    lengths = lengths[order]
    shift = np.repeat(start[order] - (np.cumsum(lengths) - lengths), lengths)
    return flat[shift + np.arange(len(shift))], lengths


def _leftmost_non_overlapping(positions: np.ndarray) -> np.ndarray:
    """Of consecutive positions (a pair like (a, a) repeated in "aaaa"), keep the 1st, 3rd, ... of each run.

    Pair k and pair k+1 share token k+1, so only one of them can merge; scanning left to right,
    the left one does, which frees pair k+2.
    """
    if len(positions) < 2:
        return positions
    new_run = np.ones(len(positions), dtype=bool)
    new_run[1:] = positions[1:] != positions[:-1] + 1
    if new_run.all():
        return positions
    index = np.arange(len(positions))
    run_start = np.maximum.accumulate(np.where(new_run, index, 0))
    return positions[(index - run_start) % 2 == 0]
