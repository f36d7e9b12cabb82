"""A small pure-Python byte-level BPE, the yardstick the fast engine is tested against.

It favours being obviously right over speed: pre-tokenize with `pretokenize`, then repeatedly
merge the adjacent pair with the lowest merge rank, exactly as GPT-2's original encoder did.
"""

from __future__ import annotations

from .pretokenize import pretokenize


class ReferenceBPE:
    """Encodes ordinary text (no special tokens) with a vocabulary and ranked merges."""

    def __init__(self, vocab: dict[bytes, int], merges: list[tuple[bytes, bytes]]) -> None:
        self.vocab = vocab
        self.merge_rank = {pair: rank for rank, pair in enumerate(merges)}
        self.id_to_bytes = {i: b for b, i in vocab.items()}

    def _merge_word(self, word: bytes) -> list[bytes]:
        parts = [bytes([b]) for b in word]
        while len(parts) > 1:
            ranked = [
                (self.merge_rank.get((parts[k], parts[k + 1]), None), k)
                for k in range(len(parts) - 1)
            ]
            ranked = [(r, k) for r, k in ranked if r is not None]
            if not ranked:
                break
            best_rank = min(r for r, _ in ranked)
            best_pair = next((parts[k], parts[k + 1]) for r, k in ranked if r == best_rank)
            merged: list[bytes] = []
            k = 0
            while k < len(parts):
                if k + 1 < len(parts) and (parts[k], parts[k + 1]) == best_pair:
                    merged.append(parts[k] + parts[k + 1])
                    k += 2
                else:
                    merged.append(parts[k])
                    k += 1
            parts = merged
        return parts

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for piece in pretokenize(text):
            ids.extend(self.vocab[part] for part in self._merge_word(piece.encode("utf-8")))
        return ids

    def decode_bytes(self, ids: list[int]) -> bytes:
        return b"".join(self.id_to_bytes[i] for i in ids)
