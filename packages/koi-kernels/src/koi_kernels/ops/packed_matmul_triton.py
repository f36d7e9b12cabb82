"""Triton matmuls with packed low-bit weights, dequantized in registers: y = x @ W^T and, for the
backward pass, dx = dy @ W.

W (N, K) is koi-quant's packed layout for row or group scales: codes row-major, 8/bits per byte,
code j of a byte at bits [j*bits, (j+1)*bits), stored as unsigned code + offset. Each program
computes a BLOCK_M x BLOCK_N tile; per K step it loads the bytes it needs (each byte once per
code it holds: repeated loads hit the cache), shifts out its code, applies the group scale and
feeds the dot in the activations' dtype. The weights cross memory at 1-8 bits per value.

Precision is the caller's dtype, meant literally: bf16 activations multiply bf16 weights on the
tensor cores (fp32 accumulation), the training and inference case; fp32 activations get an IEEE
fp32 dot, not TF32 (Triton's default for fp32, which rounds operands to 10 mantissa bits), so
fp32 callers get fp32 results.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _dequantized_tile(P, S, rn, rk, N, K, groups_per_row, group_size, offset, BITS: tl.constexpr):
    """W[rn, rk] as fp32 (BLOCK_N, BLOCK_K), from packed codes and their group scales; 0 outside W."""
    per_byte: tl.constexpr = 8 // BITS
    mask_bits: tl.constexpr = (1 << BITS) - 1
    flat = rn[:, None].to(tl.int64) * K + rk[None, :]  # code index in the row-major (N, K) layout
    inside = (rn[:, None] < N) & (rk[None, :] < K)
    byte = tl.load(P + flat // per_byte, mask=inside, other=0).to(tl.int32)
    code = (byte >> ((flat % per_byte) * BITS).to(tl.int32)) & mask_bits
    scale = tl.load(S + rn[:, None] * groups_per_row + rk[None, :] // group_size, mask=inside, other=0.0)
    return (code - offset).to(tl.float32) * scale


@triton.jit
def _dot(a, b, LOW_PRECISION_DOT: tl.constexpr):
    """a @ b: tensor cores in a's 16-bit dtype (fp32 accumulation), else an IEEE fp32 dot.

    The Triton interpreter computes 16-bit dots wrongly, so on CPU 16-bit inputs are upcast.
    """
    if LOW_PRECISION_DOT and a.dtype != tl.float32:
        return tl.dot(a, b.to(a.dtype))
    return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")


@triton.jit
def _packed_matmul(X, P, S, Y, M, N, K, stride_xm, stride_ym, groups_per_row, group_size, offset,
                   BITS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                   LOW_PRECISION_DOT: tl.constexpr):
    """Y (M, N) = X (M, K) @ W^T."""
    pid_m, pid_n = tl.program_id(0), tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(X + rm[:, None] * stride_xm + rk[None, :], mask=(rm[:, None] < M) & (rk[None, :] < K), other=0.0)
        w = _dequantized_tile(P, S, rn, rk, N, K, groups_per_row, group_size, offset, BITS)
        acc += _dot(x, tl.trans(w), LOW_PRECISION_DOT)
    tl.store(Y + rm[:, None] * stride_ym + rn[None, :], acc.to(Y.dtype.element_ty), mask=(rm[:, None] < M) & (rn[None, :] < N))


@triton.jit
def _packed_matmul_input_grad(DY, P, S, DX, M, N, K, stride_dym, stride_dxm, groups_per_row, group_size, offset,
                              BITS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                   LOW_PRECISION_DOT: tl.constexpr):
    """DX (M, K) = DY (M, N) @ W: the same dequantized tiles, reduced over N instead of K."""
    pid_m, pid_k = tl.program_id(0), tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rk = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        rn = n0 + tl.arange(0, BLOCK_N)
        dy = tl.load(DY + rm[:, None] * stride_dym + rn[None, :], mask=(rm[:, None] < M) & (rn[None, :] < N), other=0.0)
        w = _dequantized_tile(P, S, rn, rk, N, K, groups_per_row, group_size, offset, BITS)
        acc += _dot(dy, w, LOW_PRECISION_DOT)
    tl.store(DX + rm[:, None] * stride_dxm + rk[None, :], acc.to(DX.dtype.element_ty), mask=(rm[:, None] < M) & (rk[None, :] < K))


def _blocks(t: torch.Tensor) -> tuple[int, int, int]:
    return (64, 64, 64) if t.is_cuda else (16, 16, 32)


def packed_matmul(x2d: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, *, n: int, k: int, bits: int, offset: float,
                  group_size: int) -> torch.Tensor:
    m = x2d.shape[0]
    y = torch.empty(m, n, device=x2d.device, dtype=x2d.dtype)
    block_m, block_n, block_k = _blocks(x2d)
    scale = scale.reshape(n, -1).contiguous()
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n))
    _packed_matmul[grid](x2d, packed, scale, y, m, n, k, x2d.stride(0), y.stride(0), scale.shape[1], group_size, offset,
                         BITS=bits, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, LOW_PRECISION_DOT=x2d.is_cuda)
    return y


def packed_matmul_input_grad(dy: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, *, n: int, k: int, bits: int,
                             offset: float, group_size: int) -> torch.Tensor:
    m = dy.shape[0]
    dx = torch.empty(m, k, device=dy.device, dtype=dy.dtype)
    block_m, block_n, block_k = _blocks(dy)
    scale = scale.reshape(n, -1).contiguous()
    grid = (triton.cdiv(m, block_m), triton.cdiv(k, block_k))
    _packed_matmul_input_grad[grid](dy, packed, scale, dx, m, n, k, dy.stride(0), dx.stride(0), scale.shape[1], group_size,
                                    offset, BITS=bits, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, LOW_PRECISION_DOT=dy.is_cuda)
    return dx
