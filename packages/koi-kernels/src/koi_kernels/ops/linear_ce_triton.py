"""Triton kernel for one chunk of logits: loss per row and, in place, d(loss)/d(logits).

Each program owns one row and sweeps the vocabulary twice: once for the running max and sum
(the log-sum-exp), once to write softmax - onehot (with the softcap and z-loss terms) over the
logits it just read. The caller turns those gradients into dh and dW with two matmuls, so the
full (tokens x vocab) logits never exist at once.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _tanh(x):
    return 2.0 / (1.0 + tl.exp(-2.0 * x)) - 1.0


@triton.jit
def _ce_rows(LOGITS, TARGETS, LOSS, stride, V, ignore_index, scale, z_loss, softcap,
             HAS_SOFTCAP: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    base = LOGITS + row.to(tl.int64) * stride
    target = tl.load(TARGETS + row)
    running_max = -float("inf")
    running_sum = 0.0
    for start in range(0, V, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        x = tl.load(base + cols, mask=cols < V, other=-float("inf")).to(tl.float32)
        if HAS_SOFTCAP:
            x = tl.where(cols < V, softcap * _tanh(x / softcap), -float("inf"))
        new_max = tl.maximum(running_max, tl.max(x, axis=0))
        running_sum = running_sum * tl.exp(running_max - new_max) + tl.sum(tl.exp(x - new_max), axis=0)
        running_max = new_max
    lse = running_max + tl.log(running_sum)
    valid = target != ignore_index
    target_logit = 0.0
    for start in range(0, V, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        mask = cols < V
        raw = tl.load(base + cols, mask=mask, other=0.0).to(tl.float32)
        x = raw
        if HAS_SOFTCAP:
            t = _tanh(raw / softcap)
            x = softcap * t
        is_target = cols == target
        target_logit += tl.sum(tl.where(is_target & mask, x, 0.0), axis=0)
        p = tl.exp(x - lse)
        grad = p * (1.0 + 2.0 * z_loss * lse) - tl.where(is_target, 1.0, 0.0)
        if HAS_SOFTCAP:
            grad = grad * (1.0 - t * t)
        grad = tl.where(valid, grad * scale, 0.0)
        tl.store(base + cols, grad.to(LOGITS.dtype.element_ty), mask=mask)
    loss = tl.where(valid, lse - target_logit + z_loss * lse * lse, 0.0)
    tl.store(LOSS + row, loss)


def ce_chunk_inplace(logits: torch.Tensor, targets: torch.Tensor, *, ignore_index: int, scale: float, z_loss: float,
                     softcap: float | None) -> torch.Tensor:
    """Per-row loss (unscaled) of a (rows, V) chunk; ``logits`` is overwritten with scale * dloss/dlogits."""
    rows, vocab = logits.shape
    loss = torch.empty(rows, device=logits.device, dtype=torch.float32)
    block = min(triton.next_power_of_2(vocab), 4096 if logits.is_cuda else 1024)
    _ce_rows[(rows,)](logits, targets, loss, logits.stride(0), vocab, ignore_index, scale, z_loss,
                      softcap if softcap is not None else 1.0, HAS_SOFTCAP=softcap is not None, BLOCK=block,
                      num_warps=8 if logits.is_cuda else 1)
    return loss
