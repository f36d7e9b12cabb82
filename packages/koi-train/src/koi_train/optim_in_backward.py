"""The optimizer step fused into backward: each block's parameters are updated the moment the last of
their gradients is complete, and those gradients are freed right away, so full-model gradients never
exist at once.

This is a memory lever (it saves one model's worth of gradients) with two costs a user must
accept: no global gradient clipping (the norm is only known after every update has happened)
and no gradient accumulation. The gradient norm is still measured, block by block.

Why a block, not a parameter: one optimizer per parameter cost about 30 us of host time per
parameter per step beyond its kernel (the optimizer's wrapper, its step counts, its norm kernels),
about 580 times a step at 1558M, and each optimizer numbered its only parameter 0, so every
parameter of a shape drew the same stochastic-rounding noise. A block's gradients are complete
together (its backward is one piece), so stepping the block as one costs no memory: the estimate
already counts one block's gradients.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .config import ConfigError, RunConfig
from .optimizer_set import OptimizerSet

# (the parameters one optimizer steps, its stochastic-rounding seed) -> that optimizer
MakeOptimizer = Callable[[list[nn.Parameter], int], torch.optim.Optimizer]


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


def stepping_groups(model: nn.Module) -> list[list[nn.Parameter]]:
    """Each block's trainable parameters, then every other trainable parameter alone (embeddings, the
    final norm: their gradients complete at different moments, the embeddings' last of all)."""
    seen: set[int] = set()
    groups = []
    for block in getattr(model, "blocks", []):
        params = [p for p in block.parameters() if p.requires_grad and id(p) not in seen]
        seen.update(id(p) for p in params)
        if params:
            groups.append(params)
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in seen]
    return groups + [[p] for p in rest]


class BackwardOptimizer(OptimizerSet):
    """One optimizer per stepping group (`stepping_groups`), stepped from a post-accumulate-grad hook
    on the group's last parameter to complete its gradient."""

    def __init__(self, model: nn.Module, make_optimizer: MakeOptimizer) -> None:
        self.groups = stepping_groups(model)
        self.params = [p for group in self.groups for p in group]
        self._model_order = [p for p in model.parameters() if p.requires_grad]
        super().__init__([make_optimizer(group, seed) for seed, group in enumerate(self.groups)])
        # Summed on the parameters' device and read once per step: a host copy per group would
        # stall the GPU at every hook.
        self._squared_norm = torch.zeros((), dtype=torch.float32, device=self.params[0].device if self.params else "cpu")
        self._complete: list[set[int]] = [set() for _ in self.groups]
        for index, group in enumerate(self.groups):
            for p in group:
                p.register_post_accumulate_grad_hook(self._hook(index))

    def _hook(self, index: int):
        group, complete = self.groups[index], self._complete[index]

        def note_gradient(p: torch.Tensor) -> None:
            complete.add(id(p))
            if len(complete) == len(group):
                self._step_group(index)
        return note_gradient

    def _step_group(self, index: int) -> None:
        grads = [p.grad for p in self.groups[index] if p.grad is not None]
        if grads:
            norms = torch._foreach_norm(grads, dtype=torch.float32)
            self._squared_norm.add_(torch.stack(norms).square().sum())
            self.optimizers[index].step()
            for p in self.groups[index]:
                p.grad = None  # directly, not through Optimizer.zero_grad's bookkeeping
        self._complete[index].clear()

    def take_grad_norm(self) -> torch.Tensor:
        """The step's gradient norm, on the device (the trainer reads it together with the loss).

        First steps any group that backward left part-done: a parameter this step did not reach
        (unused in the forward) must not keep its block's update waiting for ever.
        """
        for index, complete in enumerate(self._complete):
            if complete:
                self._step_group(index)
        norm = self._squared_norm.sqrt()
        self._squared_norm.zero_()
        return norm

    def step(self) -> None:
        """Nothing left to do: every group was updated during backward (`take_grad_norm` finishes any part-done one)."""

    def zero_grad(self) -> None:
        """Gradients were freed in the hooks."""

    def load_state_dict(self, states: list[dict]) -> None:
        """Also reads the layout of koi-train 0.1, one optimizer per parameter, into one per group."""
        if len(states) == len(self.params) != len(self.groups):
            states = self._regroup(states)
        super().load_state_dict(states)

    def _regroup(self, per_parameter: list[dict]) -> list[dict]:
        """koi-train 0.1 numbered its optimizers in the model's parameter order; each held its parameter as 0."""
        saved = {id(p): state["state"].get(0) for p, state in zip(self._model_order, per_parameter, strict=True)}
        states = []
        for opt in self.optimizers:
            mine = opt.state_dict()  # this run's groups and hyperparameters, the saved moments and counts
            flat = [p for group in opt.param_groups for p in group["params"]]
            mine["state"] = {i: saved[id(p)] for i, p in enumerate(flat) if saved[id(p)] is not None}
            states.append(mine)
        return states
