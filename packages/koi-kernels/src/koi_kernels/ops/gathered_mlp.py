"""An MLP computed on each token's own predicted neurons (decoding with a neuron predictor): dispatch.

Forward only on the Triton path: it serves inference, where a predictor picks each token's
neurons. When autograd must see the result (a tensor that needs a gradient, with grad mode on),
the differentiable torch reference runs instead, on any device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from koi_quant import gathered_mlp

from ..dispatch import use_triton

ACTIVATIONS = ("gelu_tanh", "swiglu")


def _gelu_tanh(up: torch.Tensor) -> torch.Tensor:
    return F.gelu(up, approximate="tanh")


def _swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return F.silu(gate) * up


HIDDEN_FUNCTIONS = {"gelu_tanh": _gelu_tanh, "swiglu": _swiglu}


def gathered_mlp_per_token_reference(x: torch.Tensor, up_weights: list[torch.Tensor], up_biases: list[torch.Tensor | None],
                                     down_rows: torch.Tensor, down_bias: torch.Tensor | None, index: torch.Tensor,
                                     activation: str) -> torch.Tensor:
    """koi-quant's per-token `gathered_mlp` (it takes the down projection as (width, hidden): ``down_rows.t()`` is that view)."""
    return gathered_mlp(x, up_weights, up_biases, down_rows.t(), down_bias, index, HIDDEN_FUNCTIONS[activation])


def _check(x: torch.Tensor, up_weights: list[torch.Tensor], up_biases: list[torch.Tensor | None], down_rows: torch.Tensor,
           down_bias: torch.Tensor | None, index: torch.Tensor, activation: str) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"gathered_mlp_per_token: activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
    expected = 1 if activation == "gelu_tanh" else 2
    if len(up_weights) != expected or len(up_biases) != expected:
        raise ValueError(f"gathered_mlp_per_token: {activation} takes {expected} up projection(s) and as many biases "
                         f"(None for none), got {len(up_weights)} and {len(up_biases)}")
    if len({b is None for b in (*up_biases, down_bias)}) > 1:
        raise ValueError("gathered_mlp_per_token: the projections must all have a bias (GPT-2) or all have none (Llama)")
    tokens, width = x.shape
    hidden = up_weights[0].shape[0]
    if any(w.shape != (hidden, width) for w in up_weights) or down_rows.shape != (hidden, width):
        raise ValueError(f"gathered_mlp_per_token: up weights and down_rows must be (hidden, width) = ({hidden}, {width}); "
                         f"got {[tuple(w.shape) for w in up_weights]} and {tuple(down_rows.shape)}")
    if index.ndim != 2 or index.shape[0] != tokens:
        raise ValueError(f"gathered_mlp_per_token: index must be (tokens, kept) with tokens = {tokens}, got {tuple(index.shape)}")


def gathered_mlp_per_token(x: torch.Tensor, up_weights: list[torch.Tensor], up_biases: list[torch.Tensor | None],
                           down_rows: torch.Tensor, down_bias: torch.Tensor | None, index: torch.Tensor,
                           activation: str = "gelu_tanh") -> torch.Tensor:
    """The MLP on neurons ``index`` (N, kept) of each token of ``x`` (N, width): (N, width).

    ``up_weights``: nn.Linear weights (hidden, width): one for ``gelu_tanh`` (GPT-2), gate and up
    for ``swiglu``. ``down_rows``: the down projection's weight transposed, (hidden, width),
    contiguous, so that a neuron's row is one read; keep it between calls.
    """
    _check(x, up_weights, up_biases, down_rows, down_bias, index, activation)
    tensors = (x, *up_weights, down_rows, *(b for b in (*up_biases, down_bias) if b is not None))
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    if needs_grad or not use_triton(x):
        return gathered_mlp_per_token_reference(x, up_weights, up_biases, down_rows, down_bias, index, activation)
    from .gathered_mlp_triton import gathered_mlp_rows

    return gathered_mlp_rows(x, up_weights, up_biases, down_rows, down_bias, index, activation)
