"""The training objective as a module: next-token loss through koi-kernels' fused linear + CE.

Wrapping the model (instead of computing the loss outside it) lets torch.compile, DDP and FSDP
see one forward that returns the loss, and the (tokens x vocab) logits never exist.
"""

from __future__ import annotations

import torch
from torch import nn

from koi_kernels import linear_cross_entropy


class NextTokenLoss(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """The mean loss; without targets, the logits (B, T, V), so evaluation can run through FSDP's hooks too."""
        if targets is None:
            return self.model(inputs)
        hidden = self.model.hidden_states(inputs)  # (B, T, C)
        return linear_cross_entropy(hidden, self.model.output_head.weight, targets)
