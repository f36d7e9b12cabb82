"""A Llama/Qwen3-style decoder: RMSNorm, RoPE, SwiGLU, grouped-query attention, optional QK-norm.

Parameter names follow Hugging Face's Llama/Qwen3 (`model.layers.0.self_attn.q_proj.weight`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from koi_kernels import rope, rope_tables

from .kv_cache import KVCache, causal_mask


@dataclass(frozen=True)
class LlamaSpec:
    n_layer: int
    n_head: int
    n_kv_head: int
    n_embd: int
    block_size: int
    vocab_size: int
    mlp_hidden: int
    dropout: float = 0.0
    tie_embeddings: bool = False
    rope_theta: float = 10000.0
    qk_norm: bool = False
    init_std: float = 0.02
    norm_eps: float = 1e-6


class Attention(nn.Module):
    def __init__(self, spec: LlamaSpec) -> None:
        super().__init__()
        self.n_head, self.n_kv_head = spec.n_head, spec.n_kv_head
        self.head_dim = spec.n_embd // spec.n_head
        self.q_proj = nn.Linear(spec.n_embd, spec.n_head * self.head_dim, bias=False)
        self.k_proj = nn.Linear(spec.n_embd, spec.n_kv_head * self.head_dim, bias=False)
        self.v_proj = nn.Linear(spec.n_embd, spec.n_kv_head * self.head_dim, bias=False)
        self.o_proj = nn.Linear(spec.n_head * self.head_dim, spec.n_embd, bias=False)
        self.q_norm = nn.RMSNorm(self.head_dim, eps=spec.norm_eps) if spec.qk_norm else None
        self.k_norm = nn.RMSNorm(self.head_dim, eps=spec.norm_eps) if spec.qk_norm else None
        self.dropout = spec.dropout

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        B, T, _ = x.shape
        start = cache.past(layer) if cache is not None else 0
        q = self.q_proj(x).view(B, T, self.n_head, self.head_dim)
        k = self.k_proj(x).view(B, T, self.n_kv_head, self.head_dim)
        v = self.v_proj(x).view(B, T, self.n_kv_head, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
        q, k = rope(q, k, cos, sin, start)  # Triton on GPU, torch reference elsewhere
        gqa = self.n_kv_head != self.n_head
        if cache is not None:
            k, v = cache.update(layer, k, v)
        if start:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(T, k.shape[2], x.device), enable_gqa=gqa)
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa, dropout_p=self.dropout if self.training else 0.0)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))


class SwiGLU(nn.Module):
    def __init__(self, spec: LlamaSpec) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(spec.n_embd, spec.mlp_hidden, bias=False)
        self.up_proj = nn.Linear(spec.n_embd, spec.mlp_hidden, bias=False)
        self.down_proj = nn.Linear(spec.mlp_hidden, spec.n_embd, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaBlock(nn.Module):
    def __init__(self, spec: LlamaSpec) -> None:
        super().__init__()
        self.input_layernorm = nn.RMSNorm(spec.n_embd, eps=spec.norm_eps)
        self.self_attn = Attention(spec)
        self.post_attention_layernorm = nn.RMSNorm(spec.n_embd, eps=spec.norm_eps)
        self.mlp = SwiGLU(spec)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cache, layer)
        return x + self.mlp(self.post_attention_layernorm(x))


class Llama(nn.Module):
    def __init__(self, spec: LlamaSpec) -> None:
        super().__init__()
        if spec.n_head % spec.n_kv_head:
            raise ValueError(f"n_head ({spec.n_head}) must be a multiple of n_kv_head ({spec.n_kv_head})")
        self.spec = spec
        self.model = nn.ModuleDict(
            dict(
                embed_tokens=nn.Embedding(spec.vocab_size, spec.n_embd),
                layers=nn.ModuleList(LlamaBlock(spec) for _ in range(spec.n_layer)),
                norm=nn.RMSNorm(spec.n_embd, eps=spec.norm_eps),
            )
        )
        self.lm_head = nn.Linear(spec.n_embd, spec.vocab_size, bias=False)
        if spec.tie_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        cos, sin = rope_tables(spec.n_embd // spec.n_head, spec.block_size, spec.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = self.spec.init_std
        for name, p in self.named_parameters():
            if "norm" in name:
                nn.init.ones_(p)
            elif name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(p, std=std / math.sqrt(2 * self.spec.n_layer))
            else:
                nn.init.normal_(p, std=std)

    def hidden_states(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        end = idx.shape[1] + (cache.length if cache is not None else 0)
        if end > self.spec.block_size:
            raise ValueError(f"sequence length {end} exceeds block_size {self.spec.block_size}")
        x = self.model.embed_tokens(idx)  # (B, T, C)
        for layer, block in enumerate(self.model.layers):
            x = block(x, self.rope_cos, self.rope_sin, cache, layer) if cache is not None else block(x, self.rope_cos, self.rope_sin)
        return self.model.norm(x)

    def forward(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Logits (B, T, V); with a cache, ``idx`` holds only the new positions."""
        return self.lm_head(self.hidden_states(idx, cache))

    def make_cache(self) -> KVCache:
        return KVCache(self.spec.n_layer)

    @property
    def blocks(self) -> nn.ModuleList:
        return self.model.layers

    @property
    def output_head(self) -> nn.Linear:
        return self.lm_head
