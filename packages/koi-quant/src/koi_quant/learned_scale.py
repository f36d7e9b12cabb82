"""Learned step sizes (LSQ, Esser et al. 2020): the per-row scale is a parameter trained with the weights.

Forward: q = clamp(round(w / s), -qmax, qmax) * s. Backward: the weight gradient passes where w/s
lies inside the code range; the scale gradient is (q - w/s) inside and the clamped code outside,
times 1/sqrt(numel * qmax) so the scale learns at a pace comparable to the weights.
"""

from __future__ import annotations

import torch


class LearnedScaleQuantize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w: torch.Tensor, scale: torch.Tensor, qmax: int) -> torch.Tensor:
        s = scale.float().clamp_min(1e-12)
        ratio = w.float() / s
        codes = torch.clamp(torch.round(ratio), -qmax, qmax)
        ctx.save_for_backward(ratio, codes)
        ctx.qmax, ctx.scale_dtype = qmax, scale.dtype
        return (codes * s).to(w.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        ratio, codes = ctx.saved_tensors
        inside = ratio.abs() <= ctx.qmax
        g = grad.float()
        grad_w = (g * inside).to(grad.dtype)
        per_element = torch.where(inside, codes - ratio, codes)
        step_scale = 1.0 / (ratio.shape[-1] * ctx.qmax) ** 0.5
        grad_s = (g * per_element).sum(dim=-1, keepdim=True) * step_scale
        return grad_w, grad_s.to(ctx.scale_dtype), None


def initial_scale(w: torch.Tensor, qmax: int) -> torch.Tensor:
    """LSQ's start: 2 * mean|w| / sqrt(qmax) per row."""
    return (2 * w.detach().float().abs().mean(dim=-1, keepdim=True) / qmax**0.5).clamp_min(1e-8)
