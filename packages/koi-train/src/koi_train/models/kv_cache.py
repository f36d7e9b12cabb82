"""Keys and values of past positions, so generation feeds one new token per step."""

from __future__ import annotations

import torch


class KVCache:
    def __init__(self, n_layer: int) -> None:
        self.keys: list[torch.Tensor | None] = [None] * n_layer
        self.values: list[torch.Tensor | None] = [None] * n_layer

    @property
    def length(self) -> int:
        """Positions already cached before the current forward pass began (read it before layer 0 runs)."""
        return self.past(0)

    def past(self, layer: int) -> int:
        """Positions ``layer`` has cached: the offset of the tokens it is about to see."""
        return 0 if self.keys[layer] is None else self.keys[layer].shape[2]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append (B, H, T, D) keys/values for ``layer``; return all of them so far."""
        if self.keys[layer] is not None:
            k = torch.cat([self.keys[layer], k], dim=2)
            v = torch.cat([self.values[layer], v], dim=2)
        self.keys[layer], self.values[layer] = k, v
        return k, v


def causal_mask(q_len: int, k_len: int, device) -> torch.Tensor | None:
    """None when SDPA's is_causal is right (no past), else a (q_len, k_len) bool mask aligned to the end."""
    if q_len == 1:
        return torch.ones(1, k_len, dtype=torch.bool, device=device)
    offset = k_len - q_len
    return torch.arange(k_len, device=device)[None, :] <= (torch.arange(q_len, device=device)[:, None] + offset)
