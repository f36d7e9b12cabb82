"""Triton AdamW: one pass over a parameter reads p, g, m, v and writes p, m, v.

bf16 parameters are updated in fp32 registers and written back with stochastic rounding
(random bits from Philox, seeded per step), so they need no fp32 master copy.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .adamw8bit_triton import log2_or_minus_inf


@triton.jit
def _adamw(P, G, M, V, STEP, SKIP, n, lr, beta1, beta2, eps, weight_decay, log2_beta1, log2_beta2, seed_base,
           STOCHASTIC: tl.constexpr, GATED: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    step = tl.load(STEP)  # this step's count, already advanced on the device (not where the step is skipped)
    keep = True
    if GATED:
        keep = tl.load(SKIP) == 0
    p_old = tl.load(P + offs, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(G + offs, mask=mask, other=0.0).to(tl.float32)
    m_old = tl.load(M + offs, mask=mask, other=0.0)
    v_old = tl.load(V + offs, mask=mask, other=0.0)
    m = beta1 * m_old + (1.0 - beta1) * g
    v = beta2 * v_old + (1.0 - beta2) * g * g
    bias1 = 1.0 - tl.exp2(step * log2_beta1)
    bias2 = 1.0 - tl.exp2(step * log2_beta2)
    p = p_old * (1.0 - lr * weight_decay) - lr * (m / bias1) / (tl.sqrt(v / bias2) + eps)
    # A skipped step stores what it loaded (selected, not blended: its gradient may be NaN)
    tl.store(M + offs, tl.where(keep, m, m_old), mask=mask)
    tl.store(V + offs, tl.where(keep, v, v_old), mask=mask)
    if STOCHASTIC:
        seed = (seed_base + step.to(tl.int64) * 7919) % 2147483647
        noise = (tl.randint(seed, offs.to(tl.int32)) & 0xFFFF).to(tl.int32)
        bits = (p.to(tl.int32, bitcast=True) + noise) & -65536  # clear the 16 bits bf16 drops
        p = bits.to(tl.float32, bitcast=True)
    tl.store(P + offs, tl.where(keep, p, p_old).to(P.dtype.element_ty), mask=mask)


def adamw_step(param: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor, *,
               step: int | torch.Tensor, lr: float, beta1: float, beta2: float, eps: float, weight_decay: float,
               seed_base: int = 0, skip: torch.Tensor | None = None) -> None:
    """In-place AdamW step. ``step``: this step's count, a number or an fp32 scalar on the device that
    the caller already advanced; ``skip``: a 0/1 device scalar, where 1 leaves everything as it was;
    a bf16 ``param`` is rounded stochastically, seeded by `step_seed(seed_base, step)`."""
    if not torch.is_tensor(step):
        step = torch.full((), float(step), dtype=torch.float32, device=param.device)
    n = param.numel()
    block = 1024
    _adamw[(triton.cdiv(n, block),)](
        param, grad, exp_avg, exp_avg_sq, step, skip if skip is not None else step, n, lr, beta1, beta2, eps, weight_decay,
        log2_or_minus_inf(beta1), log2_or_minus_inf(beta2), seed_base,
        STOCHASTIC=param.dtype == torch.bfloat16, GATED=skip is not None, BLOCK=block,
    )
