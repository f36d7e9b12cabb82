"""Learned step sizes (LSQ, Esser et al. 2020): the per-row scale is a parameter trained with the weights.

Forward: q = clamp(round(w / s), -qmax, qmax) * s. Backward, as LSQ defines it: the weight
gradient passes where w/s lies inside the code range; the scale gradient is (round(w/s) - w/s)
inside and the clamped code outside, times 1/sqrt(numel_per_row * qmax) so the scale learns at a
pace comparable to the weights. Both fall out of autograd once rounding is straight-through:
d(s * clamp(r))/ds = clamp(r) - r inside (r = w/s), and the clamped code outside. Plain tensor
operations, so torch.compile differentiates exactly what eager does.
"""

from __future__ import annotations

import torch

from .ste import straight_through


def scaled_gradient(t: torch.Tensor, factor: float) -> torch.Tensor:
    """``t`` in forward, its gradient multiplied by ``factor`` in backward."""
    return straight_through(t, t * factor)


def learned_scale_quantize(w: torch.Tensor, scale: torch.Tensor, qmax: int) -> torch.Tensor:
    """LSQ fake quantization of ``w`` (rows, cols) with a (rows, 1) learnable ``scale``."""
    s = scaled_gradient(scale.float(), 1.0 / (w.shape[-1] * qmax) ** 0.5).clamp_min(1e-12)
    clipped = torch.clamp(w.float() / s, -qmax, qmax)
    codes = straight_through(torch.round(clipped), clipped)
    return (codes * s).to(w.dtype)


def initial_scale(w: torch.Tensor, qmax: int) -> torch.Tensor:
    """LSQ's start: 2 * mean|w| / sqrt(qmax) per row."""
    return (2 * w.detach().float().abs().mean(dim=-1, keepdim=True) / qmax**0.5).clamp_min(1e-8)
