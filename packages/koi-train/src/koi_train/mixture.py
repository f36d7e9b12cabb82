"""Evolutionary mixture of shallow experts (EOE, arXiv 2509.24436), counted honestly.

The configured depth L is split into E experts of L/E consecutive layers each. The model on the
device is one shallow model: the shared embedding, head and final norm around L/E blocks, which
hold the active expert's weights. The other experts' block weights and optimizer state wait in
host memory. Every `switch` steps the active expert is stored, the others are pulled toward it
(particle-swarm step x += c * r * (best - x), r uniform in [0, 1] per element, and/or element-wise
crossover with probability p), and the next expert is loaded. Total parameters count every
expert; active parameters are what one step trains.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import nn

from .config import ConfigError, MixtureConfig, ModelConfig

RESIDUAL_PROJECTIONS = ("c_proj.weight", "o_proj.weight", "down_proj.weight")


def expert_layers(total_layers: int, cfg: MixtureConfig) -> int:
    if total_layers % cfg.experts:
        raise ConfigError("", "mixture.experts", f"expected a divisor of model.n_layer {total_layers}, got {cfg.experts}")
    return total_layers // cfg.experts


def expert_model_config(model: ModelConfig, cfg: MixtureConfig, total_layers: int) -> ModelConfig:
    """What the device holds in a mixture run: the configured model at one expert's depth."""
    return dataclasses.replace(model, n_layer=expert_layers(total_layers, cfg))


def _host(t: torch.Tensor) -> torch.Tensor:
    copy = t.detach().to("cpu", copy=True)
    return copy.pin_memory() if t.is_cuda else copy


def _host_into(t: torch.Tensor, held: torch.Tensor | None) -> torch.Tensor:
    """``t`` in host memory: copied into ``held`` (asynchronously from a GPU) when its shape and dtype fit."""
    if held is None or held.shape != t.shape or held.dtype != t.dtype or held.device.type != "cpu":
        return _host(t)
    held.copy_(t.detach(), non_blocking=held.is_pinned())
    return held


def _finish_copies(params) -> None:
    """Wait for the asynchronous device-to-host copies: the host reads those tensors next."""
    for device in {p.device for p in params if p.is_cuda}:
        torch.cuda.current_stream(device).synchronize()


