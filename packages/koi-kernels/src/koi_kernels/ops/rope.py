"""RoPE for queries and keys together: autograd wrapper and dispatch."""

from __future__ import annotations

import torch

from ..dispatch import use_triton
from .rope_reference import rope_reference


class _Rope(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, cos, sin, start: int):
        from .rope_triton import rope_rows

        ctx.save_for_backward(cos, sin)
        ctx.start = start
        return rope_rows(x, cos, sin, start, inverse=False)

    @staticmethod
    def backward(ctx, grad):
        from .rope_triton import rope_rows

        cos, sin = ctx.saved_tensors
        return rope_rows(grad, cos, sin, ctx.start, inverse=True), None, None, None


def rope(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate q (B, H, T, D) and k (B, Hkv, T, D) for positions start..start+T-1; cos/sin (max_T, D/2)."""
    if use_triton(q, fusable=True):
        return _Rope.apply(q, cos, sin, start), _Rope.apply(k, cos, sin, start)
    return rope_reference(q, cos, sin, start), rope_reference(k, cos, sin, start)
