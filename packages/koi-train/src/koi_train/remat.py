"""Activation recomputation applied to a built model from outside (the model code stays plain).

Modes: ``ffn`` recomputes each MLP, ``selective`` each attention and MLP (keeping the block's
residual stream), ``full`` each whole block. Forwards are wrapped in place, so parameter names
and checkpoints are the same with or without remat.
"""

from __future__ import annotations

import functools

from torch import nn
from torch.utils.checkpoint import checkpoint

REMAT_MODES = ("none", "ffn", "selective", "full")


def _wrap(module: nn.Module) -> None:
    original = module.forward

    @functools.wraps(original)
    def forward(*args, **kwargs):
        if not module.training:
            return original(*args, **kwargs)
        return checkpoint(original, *args, use_reentrant=False, **kwargs)

    module.forward = forward


def apply_remat(model: nn.Module, mode: str) -> list[str]:
    """Wrap the parts ``mode`` names; return their names (for the start-of-run report)."""
    if mode not in REMAT_MODES:
        raise ValueError(f"remat.mode: expected one of {REMAT_MODES}, got {mode!r}")
    if mode == "none":
        return []
    wrapped = []
    blocks = set(model.blocks)
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        is_block = module in blocks
        is_mlp = leaf == "mlp"
        is_attn = leaf in ("attn", "self_attn")
        if (mode == "full" and is_block) or (mode == "ffn" and is_mlp) or (mode == "selective" and (is_mlp or is_attn)):
            _wrap(module)
            wrapped.append(name)
    return wrapped
