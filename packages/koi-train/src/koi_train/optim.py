"""Optimizers: AdamW, Muon (hidden matrices) + AdamW (the rest), and Lion.

Each param group remembers its peak LR in ``base_lr`` so one schedule multiplier drives all of
them, whichever optimizer owns the group.
"""

from __future__ import annotations

import torch
from torch import nn

from koi_kernels import AdamW8bit, FusedAdamW

from .config import OptimizerConfig
from .optimizer_set import OptimizerSet


def newton_schulz_orthogonalize(grad: torch.Tensor, steps: int) -> torch.Tensor:
    """Approximate U V^T of the gradient's SVD with a quintic Newton-Schulz iteration.

    Coefficients (3.4445, -4.7750, 2.0315) are the published Muon ones: they push singular values
    towards 1 fast without needing convergence. bf16 on GPU, fp32 on CPU (where bf16 matmul is slow).
    """
    a, b, c = 3.4445, -4.7750, 2.0315
    x = grad.to(torch.bfloat16 if grad.is_cuda else torch.float32)
    transposed = x.size(0) > x.size(1)
    if transposed:
        x = x.T
    x = x / (x.norm() + 1e-7)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.T if transposed else x).to(grad.dtype)


class Muon(torch.optim.Optimizer):
    """Momentum SGD whose update is orthogonalised per matrix (Jordan et al., 2024)."""

    def __init__(self, params, lr: float = 0.02, momentum: float = 0.95, nesterov: bool = True,
                 ns_steps: int = 5, weight_decay: float = 0.0) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad)
                buf = state["momentum_buffer"]
                buf.mul_(group["momentum"]).add_(p.grad)
                direction = p.grad.add(buf, alpha=group["momentum"]) if group["nesterov"] else buf
                update = newton_schulz_orthogonalize(direction, group["ns_steps"])
                scale = max(1.0, p.size(0) / p.size(1)) ** 0.5
                if group["weight_decay"]:
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(update, alpha=-group["lr"] * scale)


class Lion(torch.optim.Optimizer):
    """Sign-of-momentum updates (Chen et al., 2023): one state tensor per parameter."""

    def __init__(self, params, lr: float = 1e-4, betas=(0.9, 0.99), weight_decay: float = 0.0) -> None:
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "exp_avg" not in state:
                    state["exp_avg"] = torch.zeros_like(p)
                m = state["exp_avg"]
                update = (m * beta1 + p.grad * (1 - beta1)).sign_()
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(update, alpha=-group["lr"])
                m.mul_(beta2).add_(p.grad, alpha=1 - beta2)


def hidden_matrices(model: nn.Module) -> list[nn.Parameter]:
    """2-D weights inside the transformer blocks: what Muon is meant for (not embeddings or head)."""
    return [p for p in model.blocks.parameters() if p.ndim == 2 and p.requires_grad]


def embedding_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Token and position embeddings and the output head (often the same tensor as the token embedding)."""
    found = [m.weight for m in model.modules() if isinstance(m, nn.Embedding)] + [model.output_head.weight]
    unique = {id(p): p for p in found if p.requires_grad}
    return list(unique.values())


def with_embedding_lr(params: list[nn.Parameter], embeddings: set[int], embedding_lr: float | None) -> list:
    """``params`` as it is, or as two param groups: the rest at the optimizer's LR, the embeddings at ``embedding_lr``."""
    if embedding_lr is None:
        return params
    groups = [{"params": [p for p in params if id(p) not in embeddings]},
              {"params": [p for p in params if id(p) in embeddings], "lr": embedding_lr}]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, cfg: OptimizerConfig, lr: float, device: torch.device,
                    in_backward: bool = False) -> OptimizerSet:
    params = [p for p in model.parameters() if p.requires_grad]
    embeddings = {id(p) for p in embedding_parameters(model)}
    fused = device.type in ("cuda", "cpu")  # fused AdamW can skip an update on a device flag (late_judging.py)
    if cfg.weights == "bf16" and cfg.name not in ("adamw", "adamw8bit"):
        # Only Koi's fused AdamW and 8-bit AdamW round bf16 weights stochastically; any other step
        # would round to nearest and lose updates smaller than half a bf16 step.
        raise ValueError("optimizer.weights: bf16 weights need optimizer.name adamw or adamw8bit (stochastic rounding), "
                         f"got {cfg.name!r}")
    if in_backward:
        from .optim_in_backward import BackwardOptimizer

        if cfg.name not in ("adamw", "adamw8bit"):
            raise ValueError(f"optimizer.name: train.optimizer_in_backward supports adamw and adamw8bit, got {cfg.name!r}")
        if cfg.weights == "bf16" and cfg.name == "adamw":
            kind, extra = FusedAdamW, {}
        else:
            kind = AdamW8bit if cfg.name == "adamw8bit" else torch.optim.AdamW
            extra = {"fused": fused} if kind is torch.optim.AdamW else {}
        def lr_of(p: nn.Parameter) -> float:
            return cfg.embedding_lr if cfg.embedding_lr is not None and id(p) in embeddings else lr

        return BackwardOptimizer(model, lambda p: kind([p], lr=lr_of(p), betas=cfg.betas, eps=cfg.eps,
                                                       weight_decay=cfg.weight_decay, **extra))
    groups = with_embedding_lr(params, embeddings, cfg.embedding_lr)
    if cfg.weights == "bf16" and cfg.name == "adamw":
        return OptimizerSet([FusedAdamW(groups, lr=lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)])
    if cfg.name == "adamw8bit":
        return OptimizerSet([AdamW8bit(groups, lr=lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)])
    if cfg.name == "lion":
        return OptimizerSet([Lion(groups, lr=lr, betas=cfg.betas, weight_decay=cfg.weight_decay)])
    if cfg.name == "muon":
        matrices = hidden_matrices(model)
        chosen = {id(p) for p in matrices}
        rest = with_embedding_lr([p for p in params if id(p) not in chosen], embeddings, cfg.embedding_lr)
        return OptimizerSet([
            Muon(matrices, lr=cfg.muon_lr, momentum=cfg.muon_momentum, ns_steps=cfg.muon_ns_steps),
            torch.optim.AdamW(rest, lr=lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay, fused=fused),
        ])
    return OptimizerSet([
        torch.optim.AdamW(groups, lr=lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay, fused=fused)
    ])
