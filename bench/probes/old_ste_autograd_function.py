"""Straight-through estimators: quantize in forward, pass the gradient through in backward.

The gradient is the identity where the value lies inside the format's clip range and zero
outside it (clipped values would not move their code), as in LSQ/PACT-style training.
"""

from __future__ import annotations

import torch

from koi_quant.formats import QuantFormat, get_format
from koi_quant.granularity import PER_ROW, Granularity, as_matrix, from_blocks, to_blocks
from koi_quant.quantize import block_codes, block_values


def clip_range_mask(w: torch.Tensor, fmt: QuantFormat, granularity: Granularity) -> torch.Tensor:
    """True where w is inside the representable range (+ half a step) of its block."""
    if fmt.kind in ("fp8", "nf4"):  # absmax-scaled to the largest level: nothing clips
        return torch.ones_like(w, dtype=torch.bool)
    m = as_matrix(w.detach())
    block = granularity.block_shape(*m.shape)
    blocks, mask = to_blocks(m.float(), block)
    _, scale, zero = block_codes(blocks, mask, fmt)
    if fmt.kind == "int_asym":
        lo, hi = (-zero - 0.5) * scale, (fmt.qmax - zero + 0.5) * scale
        inside = (blocks >= lo) & (blocks <= hi)
    else:
        limit = (fmt.qmax + (0.5 if fmt.kind in ("int", "ternary") else 1.0)) * scale
        inside = blocks.abs() <= limit
    return from_blocks(inside, block, *m.shape).reshape(w.shape)


class FakeQuantizeSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w: torch.Tensor, fmt: QuantFormat, granularity: Granularity) -> torch.Tensor:
        m = as_matrix(w)
        block = granularity.block_shape(*m.shape)
        blocks, mask = to_blocks(m.float(), block)
        codes, scale, zero = block_codes(blocks, mask, fmt)
        ctx.save_for_backward(clip_range_mask(w, fmt, granularity))
        return from_blocks(block_values(codes, scale, zero, fmt), block, *m.shape).reshape(w.shape).to(w.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None


def fake_quantize_ste(w: torch.Tensor, fmt: str | QuantFormat, granularity: Granularity = PER_ROW) -> torch.Tensor:
    """Quantize-dequantize with a straight-through gradient (zero outside the clip range)."""
    return FakeQuantizeSTE.apply(w, get_format(fmt) if isinstance(fmt, str) else fmt, granularity)


class ActivationInt8STE(torch.autograd.Function):
    """Per-token absmax int8 fake quantization of activations (BitNet's activation recipe)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        scale = x.detach().abs().amax(dim=-1, keepdim=True).float().clamp_min(1e-8) / 127
        return (torch.clamp(torch.round(x.float() / scale), -127, 127) * scale).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad  # absmax scaling never clips, so the whole range passes


def quantize_activations_int8(x: torch.Tensor) -> torch.Tensor:
    return ActivationInt8STE.apply(x)
