"""Torch reference for linear + cross-entropy: logits = h @ W^T, optional softcap and z-loss.

This is the definition (it materialises all logits); the fused version must match it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def softcapped(logits: torch.Tensor, softcap: float | None) -> torch.Tensor:
    return logits if softcap is None else softcap * torch.tanh(logits / softcap)


def linear_cross_entropy_reference(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *,
                                   ignore_index: int = -100, z_loss: float = 0.0, softcap: float | None = None) -> torch.Tensor:
    """Mean over non-ignored tokens of CE + z_loss * logsumexp^2. hidden (N, C), weight (V, C), targets (N,)."""
    compute = torch.promote_types(hidden.dtype, torch.float32)  # fp32 at least; float64 when testing
    logits = softcapped(hidden.to(compute) @ weight.to(compute).T, softcap)
    loss = F.cross_entropy(logits, targets, ignore_index=ignore_index, reduction="sum")
    valid = targets != ignore_index
    if z_loss:
        loss = loss + z_loss * (torch.logsumexp(logits, dim=-1)[valid] ** 2).sum()
    return loss / valid.sum().clamp_min(1)
