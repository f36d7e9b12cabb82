"""`FusedAdamW`: AdamW whose per-parameter step is one Triton kernel (torch reference elsewhere).

Parameters may be fp32, or bf16 with stochastic rounding instead of an fp32 master copy
(2 bytes/param of weights instead of 6); states m and v stay fp32.
"""

from __future__ import annotations

import torch

from ..dispatch import use_triton
from .adamw_reference import adamw_reference


class FusedAdamW(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.01,
                 seed: int = 0) -> None:
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))
        self.seed = seed

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for index, p in enumerate(group["params"]):
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)
                state["step"] += 1
                step = int(state["step"])
                seed = (self.seed * 1_000_003 + step * 7_919 + index) % (2**31 - 1)
                options = dict(step=step, lr=group["lr"], beta1=beta1, beta2=beta2, eps=group["eps"],
                               weight_decay=group["weight_decay"])
                if use_triton(p):
                    from .adamw_triton import adamw_step

                    adamw_step(p, p.grad, state["exp_avg"], state["exp_avg_sq"], seed=seed, **options)
                else:
                    gen = torch.Generator(device=p.device).manual_seed(seed)
                    noise = torch.randint(0, 2**16, p.shape, generator=gen, device=p.device) if p.dtype == torch.bfloat16 else None
                    adamw_reference(p, p.grad, state["exp_avg"], state["exp_avg_sq"], noise=noise, **options)
