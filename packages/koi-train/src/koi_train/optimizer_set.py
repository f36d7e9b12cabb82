"""`OptimizerSet`: several optimizers driven as one.

Its own file, below both `optim` (which builds the usual sets) and `optim_in_backward` (which
subclasses it), so neither has to import the other's module to share it.
"""

from __future__ import annotations

import torch


class OptimizerSet:
    """Several optimizers stepped, zeroed, scheduled and checkpointed as one."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]) -> None:
        self.optimizers = optimizers
        # True under CUDA graphs: gradients are zeroed in place, never dropped (cuda_graphs.py)
        self.keep_grad_buffers = False
        for opt in optimizers:
            for group in opt.param_groups:
                group.setdefault("base_lr", group["lr"])

    def set_lr_multiplier(self, multiplier: float) -> None:
        for opt in self.optimizers:
            for group in opt.param_groups:
                group["lr"] = group["base_lr"] * multiplier

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()

    def zero_grad(self) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=not self.keep_grad_buffers)

    def state_dict(self) -> list[dict]:
        return [opt.state_dict() for opt in self.optimizers]

    def load_state_dict(self, states: list[dict]) -> None:
        for opt, state in zip(self.optimizers, states, strict=True):
            opt.load_state_dict(state)
