"""Compile each transformer block on its own instead of the whole objective.

A whole-model graph returns every weight gradient together at the end of its one backward, so an
optimizer stepped from gradient hooks (`train.optimizer_in_backward`) would still hold all of
them at once and save no memory. With one graph per block, a block's gradients are complete, its
parameters stepped and its gradients freed before the next block's backward starts. The blocks
share code, so the graph compiles once and is reused; embedding, final norm and the fused loss
stay eager (they are one or two kernels each).
"""

from __future__ import annotations

from torch import nn


def compile_blocks(model: nn.Module, **options) -> int:
    """Compile every block of ``model`` in place (parameter names unchanged); return how many."""
    for block in model.blocks:
        block.compile(**options)
    return len(model.blocks)
