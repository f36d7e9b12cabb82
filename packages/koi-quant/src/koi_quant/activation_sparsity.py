"""Contextual activation sparsity: predict which hidden neurons of an MLP fire, compute only those.

Most of an MLP's output comes from a small, input-dependent set of hidden neurons (Deja Vu, Liu
et al. 2023). A `LowRankPredictor` (x -> r -> hidden scores, r much smaller than the width)
learns, alongside training, to score each neuron; its target is the set of the true top
``keep`` neurons by |activation| (a multi-label cross-entropy against the detached activations,
so the probe never changes the model). At inference the block computes only the predicted
neurons: `gathered_mlp` selects rows of the up projection and columns of the down projection.

The predictor's loss must reach its weights without passing through the model's loss (whose
gradient has nothing to say about it). `train_alongside(loss)` returns a zero scalar to add to
the block's output: the value changes nothing, and its registered backward hands the predictor's
loss a gradient of one, whatever reaches it. A registered op rather than an autograd.Function,
so torch.compile keeps it whole.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


class LowRankPredictor(nn.Module):
    """Scores for ``hidden`` neurons from the block input through a rank-``rank`` bottleneck (logits, higher = fires)."""

    def __init__(self, width: int, hidden: int, rank: int, *, device=None, dtype=None) -> None:
        super().__init__()
        self.down = nn.Linear(width, rank, bias=False, device=device, dtype=dtype)
        self.up = nn.Linear(rank, hidden, device=device, dtype=dtype)
        nn.init.normal_(self.down.weight, std=width**-0.5)
        nn.init.normal_(self.up.weight, std=rank**-0.5)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))  # (..., hidden)


def top_mask(values: torch.Tensor, keep: int) -> torch.Tensor:
    """Boolean mask of the ``keep`` largest entries along the last dimension."""
    index = values.topk(keep, dim=-1).indices
    return torch.zeros(values.shape, dtype=torch.bool, device=values.device).scatter_(-1, index, True)


def predictor_loss(scores: torch.Tensor, activations: torch.Tensor, keep: int) -> torch.Tensor:
    """Multi-label cross-entropy of ``scores`` against the true top-``keep`` neurons by |activation| (detached)."""
    target = top_mask(activations.detach().abs(), keep).to(scores.dtype)
    return F.binary_cross_entropy_with_logits(scores.float(), target.float())


def recall(predicted: torch.Tensor, true: torch.Tensor) -> float:
    """Fraction of the true neurons (mask) that the predicted mask also holds."""
    return float((predicted & true).sum() / true.sum().clamp_min(1))


@torch.library.custom_op("koi_quant::train_alongside", mutates_args=())
def train_alongside(loss: torch.Tensor) -> torch.Tensor:
    """A zero scalar whose backward gives ``loss`` a gradient of exactly one (the incoming gradient is ignored)."""
    return loss.new_zeros(())


@train_alongside.register_fake
def _(loss: torch.Tensor) -> torch.Tensor:
    return loss.new_empty(())


def _unit_gradient(ctx, grad: torch.Tensor):
    return grad.new_ones(ctx.loss_shape).to(ctx.loss_dtype)


def _remember_shape(ctx, inputs, output) -> None:
    ctx.loss_shape, ctx.loss_dtype = inputs[0].shape, inputs[0].dtype


train_alongside.register_autograd(_unit_gradient, setup_context=_remember_shape)


def gathered_mlp(x: torch.Tensor, up_weights: list[torch.Tensor], up_biases: list[torch.Tensor | None],
                 down_weight: torch.Tensor, down_bias: torch.Tensor | None, index: torch.Tensor,
                 hidden_fn: Callable[..., torch.Tensor]) -> torch.Tensor:
    """The MLP computed on the neurons in ``index`` only.

    ``up_weights``: the (hidden, width) up projections (one for GELU MLPs, gate and up for
    SwiGLU), whose outputs ``hidden_fn`` combines; ``down_weight``: (width, hidden). ``index``
    is (k,) neurons shared by all tokens of ``x`` (N, width), one small dense matmul each way, or
    (N, k) neurons per token, gathered per token (worth it for a few tokens, as in decoding).
    """
    if index.ndim == 1:
        ups = [F.linear(x, w.index_select(0, index), None if b is None else b.index_select(0, index))
               for w, b in zip(up_weights, up_biases)]
        return F.linear(hidden_fn(*ups), down_weight.index_select(1, index), down_bias)  # (N, width)
    ups = []
    for w, b in zip(up_weights, up_biases):
        h = torch.einsum("nc,nkc->nk", x, w[index])  # rows of the up projection per token: (N, k, width)
        ups.append(h if b is None else h + b[index])
    out = torch.einsum("nk,nkc->nc", hidden_fn(*ups), down_weight.t()[index])
    return out if down_bias is None else out + down_bias
