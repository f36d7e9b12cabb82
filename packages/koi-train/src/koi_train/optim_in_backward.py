"""The optimizer step fused into backward: each parameter is updated the moment its gradient is
complete, and the gradient is freed right away, so full-model gradients never exist at once.

This is a memory lever (it saves one model's worth of gradients) with two costs a user must
accept: no global gradient clipping (the norm is only known after every update has happened)
and no gradient accumulation. The gradient norm is still measured, parameter by parameter.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import ConfigError, RunConfig
from .optimizer_set import OptimizerSet


def check_compatible(cfg: RunConfig) -> None:
    if cfg.train.grad_clip > 0:
        raise ConfigError("", "train.grad_clip", "expected 0 with train.optimizer_in_backward (no global norm before the update)")
    if cfg.train.grad_accum > 1:
        raise ConfigError("", "train.grad_accum", "expected 1 with train.optimizer_in_backward")
    if cfg.instability.enabled and cfg.instability.action == "lr_cut":
        # skip works: with the update already applied it restores a snapshot (recovery.py)
        raise ConfigError("", "instability.action", "expected skip, rollback or abort with train.optimizer_in_backward "
                          "(the update has happened by the time a step is judged, so there is no step to cut)")


class BackwardOptimizer(OptimizerSet):
    """One optimizer per parameter, stepped from a post-accumulate-grad hook."""

    def __init__(self, model: nn.Module, make_optimizer) -> None:
        self.params = [p for p in model.parameters() if p.requires_grad]
        super().__init__([make_optimizer(p) for p in self.params])
        self._squared_norm = torch.zeros((), dtype=torch.float64)
        for p, opt in zip(self.params, self.optimizers):
            p.register_post_accumulate_grad_hook(self._hook(opt))

    def _hook(self, opt: torch.optim.Optimizer):
        def step_now(p: torch.Tensor) -> None:
            self._squared_norm += p.grad.detach().double().pow(2).sum().cpu()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return step_now

    def take_grad_norm(self) -> float:
        norm = float(self._squared_norm.sqrt())
        self._squared_norm.zero_()
        return norm

    def step(self) -> None:
        """Nothing left to do: every parameter was updated during backward."""

    def zero_grad(self) -> None:
        """Gradients were freed in the hooks."""
