"""Torch references for the fused optimizer step: AdamW, and stochastic rounding to bf16.

Stochastic rounding keeps bf16 weights unbiased: a small update that round-to-nearest would
erase every step is kept with the right probability, so no fp32 master copy is needed.
"""

from __future__ import annotations

import torch


def stochastic_round_bf16(x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Round fp32 ``x`` to bf16 up or down with probability given by the dropped bits.

    ``noise`` holds uniform integers in [0, 2**16): adding them to the 16 bits bf16 drops and
    truncating rounds up exactly when noise >= 2**16 - dropped, i.e. with probability dropped / 2**16.
    """
    bits = x.float().view(torch.int32)
    rounded = (bits + noise.to(torch.int32)) & ~0xFFFF
    return rounded.view(torch.float32).to(torch.bfloat16)


def adamw_reference(param: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor, *,
                    step: int | torch.Tensor, lr: float, beta1: float, beta2: float, eps: float, weight_decay: float,
                    noise: torch.Tensor | None = None, skip: torch.Tensor | None = None) -> None:
    """One decoupled AdamW step in fp32, in place; bf16 params are written back with stochastic rounding.

    ``step`` is this step's count (a number, or a scalar tensor as the kernel reads it); where the
    device flag ``skip`` is 1, nothing changes (selected, not blended: a skipped gradient may be NaN).
    """
    p = param.float()
    g = grad.float()
    m = exp_avg * beta1 + g * (1 - beta1)
    v = torch.addcmul(exp_avg_sq * beta2, g, g, value=1 - beta2)
    m_hat = m / (1 - beta1**step)
    v_hat = v / (1 - beta2**step)
    p = p * (1 - lr * weight_decay) - lr * m_hat / (v_hat.sqrt() + eps)
    p = stochastic_round_bf16(p, noise) if param.dtype == torch.bfloat16 and noise is not None else p.to(param.dtype)
    if skip is not None:
        keep_old = skip.reshape(()).to(device=param.device) != 0
        m, v, p = torch.where(keep_old, exp_avg, m), torch.where(keep_old, exp_avg_sq, v), torch.where(keep_old, param, p)
    exp_avg.copy_(m)
    exp_avg_sq.copy_(v)
    param.copy_(p)
