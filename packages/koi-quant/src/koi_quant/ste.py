"""Straight-through estimators: quantize in forward, pass the gradient through unchanged in backward.

Written as ``q.detach() + (w - w.detach())``: the forward value is exactly the quantized ``q``
(the second term is exactly zero) and the gradient reaching ``w`` is the identity. Plain tensor
operations, no `autograd.Function`, so torch.compile traces, fuses and differentiates them like
any other code: the compiled model is the eager model.

The gradient is the identity everywhere, clipped values included. Every scale here is computed
from the weights themselves (absmax, or absmean for ternary and binary), so "outside the clip
range" only means "larger than this block's statistic": zeroing those gradients would freeze the
largest weights (about a fifth of a Gaussian layer under ternary's 1.5 x mean|w|) until weight
decay shrinks them. Clipping as a learned trade-off belongs to learned scales (`learned_scale`).
"""

from __future__ import annotations

import torch

from .formats import QuantFormat, get_format
from .granularity import PER_ROW, Granularity
from .quantize import fake_quantize


def straight_through(value: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """``value`` in forward, identity gradient to ``source`` in backward."""
    return value.detach() + (source - source.detach())


def fake_quantize_ste(w: torch.Tensor, fmt: str | QuantFormat, granularity: Granularity = PER_ROW) -> torch.Tensor:
    """Quantize-dequantize with a straight-through (identity) gradient."""
    fmt = get_format(fmt) if isinstance(fmt, str) else fmt
    return straight_through(fake_quantize(w.detach(), fmt, granularity), w)


def quantize_activations_int8(x: torch.Tensor) -> torch.Tensor:
    """Per-token absmax int8 fake quantization of activations (BitNet's recipe); absmax never clips."""
    with torch.no_grad():
        scale = x.abs().amax(dim=-1, keepdim=True).float().clamp_min(1e-8) / 127
        q = (torch.clamp(torch.round(x.float() / scale), -127, 127) * scale).to(x.dtype)
    return straight_through(q, x)
