"""Triton RMSNorm/LayerNorm with an optional fused residual add, forward and backward.

One program normalises one row in the forward. The backward gives each program a contiguous
run of rows and accumulates the weight/bias gradients in registers, writing one partial sum per
program (summed by torch afterwards), so no atomics and a deterministic result.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _norm_forward(X, R, W, B, Y, H, MEAN, RSTD, stride, N, eps,
                  IS_RMS: tl.constexpr, HAS_RES: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < N
    x = tl.load(X + row * stride + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_RES:
        # Add in fp32, then round to the stream's dtype as torch's x + r does, and normalise the rounded value.
        x = x + tl.load(R + row * stride + cols, mask=mask, other=0.0).to(tl.float32)
        x_rounded = x.to(H.dtype.element_ty)
        tl.store(H + row * stride + cols, x_rounded, mask=mask)
        x = x_rounded.to(tl.float32)
    if IS_RMS:
        mean = 0.0
        xc = x
    else:
        mean = tl.sum(x, axis=0) / N
        xc = tl.where(mask, x - mean, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=0) / N + eps)
    tl.store(MEAN + row, mean)
    tl.store(RSTD + row, rstd)
    y = xc * rstd * tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        y = y + tl.load(B + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(Y + row * stride + cols, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _norm_backward(DY, DH_OUT, H, W, MEAN, RSTD, DX, DW, DB, stride, M, N, rows_per_program,
                   IS_RMS: tl.constexpr, HAS_DH: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < N
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK], dtype=tl.float32)
    db = tl.zeros([BLOCK], dtype=tl.float32)
    row_start = pid * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, M)
    for row in range(row_start, row_end):
        h = tl.load(H + row * stride + cols, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + row * stride + cols, mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(RSTD + row)
        xhat = tl.where(mask, (h - tl.load(MEAN + row)) * rstd, 0.0)
        wdy = w * dy
        dw += dy * xhat
        if HAS_BIAS:
            db += dy
        c1 = tl.sum(xhat * wdy, axis=0) / N
        if IS_RMS:
            dx = (wdy - xhat * c1) * rstd
        else:
            c2 = tl.sum(wdy, axis=0) / N
            dx = (wdy - (xhat * c1 + c2)) * rstd
        if HAS_DH:
            dx += tl.load(DH_OUT + row * stride + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(DX + row * stride + cols, dx.to(DX.dtype.element_ty), mask=mask)
    tl.store(DW + pid * N + cols, dw, mask=mask)
    if HAS_BIAS:
        tl.store(DB + pid * N + cols, db, mask=mask)


def _block(n: int) -> int:
    return triton.next_power_of_2(n)


def _programs(device: torch.device, rows: int) -> int:
    if device.type == "cuda":
        return min(rows, torch.cuda.get_device_properties(device).multi_processor_count * 4)
    return min(rows, 4)


def norm_forward(x2d, residual2d, weight, bias, eps: float, is_rms: bool):
    M, N = x2d.shape
    y = torch.empty_like(x2d)
    h = torch.empty_like(x2d) if residual2d is not None else x2d
    mean = torch.empty(M, device=x2d.device, dtype=torch.float32)
    rstd = torch.empty(M, device=x2d.device, dtype=torch.float32)
    _norm_forward[(M,)](
        x2d, residual2d if residual2d is not None else x2d, weight, bias if bias is not None else weight, y, h, mean, rstd,
        x2d.stride(0), N, eps, IS_RMS=is_rms, HAS_RES=residual2d is not None, HAS_BIAS=bias is not None,
        BLOCK=_block(N), num_warps=min(max(_block(N) // 256, 1), 16),
    )
    return y, h, mean, rstd


def norm_backward(dy2d, dh_out2d, h2d, weight, has_bias: bool, mean, rstd, is_rms: bool):
    M, N = dy2d.shape
    programs = _programs(dy2d.device, M)
    rows_per_program = -(-M // programs)
    dx = torch.empty_like(h2d)
    dw = torch.empty(programs, N, device=dy2d.device, dtype=torch.float32)
    db = torch.empty(programs, N, device=dy2d.device, dtype=torch.float32) if has_bias else dw
    _norm_backward[(programs,)](
        dy2d, dh_out2d if dh_out2d is not None else dy2d, h2d, weight, mean, rstd, dx, dw, db,
        dy2d.stride(0), M, N, rows_per_program, IS_RMS=is_rms, HAS_DH=dh_out2d is not None, HAS_BIAS=has_bias,
        BLOCK=_block(N), num_warps=min(max(_block(N) // 256, 1), 16),
    )
    return dx, dw.sum(0).to(weight.dtype), db.sum(0).to(weight.dtype) if has_bias else None
