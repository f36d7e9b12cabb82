"""Torch reference for rotary position embeddings (the Llama/HF "rotate halves" layout)."""

from __future__ import annotations

import torch


def rope_tables(head_dim: int, length: int, theta: float = 10000.0, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin, each (length, head_dim / 2), in fp32."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(length, device=device, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def rope_reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, start: int = 0) -> torch.Tensor:
    """Rotate (first half, second half) pairs of each head by the angle of its position. x: (B, H, T, D)."""
    half = x.shape[-1] // 2
    compute = torch.promote_types(x.dtype, torch.float32)
    x1, x2 = x[..., :half].to(compute), x[..., half:].to(compute)
    cos, sin = cos[start : start + x.shape[-2]].to(compute), sin[start : start + x.shape[-2]].to(compute)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)
