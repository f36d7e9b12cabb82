"""BPE of the new pieces of a call: whichever engine is cheaper for how many there are.

Both give GPT-2's merge-all-occurrences BPE (tests check each against `ReferenceBPE`). The HF
BPE model costs about 4 us per piece and nothing per call; `BatchBPE` costs about 100 us per
merge round and little per piece, so it wins from a few hundred pieces on (a fresh large text).
"""

from __future__ import annotations

from itertools import chain
from operator import attrgetter

import numpy as np
from tokenizers import models

from .batch_bpe import BatchBPE
from .byte_level import bytes_to_token_text, bytes_to_token_texts
from .formats import BPEData

BATCH_FROM = 512
_TOKEN_ID = attrgetter("id")


class PieceBPE:
    def __init__(self, data: BPEData) -> None:
        self.batch = BatchBPE(data.vocab, data.merges)
        tokens = list(data.vocab)
        vocab = dict(zip(bytes_to_token_texts(tokens), data.vocab.values()))
        texts = iter(bytes_to_token_texts([part for pair in data.merges for part in pair]))
        merges = list(zip(texts, texts))
        self.model = models.BPE(vocab=vocab, merges=merges, cache_capacity=0)  # Koi caches pieces itself

    def encode_piece(self, piece: str) -> tuple[int, ...]:
        """The ids of one piece through the HF BPE model: no numpy, so cheap for a piece or two."""
        return tuple(map(_TOKEN_ID, self.model.tokenize(bytes_to_token_text(piece.encode("utf-8")))))

    def engine_encode(self, pieces: list[str]) -> tuple[np.ndarray, np.ndarray]:
        ids = [self.encode_piece(p) for p in pieces]
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        return np.fromiter(chain.from_iterable(ids), dtype=np.int64, count=int(lengths.sum())), lengths

    def batch_encode(self, pieces: list[str]) -> tuple[np.ndarray, np.ndarray]:
        return self.batch.encode([p.encode("utf-8") for p in pieces])

    def __call__(self, pieces: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(tokens, lengths)``: the ids of all pieces, concatenated, and how many each got."""
        if not pieces:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        return (self.batch_encode if len(pieces) >= BATCH_FROM else self.engine_encode)(pieces)

    def whole_tokens(self, vocab: dict[bytes, int]) -> dict[str, int]:
        """The tokens (as text) that BPE turns into themselves, so a piece equal to one needs no BPE.

        That is every token of a vocabulary learnt by BPE, and tiktoken assumes it of every
        vocabulary; checking it (one `BatchBPE` pass, about 0.2 s for GPT-2) keeps any other
        vocabulary exact. Tokens that are not whole UTF-8 text can never be a piece of text.
        """
        texts, ids = [], []
        for token, idx in vocab.items():
            if not token:
                continue
            try:
                texts.append(token.decode("utf-8"))
            except UnicodeDecodeError:
                continue
            ids.append(idx)
        tokens, lengths = self.batch.encode([t.encode("utf-8") for t in texts])
        single = np.flatnonzero(lengths == 1)
        itself = single[tokens[np.cumsum(lengths)[single] - 1] == np.array(ids, dtype=np.int64)[single]]
        return {texts[k]: ids[k] for k in itself.tolist()}
