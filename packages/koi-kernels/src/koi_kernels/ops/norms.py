"""RMSNorm and LayerNorm with optional fused residual add: autograd wrappers and dispatch.

`rms_norm(x, w, residual=r)` returns (y, h) where h = x + r is the new residual stream, so a
pre-norm block does its add and its norm in one pass over memory.
"""

from __future__ import annotations

import torch

from ..dispatch import use_triton
from .norm_reference import layer_norm_reference, rms_norm_reference


class _FusedNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, residual, weight, bias, eps: float, is_rms: bool):
        from .norm_triton import norm_forward

        shape = x.shape
        x2d = x.reshape(-1, shape[-1]).contiguous()
        r2d = residual.reshape(-1, shape[-1]).contiguous() if residual is not None else None
        y, h, mean, rstd = norm_forward(x2d, r2d, weight.contiguous(), bias.contiguous() if bias is not None else None, eps, is_rms)
        ctx.save_for_backward(h, weight, mean, rstd)
        ctx.is_rms, ctx.has_bias, ctx.has_residual, ctx.shape = is_rms, bias is not None, residual is not None, shape
        return y.view(shape), h.view(shape)

    @staticmethod
    def backward(ctx, dy, dh_out):
        from .norm_triton import norm_backward

        h, weight, mean, rstd = ctx.saved_tensors
        n = ctx.shape[-1]
        dh = dh_out.reshape(-1, n).contiguous() if (dh_out is not None and ctx.has_residual) else None
        dx, dw, db = norm_backward(dy.reshape(-1, n).contiguous(), dh, h, weight, ctx.has_bias, mean, rstd, ctx.is_rms)
        dx = dx.view(ctx.shape)
        return dx, (dx if ctx.has_residual else None), dw, db, None, None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6, residual: torch.Tensor | None = None):
    """(RMSNorm(x + residual) * weight, x + residual)."""
    if use_triton(x):
        return _FusedNorm.apply(x, residual, weight, None, eps, True)
    return rms_norm_reference(x, weight, eps, residual)


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float = 1e-5,
               residual: torch.Tensor | None = None):
    """(LayerNorm(x + residual), x + residual)."""
    if use_triton(x):
        return _FusedNorm.apply(x, residual, weight, bias, eps, False)
    return layer_norm_reference(x, weight, bias, eps, residual)
