"""One Triton program per 256-value block of a parameter: decode the fp8 moments, AdamW-update the
block, re-encode the moments with the block's new scale. States cross memory as 2 bytes/param plus
one fp32 scale per block for each moment; the parameter and gradient once each.
"""

from __future__ import annotations

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
def _adamw8bit_block(P, G, M_CODES, M_SCALE, V_CODES, V_SCALE, numel, lr, beta1, beta2, eps, decay, correction1,
                     correction2, seed, FP8_MAX: tl.constexpr, STOCHASTIC: tl.constexpr, BLOCK: tl.constexpr):
    block = tl.program_id(0)
    offs = block * BLOCK + tl.arange(0, BLOCK)
    inside = offs < numel
    p = tl.load(P + offs, mask=inside, other=0.0).to(tl.float32)
    g = tl.load(G + offs, mask=inside, other=0.0).to(tl.float32)
    m = tl.load(M_CODES + offs).to(tl.float32) * tl.load(M_SCALE + block)  # codes are padded to whole blocks
    root_v = tl.load(V_CODES + offs).to(tl.float32) * tl.load(V_SCALE + block)  # v is stored as sqrt(v)
    m = beta1 * m + (1.0 - beta1) * g
    v = beta2 * root_v * root_v + (1.0 - beta2) * g * g
    update = (m / correction1) / (tl.sqrt(v / correction2) + eps)
    p = p * (1.0 - lr * decay) - lr * update
    if STOCHASTIC:  # bf16 weights: round up with probability equal to the dropped fraction (no fp32 master copy)
        noise = (tl.randint(seed, offs.to(tl.int32)) & 0xFFFF).to(tl.int32)
        p = ((p.to(tl.int32, bitcast=True) + noise) & -65536).to(tl.float32, bitcast=True)
    tl.store(P + offs, p.to(P.dtype.element_ty), mask=inside)
    m = tl.where(inside, m, 0.0)
    root_v = tl.where(inside, tl.sqrt(v), 0.0)
    m_scale = tl.maximum(tl.max(tl.abs(m), axis=0) / FP8_MAX, 1e-30)
    v_scale = tl.maximum(tl.max(root_v, axis=0) / FP8_MAX, 1e-30)
    tl.store(M_CODES + offs, _round_to_e4m3(m / m_scale).to(M_CODES.dtype.element_ty))
    tl.store(V_CODES + offs, _round_to_e4m3(root_v / v_scale).to(V_CODES.dtype.element_ty))
    tl.store(M_SCALE + block, m_scale)
    tl.store(V_SCALE + block, v_scale)


def adamw8bit_step(p: torch.Tensor, grad: torch.Tensor, state: dict, *, step: int, lr: float, beta1: float, beta2: float,
                   eps: float, weight_decay: float, seed: int = 0) -> None:
    """In-place update of ``p`` and of the state's ``m_codes/m_scale/v_codes/v_scale`` (see `adamw8bit`);
    a bf16 ``p`` is written with stochastic rounding drawn from ``seed``."""
    assert p.is_contiguous() and grad.is_contiguous(), "8-bit AdamW wants contiguous parameters and gradients"
    blocks = state["m_scale"].numel()
    _adamw8bit_block[(blocks,)](p, grad, state["m_codes"], state["m_scale"], state["v_codes"], state["v_scale"], p.numel(),
                                lr, beta1, beta2, eps, weight_decay, 1 - beta1**step, 1 - beta2**step, seed,
                                FP8_MAX=FP8_MAX, STOCHASTIC=p.dtype == torch.bfloat16, BLOCK=BLOCK)
