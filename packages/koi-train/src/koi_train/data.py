"""Training batches: random windows from memory-mapped token shards, resumable exactly.

Each batch draws window starts uniformly over all shards at once, from a seeded PCG64 stream.
The stream's state is the data position: saving it and restoring it replays the same batches.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from koi_tokenizer import ShardError, TokenizerFileError, expand_inputs, read_shard

from .config import ConfigError


def open_shards(patterns: Sequence[str], *, field: str, min_tokens: int) -> list[np.ndarray]:
    """Open every shard the patterns name; the config field is named when none is usable."""
    if not patterns:
        raise ConfigError("", field, "expected at least one shard path or glob, got none")
    try:
        files = expand_inputs(list(patterns))
    except TokenizerFileError as exc:
        raise ConfigError("", field, str(exc)) from None
    shards = [read_shard(f) for f in files]
    if not any(len(s) >= min_tokens for s in shards):
        raise ShardError(files[0], "token_count", f"expected a shard with at least {min_tokens} tokens for one window")
    return shards


class RandomWindows:
    """Batches of (inputs, targets), each (B, T) int64, from random offsets in the shards.

    Every rank draws the same global batch of B x world_size windows and keeps its own slice, so
    N processes see exactly the batches one process with N times the batch would.
    """

    def __init__(self, shards: list[np.ndarray], *, block_size: int, batch_size: int, seed: int,
                 rank: int = 0, world_size: int = 1, pin_memory: bool = False) -> None:
        """``pin_memory``: batches in page-locked memory, so their copy to a GPU runs without the host waiting."""
        self.shards = [s for s in shards if len(s) >= block_size + 1]
        self.block_size, self.batch_size = block_size, batch_size
        self.rank, self.world_size, self.pin_memory = rank, world_size, pin_memory
        windows = np.array([len(s) - block_size for s in self.shards], dtype=np.int64)
        self.cumulative = np.cumsum(windows)
        self.rng = np.random.Generator(np.random.PCG64(seed))

    @property
    def tokens(self) -> int:
        return int(sum(len(s) for s in self.shards))

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        starts = self.rng.integers(0, int(self.cumulative[-1]), size=self.batch_size * self.world_size)
        starts = starts[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
        shard_index = np.searchsorted(self.cumulative, starts, side="right")
        before = np.concatenate([[0], self.cumulative])[shard_index]
        rows = [
            np.asarray(self.shards[s][o : o + self.block_size + 1], dtype=np.int64)
            for s, o in zip(shard_index, starts - before)
        ]
        batch = torch.from_numpy(np.stack(rows))  # (B, T+1)
        if self.pin_memory:  # from torch's cache of pinned blocks: no new page-locking per batch
            batch = batch.pin_memory()
        return batch[:, :-1], batch[:, 1:]

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
