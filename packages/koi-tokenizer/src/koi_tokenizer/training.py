"""Train a byte-level BPE vocabulary from text, deterministically.

The HF trainer does the counting and merging; here we turn its result into Koi's layout:
ordinary tokens take ids 0..n-1 in the order they were learned (bytes first, as GPT-2 does) and
special tokens come after them, so `eot_id` is the last id like GPT-2's 50256.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

from tokenizers import Tokenizer as EngineTokenizer
from tokenizers import models, pre_tokenizers, trainers

from .byte_level import token_text_to_bytes
from .formats import BPEData
from .tokenizer import EOT_TOKEN, Tokenizer


def train_bpe(
    texts: Iterable[str],
    *,
    vocab_size: int,
    special_tokens: Sequence[str] = (EOT_TOKEN,),
    min_frequency: int = 2,
) -> Tokenizer:
    """Learn merges from ``texts`` until the vocabulary (specials included) has ``vocab_size`` ids."""
    if vocab_size < 256 + len(special_tokens):
        raise ValueError(f"vocab_size: expected at least {256 + len(special_tokens)} (256 bytes + specials), got {vocab_size}")
    engine = EngineTokenizer(models.BPE())
    engine.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    engine.train_from_iterator(texts, trainer=trainer)
    model = json.loads(engine.to_str())["model"]
    learned = [(token_text_to_bytes(t), idx) for t, idx in model["vocab"].items() if t not in special_tokens]
    # Single bytes first in byte order, then merged tokens in the order they were learned.
    learned.sort(key=lambda pair: (0, pair[0][0]) if len(pair[0]) == 1 else (1, pair[1]))
    vocab = {token: new_id for new_id, (token, _) in enumerate(learned)}
    merges = []
    for merge in model["merges"]:
        left, right = merge.split(" ") if isinstance(merge, str) else merge
        merges.append((token_text_to_bytes(left), token_text_to_bytes(right)))
    special = {token: len(vocab) + k for k, token in enumerate(special_tokens)}
    return Tokenizer(BPEData(vocab, merges, special), name=f"bpe-{vocab_size}")
