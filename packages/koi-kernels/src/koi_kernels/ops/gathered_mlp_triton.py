"""Triton MLP on each token's own hidden neurons: one kernel, nothing gathered into memory.

The torch form of a per-token gathered MLP copies each token's rows of the up and down
projections into a (tokens, kept, width) tensor before multiplying: at one decoding token that
copy, the index arithmetic and the batched matmuls are more launches and more bytes than the
dense MLP they replace (0.13-0.33x its speed on an H200, BENCHMARKS.md). Here the rows are read
where they lie. A program takes a few of one token's kept neurons: their up rows (contiguous in
an nn.Linear weight) give the hidden activations, and their rows of the transposed down
projection (``down_rows``, (hidden, width): the caller keeps it, since the weight changes only
when training steps) carry them to the output, summed across programs by fp32 atomic adds. So a
decoding token spreads over kept / 8 programs (96 at 124M with a quarter kept, 200 at 1558M),
enough to keep every SM reading, and each weight byte is read once. The order of the atomic adds
varies, so the last bits of a result may differ between calls. Decoding has one to a few
tokens, so the kernel multiplies and reduces in registers rather than through ``tl.dot`` (which
needs 16 rows).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

ACTIVATION_CODES = {"gelu_tanh": 0, "swiglu": 1}
BLOCK_KEPT = 8  # kept neurons per program
BLOCK_WIDTH = 256  # width read per loop turn


@triton.jit
def _saturated(z):
    """z clipped to +-40, where the sigmoid is 0 or 1 to fp32 already: exp(-z) then never overflows."""
    return tl.minimum(tl.maximum(z, -40.0), 40.0)


@triton.jit
def _row_dot(X, W, rows, kept_mask, width, BLOCK_KEPT: tl.constexpr, BLOCK_WIDTH: tl.constexpr):
    """fp32 dot products of the token's input X (width,) with the weight rows ``rows`` of W (hidden, width)."""
    acc = tl.zeros((BLOCK_KEPT,), dtype=tl.float32)
    for start in range(0, width, BLOCK_WIDTH):
        cols = start + tl.arange(0, BLOCK_WIDTH)
        col_mask = cols < width
        x = tl.load(X + cols, mask=col_mask, other=0.0).to(tl.float32)
        w = tl.load(W + rows[:, None] * width + cols[None, :], mask=kept_mask[:, None] & col_mask[None, :], other=0.0)
        acc += tl.sum(w.to(tl.float32) * x[None, :], axis=1)
    return acc


@triton.jit
def _gathered_mlp(X, INDEX, W_UP, B_UP, W_GATE, B_GATE, DOWN_ROWS, B_DOWN, OUT, kept, width,
                  HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr, BLOCK_KEPT: tl.constexpr, BLOCK_WIDTH: tl.constexpr):
    token = tl.program_id(0).to(tl.int64)
    block = tl.program_id(1)
    slots = block * BLOCK_KEPT + tl.arange(0, BLOCK_KEPT)
    kept_mask = slots < kept
    rows = tl.load(INDEX + token * kept + slots, mask=kept_mask, other=0).to(tl.int64)
    x_row = X + token * width
    up = _row_dot(x_row, W_UP, rows, kept_mask, width, BLOCK_KEPT, BLOCK_WIDTH)
    if HAS_BIAS:
        up += tl.load(B_UP + rows, mask=kept_mask, other=0.0).to(tl.float32)
    if ACTIVATION == 0:  # GELU, tanh approximation (GPT-2): tanh(z) = 2 sigmoid(2z) - 1
        inner = 0.7978845608028654 * (up + 0.044715 * up * up * up)
        hidden = up * tl.sigmoid(_saturated(2.0 * inner))
    else:  # SwiGLU: silu(gate) * up
        gate = _row_dot(x_row, W_GATE, rows, kept_mask, width, BLOCK_KEPT, BLOCK_WIDTH)
        if HAS_BIAS:
            gate += tl.load(B_GATE + rows, mask=kept_mask, other=0.0).to(tl.float32)
        hidden = gate * tl.sigmoid(_saturated(gate)) * up
    hidden = tl.where(kept_mask, hidden, 0.0)
    out_row = OUT + token * width
    for start in range(0, width, BLOCK_WIDTH):
        cols = start + tl.arange(0, BLOCK_WIDTH)
        col_mask = cols < width
        w = tl.load(DOWN_ROWS + rows[:, None] * width + cols[None, :], mask=kept_mask[:, None] & col_mask[None, :], other=0.0)
        part = tl.sum(w.to(tl.float32) * hidden[:, None], axis=0)
        if HAS_BIAS:  # the token's first program adds the bias, once
            first = (block == 0).to(tl.float32)
            part += first * tl.load(B_DOWN + cols, mask=col_mask, other=0.0).to(tl.float32)
        tl.atomic_add(out_row + cols, part, mask=col_mask)


def gathered_mlp_rows(x: torch.Tensor, up_weights: list[torch.Tensor], up_biases: list[torch.Tensor | None],
                      down_rows: torch.Tensor, down_bias: torch.Tensor | None, index: torch.Tensor, activation: str) -> torch.Tensor:
    """(N, width) output of the MLP on each token's neurons ``index`` (N, kept); see the module docstring for the layout."""
    tokens, width = x.shape
    kept = index.shape[1]
    x, index, down_rows = x.contiguous(), index.contiguous(), down_rows.contiguous()
    ups = [w.contiguous() for w in up_weights]
    has_bias = up_biases[0] is not None
    out = torch.zeros((tokens, width), device=x.device, dtype=torch.float32)
    # SwiGLU's up_weights are (gate, up), as its hidden function takes them
    w_up, b_up = (ups[0], up_biases[0]) if activation == "gelu_tanh" else (ups[1], up_biases[1])
    w_gate, b_gate = (ups[0], up_biases[0]) if activation == "swiglu" else (w_up, b_up)
    absent = out  # stands in for an absent bias: never read (HAS_BIAS is a compile-time constant)
    _gathered_mlp[(tokens, triton.cdiv(kept, BLOCK_KEPT))](
        x, index, w_up, b_up if has_bias else absent, w_gate, b_gate if has_bias else absent, down_rows,
        down_bias if has_bias else absent, out, kept, width,
        HAS_BIAS=has_bias, ACTIVATION=ACTIVATION_CODES[activation], BLOCK_KEPT=BLOCK_KEPT, BLOCK_WIDTH=BLOCK_WIDTH)
    return out.to(x.dtype)
