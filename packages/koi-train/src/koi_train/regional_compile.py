"""Compile each transformer block on its own instead of the whole objective.

A whole-model graph returns every weight gradient together at the end of its one backward, so an
optimizer stepped from gradient hooks (`train.optimizer_in_backward`) would still hold all of
them at once and save no memory. With one graph per block, a block's gradients are complete, its
parameters stepped and its gradients freed before the next block's backward starts. The blocks
share code, so the graph compiles once and is reused; embedding, final norm and the fused loss
stay eager (they are one or two kernels each).

Only full-sequence calls (training and val loss) go through the compiled graph. A call with a KV
cache (sampling) stays eager: Dynamo guards on the cache's per-layer contents, so every layer and
every decoding position would be a recompile, and after torch's recompile limit (8) the blocks
would silently run eager anyway, after minutes of compiling.
"""

from __future__ import annotations

import functools
import inspect

import torch
from torch import nn


def compile_blocks(model: nn.Module, **options) -> int:
    """Compile every block of ``model`` in place (parameter names unchanged); return how many."""
    for block in model.blocks:
        _compile_full_sequence_calls(block, options)
    return len(model.blocks)


def _compile_full_sequence_calls(block: nn.Module, options: dict) -> None:
    eager = block.forward
    compiled = torch.compile(eager, **options)
    cache_at = list(inspect.signature(eager).parameters).index("cache")

    @functools.wraps(eager)
    def forward(*args, **kwargs):
        with_cache = kwargs.get("cache") is not None or (len(args) > cache_at and args[cache_at] is not None)
        return eager(*args, **kwargs) if with_cache else compiled(*args, **kwargs)

    block.forward = forward
