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

    ``grad`` is one matrix (r, c) or a stack of same-shape matrices (n, r, c), each orthogonalised
    on its own: a stack costs the kernel launches of one matrix. Coefficients (3.4445, -4.7750,
    2.0315) are the published Muon ones: they push singular values towards 1 fast without needing
    convergence. bf16 on GPU, fp32 on CPU (where bf16 matmul is slow).
    """
    a, b, c = 3.4445, -4.7750, 2.0315
    x = grad.to(torch.bfloat16 if grad.is_cuda else torch.float32)
    single = x.ndim == 2
    if single:
        x = x.unsqueeze(0)
    transposed = x.size(-2) > x.size(-1)
    if transposed:
        x = x.mT
    x = x / (torch.linalg.vector_norm(x, dim=(-2, -1), keepdim=True) + 1e-7)
    for _ in range(steps):
        gram = x @ x.mT
        x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    if transposed:
        x = x.mT
    return (x[0] if single else x).to(grad.dtype)


# Matrices stacked per batch: 256 MiB per fp32 stack, and a step holds five (gradients, old and new
# momentum, old and new weights): each shape of 124M in one batch, 1558M's in a few.
STACK_ELEMENTS = 1 << 26


class Muon(torch.optim.Optimizer):
    """Momentum SGD whose update is orthogonalised per matrix (Jordan et al., 2024).

    Matrices of one shape step together: one stacked Newton-Schulz and a few foreach ops per
    shape (4 shapes at GPT-2 124M instead of 48 matrices one by one), since a per-matrix loop
    launches thousands of small kernels a step and leaves the GPU waiting on the host. Like torch's
    fused AdamW, a step can wait on a device flag: with ``found_inf`` set (a 0/1 tensor), where it
    is 1 the weights and the momentum stay as they were, and nothing is read back to the host
    (late_judging.py relies on it).
    """

    def __init__(self, params, lr: float = 0.02, momentum: float = 0.95, nesterov: bool = True,
                 ns_steps: int = 5, weight_decay: float = 0.0) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        skip = getattr(self, "found_inf", None)
        for group in self.param_groups:
            same_shape: dict[tuple, list[torch.Tensor]] = {}
            for p in group["params"]:
                if p.grad is not None:
                    same_shape.setdefault((p.shape, p.dtype, p.device), []).append(p)
            for params in same_shape.values():
                per_batch = max(1, STACK_ELEMENTS // params[0].numel())  # caps the stacked copies' memory
                for start in range(0, len(params), per_batch):
                    self._step_same_shape(params[start : start + per_batch], group, skip)

    def _step_same_shape(self, params: list[torch.Tensor], group: dict, skip: torch.Tensor | None) -> None:
        momentum, lr, decay = group["momentum"], group["lr"], group["weight_decay"]
        buffers = []
        for p in params:
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p.grad)
            buffers.append(state["momentum_buffer"])
        grads = torch.stack([p.grad for p in params])
        old_buffers = torch.stack(buffers)
        new_buffers = old_buffers * momentum + grads
        direction = grads.add_(new_buffers, alpha=momentum) if group["nesterov"] else new_buffers
        update = newton_schulz_orthogonalize(direction, group["ns_steps"])
        rows, cols = params[0].shape
        old_params = torch.stack(params)
        new_params = (old_params * (1 - lr * decay)).add_(update.to(old_params.dtype), alpha=-lr * max(1.0, rows / cols) ** 0.5)
        if skip is not None:
            # Selected, not blended: a skipped step's gradient may be NaN (NaN * 0 is NaN), and a
            # step that is not skipped must be bit for bit the ungated one.
            new_buffers = torch.where(skip.bool(), old_buffers, new_buffers)
            new_params = torch.where(skip.bool(), old_params, new_params)
        torch._foreach_copy_(buffers, new_buffers.unbind(0))
        torch._foreach_copy_(params, new_params.unbind(0))


class Lion(torch.optim.Optimizer):
    """Sign-of-momentum updates (Chen et al., 2023): one state tensor per parameter. With ``found_inf``
    set (a 0/1 device tensor), where it is 1 the weights and the momentum stay as they were (as Muon)."""

    def __init__(self, params, lr: float = 1e-4, betas=(0.9, 0.99), weight_decay: float = 0.0) -> None:
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        skip = getattr(self, "found_inf", None)
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
                new_p = torch.add(p * (1 - group["lr"] * group["weight_decay"]), update, alpha=-group["lr"])
                new_m = torch.add(m * beta2, p.grad, alpha=1 - beta2)
                if skip is not None:  # selected, not blended: a skipped step's gradient may be NaN
                    keep_old = skip.reshape(()).to(p.device) != 0
                    new_p, new_m = torch.where(keep_old, p, new_p), torch.where(keep_old, m, new_m)
                p.copy_(new_p)
                m.copy_(new_m)


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
            kind = FusedAdamW
        else:
            kind = AdamW8bit if cfg.name == "adamw8bit" else torch.optim.AdamW

        def make(group: list[nn.Parameter], seed: int) -> torch.optim.Optimizer:
            # a seed per stepping group: with stochastic rounding, groups must not draw the same noise
            options = {"fused": fused} if kind is torch.optim.AdamW else {"seed": seed}
            return kind(with_embedding_lr(group, embeddings, cfg.embedding_lr), lr=lr, betas=cfg.betas, eps=cfg.eps,
                        weight_decay=cfg.weight_decay, **options)

        return BackwardOptimizer(model, make)
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
