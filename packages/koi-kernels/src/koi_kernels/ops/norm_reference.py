"""Torch references for the fused norms: the definition the Triton kernels are tested against."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def add_residual(x: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
    return x if residual is None else x + residual


def rms_norm_reference(x, weight, eps: float = 1e-6, residual=None):
    """Returns (y, h) with h = x + residual (x when there is none) and y = RMSNorm(h), fp32 math."""
    h = add_residual(x, residual)
    hf = h.float()
    y = hf * torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + eps) * weight.float()
    return y.to(x.dtype), h


def layer_norm_reference(x, weight, bias, eps: float = 1e-5, residual=None):
    h = add_residual(x, residual)
    y = F.layer_norm(h.float(), (h.shape[-1],), weight.float(), None if bias is None else bias.float(), eps)
    return y.to(x.dtype), h
