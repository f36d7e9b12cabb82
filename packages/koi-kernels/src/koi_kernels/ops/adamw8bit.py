"""AdamW with 8-bit optimizer states: about 2 bytes per parameter for m and v instead of 8.

Both moments are stored in fp8 e4m3 per block of 256 values with one fp32 scale per block: m
signed, v as sqrt(v) (halving its dynamic range in log space, which is what an 8-bit float with
4 exponent bits needs). e4m3's floating exponent keeps small entries of a block from collapsing
to zero the way a linear 8-bit code would. Math runs in fp32 between loads and stores.

On CUDA one Triton program per block does the whole step (`adamw8bit_triton`); `adamw8bit_reference`
is the same step in torch ops, used elsewhere and as the kernel's yardstick.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..dispatch import use_triton
from .adamw_reference import stochastic_round_bf16
from .fp8_formats import E4M3 as FP8
from .fp8_formats import E4M3_MAX as FP8_MAX
from .fp8_formats import MOMENT_BLOCK as BLOCK
from .optimizer_state import advance, load_keeping_dtypes, step_seed


def _encode(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 values (flattened, padded to blocks) -> (fp8 codes, per-block fp32 scales)."""
    blocks = F.pad(x.reshape(-1), (0, (-x.numel()) % BLOCK)).view(-1, BLOCK)
    scale = (blocks.abs().amax(dim=1, keepdim=True) / FP8_MAX).clamp_min(1e-30)
    return (blocks / scale).to(FP8), scale


def _decode(codes: torch.Tensor, scale: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return (codes.float() * scale).view(-1)[: like.numel()].view(like.shape)


def _new_state(p: torch.Tensor) -> dict:
    zeros = torch.zeros_like(p, dtype=torch.float32)
    return dict(zip(("m_codes", "m_scale"), _encode(zeros))) | dict(zip(("v_codes", "v_scale"), _encode(zeros)))


class AdamW8bit(torch.optim.Optimizer):
    """AdamW keeping m and sqrt(v) in fp8 blocks. Like torch's fused AdamW, a step waits on a device
    flag when ``found_inf`` is set (a 0/1 tensor): where it is 1 the weights, the moments and the step
    count stay as they were, and nothing is read back to the host (optimizer_state.py says why)."""

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.01,
                 seed: int = 0) -> None:
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))
        self.seed = seed  # bf16 parameters are written with stochastic rounding drawn from it

    def state_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for s in self.state.values() for t in s.values() if torch.is_tensor(t) and t.ndim)

    def load_state_dict(self, state_dict: dict) -> None:
        load_keeping_dtypes(self, state_dict)  # torch's own would turn the fp8 codes into the parameters' dtype

    @torch.no_grad()
    def step(self, closure=None):
        skip = getattr(self, "found_inf", None)
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            options = dict(lr=group["lr"], beta1=beta1, beta2=beta2, eps=group["eps"], weight_decay=group["weight_decay"])
            for p, step, base in advance(self, group, _new_state, skip):
                state = self.state[p]
                if use_triton(p) and p.is_contiguous():
                    from .adamw8bit_triton import adamw8bit_step

                    adamw8bit_step(p, p.grad.contiguous(), state, step=step, seed_base=base, skip=skip, **options)
                else:
                    noise = None
                    if p.dtype == torch.bfloat16:  # the torch form draws its noise on the host's seed: one read
                        gen = torch.Generator(device=p.device).manual_seed(step_seed(base, int(step)))
                        noise = torch.randint(0, 2**16, p.shape, generator=gen, device=p.device)
                    adamw8bit_reference(p, p.grad, state, step=step, noise=noise, skip=skip, **options)


def _select(skip: torch.Tensor | None, old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """``new``, or ``old`` where the device flag ``skip`` is 1 (selected bit for bit: fp8 codes through their bytes)."""
    if skip is None:
        return new
    keep_old = skip.reshape(()).to(device=new.device) != 0
    if new.dtype == FP8:
        return torch.where(keep_old, old.to(FP8).view(torch.uint8), new.view(torch.uint8)).view(FP8)
    return torch.where(keep_old, old.to(new.dtype), new)


def adamw8bit_reference(p: torch.Tensor, grad: torch.Tensor, state: dict, *, step: int | torch.Tensor, lr: float, beta1: float,
                        beta2: float, eps: float, weight_decay: float, noise: torch.Tensor | None = None,
                        skip: torch.Tensor | None = None) -> None:
    """One 8-bit AdamW step in torch ops: decode the moments, update, re-encode; a bf16 ``p`` given
    ``noise`` (uniform integers below 2**16) is written with stochastic rounding. ``step`` is this
    step's count (a number, or a scalar tensor as the kernel reads it); where ``skip`` is 1 nothing changes."""
    g = grad.float()
    m = _decode(state["m_codes"], state["m_scale"], p).mul_(beta1).add_(g, alpha=1 - beta1)
    v = _decode(state["v_codes"], state["v_scale"], p).square_().mul_(beta2).addcmul_(g, g, value=1 - beta2)
    update = (m / (1 - beta1**step)) / ((v / (1 - beta2**step)).sqrt() + eps)
    updated = p.float() * (1 - lr * weight_decay) - lr * update
    updated = stochastic_round_bf16(updated, noise) if noise is not None and p.dtype == torch.bfloat16 else updated.to(p.dtype)
    m_codes, m_scale = _encode(m)
    v_codes, v_scale = _encode(v.sqrt())
    p.copy_(_select(skip, p, updated))
    for name, new in (("m_codes", m_codes), ("m_scale", m_scale), ("v_codes", v_codes), ("v_scale", v_scale)):
        state[name] = _select(skip, state[name], new)
