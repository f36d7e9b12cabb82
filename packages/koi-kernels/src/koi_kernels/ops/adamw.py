"""`FusedAdamW`: AdamW whose per-parameter step is one Triton kernel (torch reference elsewhere).

Parameters may be fp32, or bf16 with stochastic rounding instead of an fp32 master copy
(2 bytes/param of weights instead of 6); states m and v stay fp32.
"""

from __future__ import annotations

import torch

from ..dispatch import use_triton
from .adamw_reference import adamw_reference
from .optimizer_state import advance, load_keeping_dtypes, step_seed


def _new_state(p: torch.Tensor) -> dict:
    return {"exp_avg": torch.zeros_like(p, dtype=torch.float32), "exp_avg_sq": torch.zeros_like(p, dtype=torch.float32)}


class FusedAdamW(torch.optim.Optimizer):
    """AdamW, one kernel per parameter. Like torch's fused AdamW, a step waits on a device flag when
    ``found_inf`` is set (a 0/1 tensor): where it is 1 the weights, the moments and the step count
    stay as they were, and nothing is read back to the host (optimizer_state.py says why)."""

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.01,
                 seed: int = 0) -> None:
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))
        self.seed = seed

    def load_state_dict(self, state_dict: dict) -> None:
        load_keeping_dtypes(self, state_dict)  # torch's own would cast bf16 weights' fp32 moments to bf16

    @torch.no_grad()
    def step(self, closure=None):
        skip = getattr(self, "found_inf", None)
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            options = dict(lr=group["lr"], beta1=beta1, beta2=beta2, eps=group["eps"], weight_decay=group["weight_decay"])
            for p, step, base in advance(self, group, _new_state, skip):
                state = self.state[p]
                if use_triton(p):
                    from .adamw_triton import adamw_step

                    adamw_step(p, p.grad, state["exp_avg"], state["exp_avg_sq"], step=step, seed_base=base, skip=skip, **options)
                else:
                    noise = None
                    if p.dtype == torch.bfloat16:  # the torch form draws its noise on the host's seed: one read
                        gen = torch.Generator(device=p.device).manual_seed(step_seed(base, int(step)))
                        noise = torch.randint(0, 2**16, p.shape, generator=gen, device=p.device)
                    adamw_reference(p, p.grad, state["exp_avg"], state["exp_avg_sq"], step=step, noise=noise, skip=skip,
                                    **options)
