"""Fused linear + cross-entropy: the loss and its gradients, chunk by chunk, never all logits at once.

Forward does the whole job: for each chunk of rows it computes logits, the loss (in fp32), and the
gradient w.r.t. the logits (in place), then dh for those rows and their share of dW. Backward
only scales the saved gradients by the incoming grad and 1 / (counted targets). Peak extra memory is one chunk of logits
instead of tokens x vocab.
"""

from __future__ import annotations

import torch

from ..dispatch import use_triton
from .linear_ce_reference import softcapped


def _ce_chunk_torch(logits, targets, *, ignore_index, scale, z_loss, softcap):
    """The same contract as the Triton kernel, in torch (used on CPU and as a fallback)."""
    raw = logits.float()
    x = softcapped(raw, softcap)
    lse = torch.logsumexp(x, dim=-1)
    valid = targets != ignore_index
    safe_targets = torch.where(valid, targets, 0)
    loss = lse - x.gather(1, safe_targets[:, None])[:, 0] + z_loss * lse**2
    grad = torch.softmax(x, dim=-1) * (1 + 2 * z_loss * lse)[:, None]
    grad[torch.arange(len(targets), device=x.device), safe_targets] -= 1
    if softcap is not None:
        grad = grad * (1 - torch.tanh(raw / softcap) ** 2)
    logits.copy_(grad * scale * valid[:, None])
    return torch.where(valid, loss, torch.zeros_like(loss))


def _ce_chunk_triton(logits, targets, **options):
    from .linear_ce_triton import ce_chunk_inplace

    return ce_chunk_inplace(logits, targets, **options)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, ignore_index, z_loss, softcap, chunk_rows, triton_kernel):
        # 1 / (number of counted targets) stays on the device: reading it on the host would sync every
        # step and split a compiled graph. The chunks' gradients are taken unscaled, and the scale is
        # folded into the loss here and into the incoming gradient in backward.
        inverse_count = 1.0 / (targets != ignore_index).sum().clamp_min(1).float()
        mm_dtype = matmul_dtype(hidden)
        w = weight.to(mm_dtype)
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros(weight.shape, device=weight.device, dtype=torch.float32)
        total = torch.zeros((), device=hidden.device, dtype=torch.float32)
        with torch.autocast(hidden.device.type, enabled=False):
            for start in range(0, hidden.shape[0], chunk_rows):
                h = hidden[start : start + chunk_rows].to(mm_dtype)
                chunk_targets = targets[start : start + chunk_rows]
                # (rows, V) in the matmul dtype, as a plain model's logits are; the kernel reads them
                # into fp32 and writes dloss/dlogits back in place, so no fp32 copy of the chunk exists
                logits = h @ w.T
                ce_chunk = _ce_chunk_triton if triton_kernel else _ce_chunk_torch
                loss = ce_chunk(logits, chunk_targets, ignore_index=ignore_index, scale=1.0, z_loss=z_loss, softcap=softcap)
                total += loss.sum()
                grad_logits = logits  # now holds dloss/dlogits
                grad_hidden[start : start + chunk_rows] = (grad_logits @ w).to(hidden.dtype)
                accumulate_product(grad_weight, grad_logits.T, h)
        ctx.save_for_backward(grad_hidden, grad_weight.to(weight.dtype), inverse_count)
        return total * inverse_count

    @staticmethod
    def backward(ctx, grad_output):
        grad_hidden, grad_weight, inverse_count = ctx.saved_tensors
        scale = grad_output * inverse_count
        return grad_hidden * scale.to(grad_hidden.dtype), grad_weight * scale, None, None, None, None, None, None


def accumulate_product(total: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """``total += a @ b`` into an fp32 sum, with the product never rounded to ``a``'s dtype first.

    On CUDA with bf16/fp16 operands cuBLAS adds the product straight into the fp32 sum (beta = 1),
    so no half-precision product and no fp32 copy of it cross memory: at 124M's head that is about
    0.6 GB less traffic per chunk and a more exact weight gradient. Elsewhere: a product, then a sum.
    Under torch.compile too: Dynamo cannot trace ``addmm(out_dtype=)`` in torch 2.11 (its fake
    tensor fails), and Inductor fuses the cast into the sum there anyway.
    """
    fp32_sum_in_cublas = total.is_cuda and a.dtype in (torch.bfloat16, torch.float16) and total.dtype == torch.float32
    if fp32_sum_in_cublas and not torch.compiler.is_compiling():
        torch.addmm(total, a, b, out_dtype=torch.float32, out=total)
    else:
        total += (a @ b).float()


def matmul_dtype(hidden: torch.Tensor) -> torch.dtype:
    """The head's matmul dtype: autocast's (bf16 tensor cores) when it is on, else the activations' on GPU, fp32 on CPU.

    Under autocast the final norm hands over fp32 activations; taking their dtype would run the
    largest matmul of a small model in TF32 instead of bf16. The softmax is fp32 either way.
    """
    if not hidden.is_cuda:
        return torch.float32
    if torch.is_autocast_enabled("cuda"):
        return torch.get_autocast_dtype("cuda")
    return hidden.dtype


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *, ignore_index: int = -100,
                         z_loss: float = 0.0, softcap: float | None = None, chunk_rows: int | None = None) -> torch.Tensor:
    """Mean CE (+ z-loss) of ``hidden @ weight.T`` against ``targets``; hidden (..., C), targets (...)."""
    hidden2d = hidden.reshape(-1, hidden.shape[-1])
    targets1d = targets.reshape(-1)
    if chunk_rows is None:  # 128 Mi logits per chunk (256 MiB in bf16): few chunks, so dW is summed few times
        chunk_rows = max(1, min(hidden2d.shape[0], (128 * 2**20) // weight.shape[0]))
    return _LinearCrossEntropy.apply(hidden2d, weight, targets1d, ignore_index, z_loss, softcap, chunk_rows, use_triton(hidden))
