"""The public `Tokenizer`: GPT-2-exact byte-level BPE.

The fast path (`fast_path.PieceCache`) only ever sees ordinary text; special tokens are split out
here so the rules for them (disallowed unless asked, as tiktoken does) live in one readable place.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from . import formats
from .errors import DisallowedSpecialTokenError
from .fast_path import PieceCache
from .parallel import encode_ordinary_parallel
from .piece_bpe import PieceBPE
from .small_text import SMALL_TEXT_CHARS, SmallTextEncoder, fits

EOT_TOKEN = "<|endoftext|>"
SpecialSet = Collection[str] | Literal["all"]


class Tokenizer:
    """Byte-level BPE. Build it with one of the ``from_*`` constructors or `Tokenizer.load`."""

    def __init__(self, data: formats.BPEData, *, name: str = "bpe") -> None:
        self.name = name
        self._data = data
        bpe = PieceBPE(data)
        whole_tokens = bpe.whole_tokens(data.vocab)
        self._pieces = PieceCache(bpe, whole_tokens)
        self._small = SmallTextEncoder(whole_tokens, bpe.encode_piece)
        self._special = dict(data.special_tokens)
        size = max([*data.vocab.values(), *self._special.values()]) + 1
        self._id_to_bytes: list[bytes] = [b""] * size
        for token, idx in data.vocab.items():
            self._id_to_bytes[idx] = token
        for text, idx in self._special.items():
            self._id_to_bytes[idx] = text.encode("utf-8")

    # construction -----------------------------------------------------------------------
    @classmethod
    def from_gpt2_files(cls, vocab_path: str | Path, merges_path: str | Path) -> Tokenizer:
        return cls(formats.read_gpt2_files(vocab_path, merges_path), name="gpt2")

    @classmethod
    def from_tiktoken_file(cls, path: str | Path, special_tokens: dict[str, int] | None = None) -> Tokenizer:
        return cls(formats.read_tiktoken_file(path, special_tokens), name=Path(path).stem)

    @classmethod
    def from_hf_json(cls, path: str | Path) -> Tokenizer:
        return cls(formats.read_hf_json(path), name=Path(path).stem)

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """Load any supported format: a Koi file, HF tokenizer.json, GPT-2 folder or tiktoken file."""
        return cls(formats.read_any(path), name=Path(path).stem)

    def save(self, path: str | Path) -> None:
        formats.write_koi_file(path, self._data)

    def save_hf_json(self, path: str | Path) -> None:
        """Hugging Face ``tokenizer.json``: what an exported model ships so others can tokenize without Koi."""
        formats.write_hf_json(path, self._data)

    # properties -------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return len(self._id_to_bytes)

    @property
    def special_tokens(self) -> dict[str, int]:
        return dict(self._special)

    @property
    def eot_id(self) -> int:
        if EOT_TOKEN not in self._special:
            raise KeyError(f"tokenizer {self.name!r} has no {EOT_TOKEN} special token")
        return self._special[EOT_TOKEN]

    @property
    def bpe_data(self) -> formats.BPEData:
        return self._data

    # encoding ---------------------------------------------------------------------------
    def encode_ordinary_array(self, text: str) -> np.ndarray:
        """Ids of ``text`` as an int64 array, treating special-token text as plain text."""
        return self.encode_ordinary_many([text])[0]

    def encode_ordinary_many(self, texts: list[str]) -> list[np.ndarray]:
        """`encode_ordinary_array` of each text, in one pass over all of them (cheaper for many short texts)."""
        try:
            return self._pieces.encode_many(texts)
        except UnicodeEncodeError:
            # Lone surrogates are not text; like tiktoken, encode them as U+FFFD.
            return self._pieces.encode_many([t.encode("utf-16", "surrogatepass").decode("utf-16", "replace") for t in texts])

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode treating any special-token text as plain text."""
        if len(text) <= SMALL_TEXT_CHARS and fits(text):
            return self._small.encode(text)
        return self.encode_ordinary_array(text).tolist()

    def _allowed(self, allowed_special: SpecialSet, disallowed_special: SpecialSet, text: str) -> set[str]:
        allowed = set(self._special) if allowed_special == "all" else set(allowed_special)
        unknown = allowed - set(self._special)
        if unknown:
            raise ValueError(f"allowed_special names tokens this tokenizer does not have: {sorted(unknown)}")
        disallowed = set(self._special) - allowed if disallowed_special == "all" else set(disallowed_special)
        for token in disallowed:
            at = text.find(token)
            if at >= 0:
                raise DisallowedSpecialTokenError(
                    f"text contains the special token {token!r} at offset {at}; pass "
                    f"allowed_special={{{token!r}}} (or 'all') to encode it as one token, or "
                    f"disallowed_special=() to encode it as ordinary text"
                )
        return allowed

    def _split_special(self, text: str, allowed: set[str]) -> list[str]:
        """Alternating [ordinary, special, ordinary, ...] pieces of ``text``."""
        pattern = "(" + "|".join(re.escape(t) for t in sorted(allowed, key=len, reverse=True)) + ")"
        return re.split(pattern, text)

    def _encode_pieces(self, pieces_per_text: list[list[str]]) -> list[list[int]]:
        """Encode every ordinary piece of every text in one pass, then stitch the special tokens in."""
        ordinary = [piece for pieces in pieces_per_text for piece in pieces[0::2]]
        encoded = iter(ids.tolist() for ids in self.encode_ordinary_many(ordinary))
        out = []
        for pieces in pieces_per_text:
            ids: list[int] = []
            for k, piece in enumerate(pieces):
                ids.extend([self._special[piece]] if k % 2 else next(encoded))
            out.append(ids)
        return out

    def encode(
        self, text: str, *, allowed_special: SpecialSet = (), disallowed_special: SpecialSet = "all"
    ) -> list[int]:
        """Encode text. Special tokens raise unless allowed, exactly as tiktoken does."""
        if not allowed_special and (not disallowed_special or not any(t in text for t in self._special)):
            return self.encode_ordinary(text)  # the common call, without building sets: ~1 us of a short text's ~10
        allowed = self._allowed(allowed_special, disallowed_special, text) if self._special else set()
        if not allowed or not any(t in text for t in allowed):
            return self.encode_ordinary(text)
        return self._encode_pieces([self._split_special(text, allowed)])[0]

    def encode_batch(
        self, texts: Sequence[str], *, allowed_special: SpecialSet = (), disallowed_special: SpecialSet = "all",
        workers: int = 1,
    ) -> list[list[int]]:
        """Encode many texts; ``workers`` > 1 spreads plain texts over that many processes."""
        texts = list(texts)
        allowed: set[str] = set()
        if self._special:
            for text in texts:
                allowed = self._allowed(allowed_special, disallowed_special, text)
        if allowed:
            return self._encode_pieces([self._split_special(t, allowed) for t in texts])
        return [ids.tolist() for ids in encode_ordinary_parallel(self, texts, workers)]

    # decoding ---------------------------------------------------------------------------
    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        table = self._id_to_bytes
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < len(table)]
        if bad:
            raise ValueError(f"token id {bad[0]} is outside the vocabulary (size {len(table)})")
        return b"".join([table[i] for i in ids])

    def decode(self, ids: Iterable[int], *, errors: str = "replace") -> str:
        """Decode ids to text; bytes that are not valid UTF-8 become U+FFFD unless errors='strict'."""
        return self.decode_bytes(ids).decode("utf-8", errors=errors)

    def __repr__(self) -> str:
        return f"Tokenizer(name={self.name!r}, vocab_size={self.vocab_size}, special={sorted(self._special)})"
