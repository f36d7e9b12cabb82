"""Perplexity of a token stream with a sliding window, each token scored once with the most context.

Windows of ``block_size`` tokens advance by ``stride``; after the first, only the last ``stride``
positions of a window are scored, so every token is predicted with at least block_size - stride
tokens of context (stride = block_size gives plain non-overlapping windows).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

LogitsFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class PerplexityResult:
    nll: float  # mean negative log-likelihood, nats per token
    tokens: int

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll)


@torch.no_grad()
def perplexity(logits_fn: LogitsFn, tokens: np.ndarray | list[int], *, block_size: int, stride: int | None = None,
               device: torch.device | str = "cpu") -> PerplexityResult:
    ids = torch.as_tensor(np.asarray(tokens, dtype=np.int64))
    stride = stride or block_size
    if not 0 < stride <= block_size:
        raise ValueError(f"stride: expected 1..{block_size}, got {stride}")
    if len(ids) < 2:
        raise ValueError("perplexity needs at least two tokens")
    total, count, scored_until = 0.0, 0, 0  # scored_until: targets [1, scored_until] are done
    start = 0
    while scored_until < len(ids) - 1:
        window = ids[start : start + block_size + 1].to(device)
        logits = logits_fn(window[None, :-1])[0].float()  # (T, V)
        losses = F.cross_entropy(logits, window[1:], reduction="none")
        first_new = scored_until - start  # targets before this index were scored by an earlier window
        total += float(losses[first_new:].double().sum())
        count += len(losses) - first_new
        scored_until = start + len(losses)
        start += stride
    return PerplexityResult(total / count, count)