class ExpertMixture:
    def __init__(self, model: nn.Module, optimizers: list[torch.optim.Optimizer], cfg: MixtureConfig, seed: int) -> None:
        self.model, self.optimizers, self.cfg = model, optimizers, cfg
        self.block_params = dict(model.blocks.named_parameters())
        self.active = 0
        self.generator = torch.Generator().manual_seed(seed + 1)
        self.seed = seed
        self._device_generator: torch.Generator | None = None  # the pull's draws when the model is on a GPU
        # Every expert starts from its own initialisation: re-draw the blocks for experts 1..E-1.
        self.weights = [self._snapshot_weights()]
        residual_std = model.spec.init_std / (2 * model.spec.n_layer) ** 0.5  # as the model's own init
        for _ in range(1, cfg.experts):
            with torch.no_grad():
                for name, p in self.block_params.items():
                    if p.ndim == 2:
                        std = residual_std if name.endswith(RESIDUAL_PROJECTIONS) else model.spec.init_std
                        p.copy_(torch.randn(p.shape, generator=self.generator).to(p) * std)
            self.weights.append(self._snapshot_weights())
        self._load_weights(self.weights[0])
        self.opt_states: list[dict | None] = [None] * cfg.experts
        self.best_expert: int | None = None  # at the last evaluation

    # what a step trains, and what the model holds in all --------------------------------------
    def parameter_counts(self) -> dict[str, int]:
        block = sum(p.numel() for p in self.block_params.values())
        shared = sum(p.numel() for p in {id(p): p for p in self.model.parameters()}.values()) - block
        return {"total": shared + block * self.cfg.experts, "active": shared + block, "experts": self.cfg.experts}

    # host <-> device ----------------------------------------------------------------------------
    def _snapshot_weights(self, into: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """The active block weights in host memory, copied into ``into``'s tensors where they fit."""
        out = {name: _host_into(p, (into or {}).get(name)) for name, p in self.block_params.items()}
        _finish_copies(self.block_params.values())
        return out

    def _load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, p in self.block_params.items():
                p.copy_(weights[name], non_blocking=True)

    def _snapshot_optimizer(self, into: dict | None = None) -> dict:
        """The active blocks' optimizer state in host memory, copied into ``into``'s tensors where they fit."""
        out = {}
        for name, p in self.block_params.items():
            for opt in self.optimizers:
                if p in opt.state:
                    held = (into or {}).get(name, {})
                    out[name] = {k: _host_into(v, held.get(k)) if torch.is_tensor(v) else v for k, v in opt.state[p].items()}
        _finish_copies(self.block_params.values())
        return out

    def _load_optimizer(self, states: dict | None) -> None:
        for name, p in self.block_params.items():
            for opt in self.optimizers:
                if any(p is q for group in opt.param_groups for q in group["params"]):
                    opt.state.pop(p, None)
                    if states and name in states:
                        opt.state[p] = {k: v.to(p.device) if torch.is_tensor(v) else v for k, v in states[name].items()}

    # the evolutionary step ----------------------------------------------------------------------
    def _generator(self, device: torch.device) -> torch.Generator:
        if device.type == "cpu":
            return self.generator
        if self._device_generator is None:
            self._device_generator = torch.Generator(device).manual_seed(self.seed + 2)
        return self._device_generator

    def _pull_toward(self, other: dict[str, torch.Tensor]) -> None:
        """Move ``other`` (an expert in host memory) toward the active expert, which is on the model's device.

        On a GPU each tensor visits the device for its pull: a draw per element of every expert is
        seconds of host work per switch at 1558M, a round trip over PCIe a fraction of one.
        """
        for name, held in other.items():
            best = self.block_params[name].detach()
            x = held.to(best.device, non_blocking=True)  # on the CPU: ``held`` itself, pulled in place
            generator = self._generator(best.device)
            if self.cfg.method in ("pso", "pso_ga"):
                r = torch.rand(x.shape, generator=generator, device=best.device)
                x.add_(self.cfg.social * r * (best - x))
            if self.cfg.method in ("mix", "pso_ga"):
                take = torch.rand(x.shape, generator=generator, device=best.device) < self.cfg.crossover
                x.copy_(torch.where(take, best, x))
            if x is not held:
                held.copy_(x, non_blocking=held.is_pinned())
        _finish_copies(self.block_params.values())

    def switch(self) -> int:
        """Store the active expert, pull the others toward it, load the next; return the new index.

        The active expert goes into its own host tensors of the last switch: pinning host memory
        costs about a second per GB, which every switch paid when each took fresh ones."""
        self.weights[self.active] = self._snapshot_weights(self.weights[self.active])
        self.opt_states[self.active] = self._snapshot_optimizer(self.opt_states[self.active])
        for i, other in enumerate(self.weights):
            if i != self.active:
                self._pull_toward(other)
        self.active = (self.active + 1) % self.cfg.experts
        self._load_weights(self.weights[self.active])
        self._load_optimizer(self.opt_states[self.active])
        return self.active

    # evaluation ----------------------------------------------------------------------------------
    def evaluate_experts(self, evaluate: Callable[[Callable], float]) -> dict:
        """Loss of every expert, the best one, and the ensemble that averages the experts' logits."""
        self.weights[self.active] = self._snapshot_weights(self.weights[self.active])
        losses = []
        for weights in self.weights:
            self._load_weights(weights)
            losses.append(evaluate(self.model))

        def ensemble(idx: torch.Tensor) -> torch.Tensor:
            total = None
            for weights in self.weights:
                self._load_weights(weights)
                logits = self.model(idx).float()
                total = logits if total is None else total + logits
            return total / len(self.weights)

        ensemble_loss = evaluate(ensemble)
        self._load_weights(self.weights[self.active])
        best = self.best_expert = min(range(len(losses)), key=losses.__getitem__)
        return {"expert_losses": losses, "best_expert": best, "best_loss": losses[best], "ensemble_loss": ensemble_loss}

    # checkpoints ---------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        self.weights[self.active] = self._snapshot_weights(self.weights[self.active])
        return {"active": self.active, "weights": self.weights, "opt_states": self.opt_states,
                "generator": self.generator.get_state(), "best_expert": self.best_expert,
                "device_generator": None if self._device_generator is None else self._device_generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.active, self.weights, self.opt_states = state["active"], state["weights"], state["opt_states"]
        self.generator.set_state(state["generator"])
        device_state = state.get("device_generator")
        if device_state is not None:
            self._generator(next(iter(self.block_params.values())).device).set_state(device_state)
        self.best_expert = state.get("best_expert")
        self._load_weights(self.weights[self.active])
