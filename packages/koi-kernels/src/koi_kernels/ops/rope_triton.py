"""Triton RoPE: one program per (batch, head, position) row, any input strides, forward or inverse.

The backward of a rotation is the rotation by the opposite angle, so one kernel serves both.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rope_rows(X, COS, SIN, Y, H, T, start, stride_b, stride_h, stride_t, half,
               INVERSE: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    t = row % T
    h = (row // T) % H
    b = row // (T * H)
    src = X + b.to(tl.int64) * stride_b + h * stride_h + t * stride_t
    dst = Y + row.to(tl.int64) * 2 * half
    cols = tl.arange(0, BLOCK)
    mask = cols < half
    x1 = tl.load(src + cols, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(src + half + cols, mask=mask, other=0.0).to(tl.float32)
    c = tl.load(COS + (start + t) * half + cols, mask=mask, other=0.0)
    s = tl.load(SIN + (start + t) * half + cols, mask=mask, other=0.0)
    if INVERSE:
        s = -s
    tl.store(dst + cols, (x1 * c - x2 * s).to(Y.dtype.element_ty), mask=mask)
    tl.store(dst + half + cols, (x2 * c + x1 * s).to(Y.dtype.element_ty), mask=mask)


def rope_rows(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, start: int, inverse: bool) -> torch.Tensor:
    """Rotated copy of x (B, H, T, D), contiguous; x may be any strided view with a unit last stride."""
    B, H, T, D = x.shape
    if x.stride(-1) != 1:
        x = x.contiguous()
    y = torch.empty((B, H, T, D), device=x.device, dtype=x.dtype)
    half = D // 2
    _rope_rows[(B * H * T,)](x, cos.contiguous().float(), sin.contiguous().float(), y, H, T, start,
                             x.stride(0), x.stride(1), x.stride(2), half, INVERSE=inverse,
                             BLOCK=triton.next_power_of_2(half))
    return y
