"""Validation loss over fixed windows of held-out tokens: sampled (cheap, comparable) or full.

The sampled loss uses a seeded subset of the non-overlapping windows, the same subset at every
evaluation, so successive points of a curve differ only because the model changed. Its standard
error comes from the spread of per-window losses.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

LogitsFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Window:
    shard: int
    start: int


@dataclass(frozen=True)
class LossEstimate:
    loss: float
    stderr: float
    windows: int
    tokens: int
    sampled: bool
    time_bounded: bool = False  # True when max_seconds cut the evaluation short

    def as_record(self, prefix: str = "val") -> dict:
        return {f"{prefix}_loss": self.loss, f"{prefix}_stderr": self.stderr, f"{prefix}_windows": self.windows,
                f"{prefix}_tokens": self.tokens, f"{prefix}_sampled": self.sampled, f"{prefix}_time_bounded": self.time_bounded}


def all_windows(shard_lengths: Sequence[int], block_size: int) -> list[Window]:
    """Every non-overlapping window of ``block_size`` inputs (+1 target) in every shard."""
    return [
        Window(s, k * block_size)
        for s, n in enumerate(shard_lengths)
        for k in range(max(0, (n - 1) // block_size))
    ]


def sample_windows(windows: Sequence[Window], fraction: float, *, seed: int, max_windows: int | None = None) -> list[Window]:
    """A seeded subset (at least one window), kept in file order for cache-friendly reads."""
    if not windows:
        raise ValueError("no validation windows: the val shards are shorter than one block")
    count = max(1, round(fraction * len(windows)))
    if max_windows is not None:
        count = min(count, max_windows)
    chosen = np.random.Generator(np.random.PCG64(seed)).choice(len(windows), size=count, replace=False)
    return [windows[i] for i in sorted(chosen)]


@torch.no_grad()
def window_losses(
    logits_fn: LogitsFn, shards: Sequence[np.ndarray], windows: Sequence[Window], *,
    block_size: int, batch_size: int, device: torch.device | str = "cpu", max_seconds: float | None = None,
) -> np.ndarray:
    """Mean next-token loss of each window, in fp32; stops after the batch that crosses ``max_seconds``."""
    out = []
    start = time.perf_counter()
    for i in range(0, len(windows), batch_size):
        if max_seconds is not None and out and time.perf_counter() - start > max_seconds:
            break
        chunk = windows[i : i + batch_size]
        rows = np.stack([np.asarray(shards[w.shard][w.start : w.start + block_size + 1], dtype=np.int64) for w in chunk])
        batch = torch.from_numpy(rows).to(device)
        logits = logits_fn(batch[:, :-1]).float()  # (B, T, V)
        loss = F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten(), reduction="none")
        out.append(loss.view(len(chunk), block_size).mean(dim=1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def estimate_loss(
    logits_fn: LogitsFn, shards: Sequence[np.ndarray], *, block_size: int, batch_size: int = 8,
    fraction: float = 1.0, seed: int = 0, max_windows: int | None = None, device: torch.device | str = "cpu",
    max_seconds: float | None = None,
) -> LossEstimate:
    """Val loss over a seeded ``fraction`` of windows (1.0 and no cap: the full val loss).

    With ``max_seconds`` the evaluation may stop early, over a prefix of the chosen windows, and the
    result says so (``time_bounded``); without it, every chosen window is scored.
    """
    windows = all_windows([len(s) for s in shards], block_size)
    full = fraction >= 1.0 and (max_windows is None or max_windows >= len(windows))
    chosen = windows if full else sample_windows(windows, fraction, seed=seed, max_windows=max_windows)
    losses = window_losses(logits_fn, shards, chosen, block_size=block_size, batch_size=batch_size, device=device,
                           max_seconds=max_seconds)
    stderr = float(losses.std(ddof=1) / math.sqrt(len(losses))) if len(losses) > 1 else float("nan")
    cut = len(losses) < len(chosen)
    return LossEstimate(float(losses.mean()), stderr, len(losses), len(losses) * block_size, sampled=not full or cut,
                        time_bounded=cut)
