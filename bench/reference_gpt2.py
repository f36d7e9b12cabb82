"""The plain PyTorch GPT-2 a user would write (TARGETS.md's reference), for side-by-side benchmarks.

Learned positions, pre-LayerNorm, GELU, biases, tied embeddings, GPT-2 init, SDPA attention;
the benchmark adds torch.compile, bf16 autocast, fused AdamW, TF32 and, where asked,
torch.utils.checkpoint per block. Written independently of Koi's model code.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


class Block(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.fc, self.out = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(B, T, C))
        return x + self.out(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class ReferenceGPT2(nn.Module):
    def __init__(self, layers: int, width: int, heads: int, vocab: int = 50304, block: int = 1024, remat: bool = False) -> None:
        super().__init__()
        self.remat = remat
        self.tok, self.pos = nn.Embedding(vocab, width), nn.Embedding(block, width)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab, bias=False)
        self.head.weight = self.tok.weight
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif "ln" in name:
                nn.init.ones_(p)
            else:
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * layers) if name.endswith(("proj.weight", "out.weight")) else 0.02)

    @torch.no_grad()
    def load_koi_weights(self, koi_state: dict[str, torch.Tensor]) -> None:
        """Start from a Koi GPT-2's weights (its Hugging Face names): the same initial model on both
        sides, so a loss difference is the training loop's, not the draw of the initial weights."""
        names = {"ln1": "ln_1", "qkv": "attn.c_attn", "proj": "attn.c_proj", "ln2": "ln_2", "fc": "mlp.c_fc", "out": "mlp.c_proj"}
        self.tok.weight.copy_(koi_state["transformer.wte.weight"])
        self.pos.weight.copy_(koi_state["transformer.wpe.weight"])
        for i, block in enumerate(self.blocks):
            for mine, theirs in names.items():
                module = getattr(block, mine)
                module.weight.copy_(koi_state[f"transformer.h.{i}.{theirs}.weight"])
                module.bias.copy_(koi_state[f"transformer.h.{i}.{theirs}.bias"])
        self.ln_f.weight.copy_(koi_state["transformer.ln_f.weight"])
        self.ln_f.bias.copy_(koi_state["transformer.ln_f.bias"])

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
        for block in self.blocks:
            x = checkpoint(block, x, use_reentrant=False) if self.remat else block(x)
        logits = self.head(self.ln_f(x))
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
