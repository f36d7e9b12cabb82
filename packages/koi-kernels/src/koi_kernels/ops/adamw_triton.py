"""Triton AdamW: one pass over a parameter reads p, g, m, v and writes p, m, v.

bf16 parameters are updated in fp32 registers and written back with stochastic rounding
(random bits from Philox, seeded per step), so they need no fp32 master copy.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _adamw(P, G, M, V, n, lr, beta1, beta2, eps, weight_decay, bias1, bias2, seed,
           STOCHASTIC: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    p = tl.load(P + offs, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(G + offs, mask=mask, other=0.0).to(tl.float32)
    m = tl.load(M + offs, mask=mask, other=0.0)
    v = tl.load(V + offs, mask=mask, other=0.0)
    m = beta1 * m + (1.0 - beta1) * g
    v = beta2 * v + (1.0 - beta2) * g * g
    p = p * (1.0 - lr * weight_decay) - lr * (m / bias1) / (tl.sqrt(v / bias2) + eps)
    tl.store(M + offs, m, mask=mask)
    tl.store(V + offs, v, mask=mask)
    if STOCHASTIC:
        noise = (tl.randint(seed, offs.to(tl.int32)) & 0xFFFF).to(tl.int32)
        bits = (p.to(tl.int32, bitcast=True) + noise) & -65536  # clear the 16 bits bf16 drops
        p = bits.to(tl.float32, bitcast=True)
    tl.store(P + offs, p.to(P.dtype.element_ty), mask=mask)


def adamw_step(param: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor, *, step: int,
               lr: float, beta1: float, beta2: float, eps: float, weight_decay: float, seed: int) -> None:
    n = param.numel()
    block = 1024
    _adamw[(triton.cdiv(n, block),)](
        param, grad, exp_avg, exp_avg_sq, n, lr, beta1, beta2, eps, weight_decay, 1 - beta1**step, 1 - beta2**step, seed,
        STOCHASTIC=param.dtype == torch.bfloat16, BLOCK=block,
    )
