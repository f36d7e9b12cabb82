"""One Triton program per 256-value block of a parameter: decode the fp8 moments, AdamW-update the
block, re-encode the moments with the block's new scale. States cross memory as 2 bytes/param plus
one fp32 scale per block for each moment; the parameter and gradient once each.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .fp8_formats import E4M3_MAX as FP8_MAX
from .fp8_formats import MOMENT_BLOCK as BLOCK


@triton.jit
def _round_to_e4m3(x):
    """Round to the nearest fp8 e4m3 value (3 mantissa bits, subnormal step 2**-9), still in fp32.

    Converting an exactly representable value is then exact everywhere; Triton's CPU interpreter
    rounds some values wrongly when it converts itself (124.1 becomes 64: the carry is lost).
    """
    magnitude = tl.abs(x)
    step = tl.exp2(tl.floor(tl.log2(tl.maximum(magnitude, 2.0**-6))) - 3.0)
    rounded = tl.floor(magnitude / step + 0.5) * step
    return tl.where(x < 0, -rounded, rounded)


@triton.jit
def _adamw8bit_block(P, G, M_CODES, M_SCALE, V_CODES, V_SCALE, STEP, SKIP, numel, lr, beta1, beta2, eps, decay, log2_beta1,
                     log2_beta2, seed_base, FP8_MAX: tl.constexpr, STOCHASTIC: tl.constexpr, GATED: tl.constexpr,
                     BLOCK: tl.constexpr):
    block = tl.program_id(0)
    offs = block * BLOCK + tl.arange(0, BLOCK)
    inside = offs < numel
    step = tl.load(STEP)  # this step's count, already advanced on the device (not where the step is skipped)
    keep = True
    if GATED:
        keep = tl.load(SKIP) == 0
    p_old = tl.load(P + offs, mask=inside, other=0.0).to(tl.float32)
    g = tl.load(G + offs, mask=inside, other=0.0).to(tl.float32)
    m_code_old, m_scale_old = tl.load(M_CODES + offs).to(tl.float32), tl.load(M_SCALE + block)  # padded to whole blocks
    v_code_old, v_scale_old = tl.load(V_CODES + offs).to(tl.float32), tl.load(V_SCALE + block)
    m = m_code_old * m_scale_old
    root_v = v_code_old * v_scale_old  # v is stored as sqrt(v)
    m = beta1 * m + (1.0 - beta1) * g
    v = beta2 * root_v * root_v + (1.0 - beta2) * g * g
    correction1 = 1.0 - tl.exp2(step * log2_beta1)
    correction2 = 1.0 - tl.exp2(step * log2_beta2)
    update = (m / correction1) / (tl.sqrt(v / correction2) + eps)
    p = p_old * (1.0 - lr * decay) - lr * update
    if STOCHASTIC:  # bf16 weights: round up with probability equal to the dropped fraction (no fp32 master copy)
        seed = (seed_base + step.to(tl.int64) * 7919) % 2147483647
        noise = (tl.randint(seed, offs.to(tl.int32)) & 0xFFFF).to(tl.int32)
        p = ((p.to(tl.int32, bitcast=True) + noise) & -65536).to(tl.float32, bitcast=True)
    # A skipped step stores what it loaded (selected, not blended: its gradient may be NaN)
    tl.store(P + offs, tl.where(keep, p, p_old).to(P.dtype.element_ty), mask=inside)
    m = tl.where(inside, m, 0.0)
    root_v = tl.where(inside, tl.sqrt(v), 0.0)
    m_scale = tl.maximum(tl.max(tl.abs(m), axis=0) / FP8_MAX, 1e-30)
    v_scale = tl.maximum(tl.max(root_v, axis=0) / FP8_MAX, 1e-30)
    m_code = tl.where(keep, _round_to_e4m3(m / m_scale), m_code_old)
    v_code = tl.where(keep, _round_to_e4m3(root_v / v_scale), v_code_old)
    tl.store(M_CODES + offs, m_code.to(M_CODES.dtype.element_ty))
    tl.store(V_CODES + offs, v_code.to(V_CODES.dtype.element_ty))
    tl.store(M_SCALE + block, tl.where(keep, m_scale, m_scale_old))
    tl.store(V_SCALE + block, tl.where(keep, v_scale, v_scale_old))


def adamw8bit_step(p: torch.Tensor, grad: torch.Tensor, state: dict, *, step: int | torch.Tensor, lr: float, beta1: float,
                   beta2: float, eps: float, weight_decay: float, seed_base: int = 0, skip: torch.Tensor | None = None) -> None:
    """In-place update of ``p`` and of the state's ``m_codes/m_scale/v_codes/v_scale`` (see `adamw8bit`).

    ``step``: this step's count (1 for the first), a number or an fp32 scalar on ``p``'s device that
    the caller has already advanced (the kernel reads it, so the host need not know it); ``skip``: a
    0/1 device scalar, where 1 leaves everything as it was. A bf16 ``p`` is written with stochastic
    rounding seeded by `step_seed(seed_base, step)`.
    """
    assert p.is_contiguous() and grad.is_contiguous(), "8-bit AdamW wants contiguous parameters and gradients"
    if not torch.is_tensor(step):
        step = torch.full((), float(step), dtype=torch.float32, device=p.device)
    blocks = state["m_scale"].numel()
    _adamw8bit_block[(blocks,)](p, grad, state["m_codes"], state["m_scale"], state["v_codes"], state["v_scale"], step,
                                skip if skip is not None else step, p.numel(), lr, beta1, beta2, eps, weight_decay,
                                log2_or_minus_inf(beta1), log2_or_minus_inf(beta2), seed_base, FP8_MAX=FP8_MAX,
                                STOCHASTIC=p.dtype == torch.bfloat16, GATED=skip is not None, BLOCK=BLOCK)


def log2_or_minus_inf(beta: float) -> float:
    """log2(beta) for the kernels' ``1 - 2**(step * log2 beta)``; a beta of 0 (no averaging) gives -inf, 2**-inf = 0."""
    return math.log2(beta) if beta > 0 else float("-inf")
