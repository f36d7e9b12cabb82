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
    if cfg.distributed.strategy != "none":
        # The hook fires when this rank's gradient is complete, before DDP averages it (and under
        # FSDP before the reduce-scatter): each rank would step on its own gradient and drift apart.
        raise ConfigError("", "train.optimizer_in_backward", f"expected false with distributed.strategy "
                          f"{cfg.distributed.strategy!r} (each rank would update from its own un-averaged gradient); "
                          "set distributed.strategy to none, or optimizer_in_backward to false")
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
        # Summed on the parameters' device and read once per step: a host copy per parameter
        # would stall the GPU at every hook.
        self._squared_norm = torch.zeros((), dtype=torch.float32, device=self.params[0].device if self.params else "cpu")
        for p, opt in zip(self.params, self.optimizers):
            p.register_post_accumulate_grad_hook(self._hook(opt))

    def _hook(self, opt: torch.optim.Optimizer):
        def step_now(p: torch.Tensor) -> None:
            # Host time matters here: this runs once per parameter per step (about 580 times at 1558M),
            # so one norm kernel instead of four, and the gradient freed directly rather than through
            # Optimizer.zero_grad's bookkeeping (about 30 us a call).
            self._squared_norm.add_(torch.linalg.vector_norm(p.grad, dtype=torch.float32).square())
            opt.step()
            p.grad = None
        return step_now

    def take_grad_norm(self) -> torch.Tensor:
        """The step's gradient norm, on the device (the trainer reads it together with the loss)."""
        norm = self._squared_norm.sqrt()
        self._squared_norm.zero_()
        return norm

    def step(self) -> None:
        """Nothing left to do: every parameter was updated during backward."""

    def zero_grad(self) -> None:
        """Gradients were freed in the hooks."""
