"""Triton fp8 matmul with a scale per 128-wide tile of the reduction dimension, for both operands.

C (M, N) = A (M, K) @ B (N, K)^T, where A and B are e4m3 codes and A[m, tile t] is scaled by
SA[m, t], B[n, tile t] by SB[n, t]. Each K step of 128 is one fp8 tensor-core dot accumulated in
fp32 after applying the two tiles' scales, so an outlier only coarsens the 128 values of its own
tile (DeepSeek-V3's fine-grained fp8). 128x128 weight blocks are passed as per-row scales (each
row of a block repeats the block's scale), which keeps one kernel for all three GEMMs of a layer.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .fp8_formats import TILE


@triton.jit
def _tile_scaled_matmul(A, B, SA, SB, C, M, N, K, tiles, stride_am, stride_bn, stride_cm,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m, pid_n = tl.program_id(0), tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for t in range(0, tiles):
        rk = t * BLOCK_K + tl.arange(0, BLOCK_K)
        a = tl.load(A + rm[:, None] * stride_am + rk[None, :], mask=(rm[:, None] < M) & (rk[None, :] < K), other=0.0)
        b = tl.load(B + rn[:, None] * stride_bn + rk[None, :], mask=(rn[:, None] < N) & (rk[None, :] < K), other=0.0)
        sa = tl.load(SA + rm * tiles + t, mask=rm < M, other=0.0)
        sb = tl.load(SB + rn * tiles + t, mask=rn < N, other=0.0)
        acc += tl.dot(a, tl.trans(b)) * sa[:, None] * sb[None, :]
    tl.store(C + rm[:, None] * stride_cm + rn[None, :], acc.to(C.dtype.element_ty), mask=(rm[:, None] < M) & (rn[None, :] < N))


def tile_scaled_matmul(a: torch.Tensor, a_scale: torch.Tensor, b: torch.Tensor, b_scale: torch.Tensor,
                       out_dtype: torch.dtype) -> torch.Tensor:
    """``a`` (M, K), ``b`` (N, K) e4m3 codes, row-major; scales (M, tiles) and (N, tiles) fp32."""
    m, k = a.shape
    n = b.shape[0]
    tiles = triton.cdiv(k, TILE)
    c = torch.empty(m, n, device=a.device, dtype=out_dtype)
    block_m, block_n = (128, 128) if a.is_cuda else (16, 16)
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n))
    _tile_scaled_matmul[grid](a, b, a_scale.contiguous(), b_scale.contiguous(), c, m, n, k, tiles, a.stride(0), b.stride(0),
                              c.stride(0), BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=TILE)
    return c
