"""GPT-2 as OpenAI built it: learned positions, pre-LayerNorm, GELU, biases, tied embeddings.

Parameter names follow Hugging Face's GPT-2 (`transformer.h.0.attn.c_attn.weight`, ...) so
checkpoints move between the two; HF stores Conv1D weights transposed, which `hf_io` undoes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .kv_cache import KVCache, causal_mask


@dataclass(frozen=True)
class GPT2Spec:
    n_layer: int
    n_head: int
    n_embd: int
    block_size: int
    vocab_size: int
    mlp_hidden: int
    dropout: float = 0.0
    tie_embeddings: bool = True
    init_std: float = 0.02


class CausalSelfAttention(nn.Module):
    def __init__(self, spec: GPT2Spec) -> None:
        super().__init__()
        self.n_head = spec.n_head
        self.c_attn = nn.Linear(spec.n_embd, 3 * spec.n_embd)
        self.c_proj = nn.Linear(spec.n_embd, spec.n_embd)
        self.dropout = spec.dropout

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)  # each (B, T, C)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
        start = cache.past(layer) if cache is not None else 0
        if cache is not None:
            k, v = cache.update(layer, k, v)
        if start:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(T, k.shape[2], x.device))
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, spec: GPT2Spec) -> None:
        super().__init__()
        self.c_fc = nn.Linear(spec.n_embd, spec.mlp_hidden)
        self.c_proj = nn.Linear(spec.mlp_hidden, spec.n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, spec: GPT2Spec) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(spec.n_embd)
        self.attn = CausalSelfAttention(spec)
        self.ln_2 = nn.LayerNorm(spec.n_embd)
        self.mlp = MLP(spec)
        self.drop = nn.Dropout(spec.dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln_1(x), cache, layer))
        return x + self.drop(self.mlp(self.ln_2(x)))


class GPT2(nn.Module):
    def __init__(self, spec: GPT2Spec) -> None:
        super().__init__()
        self.spec = spec
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(spec.vocab_size, spec.n_embd),
                wpe=nn.Embedding(spec.block_size, spec.n_embd),
                drop=nn.Dropout(spec.dropout),
                h=nn.ModuleList(Block(spec) for _ in range(spec.n_layer)),
                ln_f=nn.LayerNorm(spec.n_embd),
            )
        )
        self.lm_head = nn.Linear(spec.n_embd, spec.vocab_size, bias=False)
        if spec.tie_embeddings:
            self.lm_head.weight = self.transformer.wte.weight
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2 init: N(0, 0.02), residual projections scaled by 1/sqrt(2 * layers), zero biases."""
        std = self.spec.init_std
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif ".ln_" in name or name.startswith("transformer.ln_f"):
                nn.init.ones_(p)
            elif name.endswith("c_proj.weight"):
                nn.init.normal_(p, std=std / math.sqrt(2 * self.spec.n_layer))
            else:
                nn.init.normal_(p, std=std)

    def hidden_states(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Final normalised hidden states (B, T, C): what the output head consumes."""
        B, T = idx.shape
        start = cache.length if cache is not None else 0
        if start + T > self.spec.block_size:
            raise ValueError(f"sequence length {start + T} exceeds block_size {self.spec.block_size}")
        pos = torch.arange(start, start + T, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))  # (B, T, C)
        for layer, block in enumerate(self.transformer.h):
            x = block(x, cache, layer) if cache is not None else block(x)
        return self.transformer.ln_f(x)

    def forward(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Logits (B, T, V); with a cache, ``idx`` holds only the new positions."""
        return self.lm_head(self.hidden_states(idx, cache))

    def make_cache(self) -> KVCache:
        return KVCache(self.spec.n_layer)

    @property
    def blocks(self) -> nn.ModuleList:
        return self.transformer.h

    @property
    def output_head(self) -> nn.Linear:
        return self.lm_head
