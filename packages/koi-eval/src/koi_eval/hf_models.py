"""Plain GPT-2 and Llama/Qwen3 forward passes over Hugging Face weights, for scoring only.

koi-eval must load a Hugging Face folder without koi-train (which depends on koi-eval) and
without transformers (large, and optional), so it carries the two forward passes here, written
against HF's parameter names and layouts so a `model.safetensors` loads with `load_state_dict`.
No dropout, no KV cache, no training tricks: `generate` recomputes the window each step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class GPT2Shape:
    n_layer: int
    n_head: int
    n_embd: int
    n_positions: int
    vocab_size: int
    n_inner: int
    layer_norm_epsilon: float = 1e-5
    tie_word_embeddings: bool = True


@dataclass(frozen=True)
class LlamaShape:
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    hidden_size: int
    head_dim: int
    intermediate_size: int
    max_position_embeddings: int
    vocab_size: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = False
    qk_norm: bool = False  # Qwen3 (and Koi exports with koi_qk_norm) RMS-normalise each head of q and k
    attention_bias: bool = False


class Conv1D(nn.Module):
    """GPT-2's linear layer as HF stores it: weight (in, out), y = x W + b."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_in, n_out))
        self.bias = nn.Parameter(torch.empty(n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight).view(*x.shape[:-1], -1)


class GPT2Block(nn.Module):
    def __init__(self, s: GPT2Shape) -> None:
        super().__init__()
        self.n_head = s.n_head
        self.ln_1 = nn.LayerNorm(s.n_embd, eps=s.layer_norm_epsilon)
        self.attn = nn.Module()
        self.attn.c_attn = Conv1D(s.n_embd, 3 * s.n_embd)
        self.attn.c_proj = Conv1D(s.n_embd, s.n_embd)
        self.ln_2 = nn.LayerNorm(s.n_embd, eps=s.layer_norm_epsilon)
        self.mlp = nn.Module()
        self.mlp.c_fc = Conv1D(s.n_embd, s.n_inner)
        self.mlp.c_proj = Conv1D(s.n_inner, s.n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.attn.c_attn(self.ln_1(x)).split(C, dim=2)  # each (B, T, C)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
        x = x + self.attn.c_proj(y)
        return x + self.mlp.c_proj(F.gelu(self.mlp.c_fc(self.ln_2(x)), approximate="tanh"))  # GPT-2's "gelu_new"


class HFGPT2(nn.Module):
    """GPT2LMHeadModel's forward: logits (B, T, V) from ids (B, T)."""

    def __init__(self, s: GPT2Shape) -> None:
        super().__init__()
        self.shape, self.block_size = s, s.n_positions
        self.transformer = nn.Module()
        self.transformer.wte = nn.Embedding(s.vocab_size, s.n_embd)
        self.transformer.wpe = nn.Embedding(s.n_positions, s.n_embd)
        self.transformer.h = nn.ModuleList(GPT2Block(s) for _ in range(s.n_layer))
        self.transformer.ln_f = nn.LayerNorm(s.n_embd, eps=s.layer_norm_epsilon)
        self.lm_head = nn.Linear(s.n_embd, s.vocab_size, bias=False)
        if s.tie_word_embeddings:
            self.lm_head.weight = self.transformer.wte.weight

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        T = idx.shape[1]
        if T > self.block_size:
            raise ValueError(f"sequence length {T} exceeds n_positions {self.block_size}")
        x = self.transformer.wte(idx) + self.transformer.wpe(torch.arange(T, device=idx.device))  # (B, T, C)
        for block in self.transformer.h:
            x = block(x)
        return self.lm_head(self.transformer.ln_f(x))


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE as HF lays it out: dimension i pairs with i + D/2. x: (B, H, T, D); cos, sin: (T, D/2)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half].float(), x[..., half:].float()
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


class LlamaBlock(nn.Module):
    def __init__(self, s: LlamaShape) -> None:
        super().__init__()
        self.s = s
        heads, kv_heads, d = s.num_attention_heads, s.num_key_value_heads, s.head_dim
        self.input_layernorm = nn.RMSNorm(s.hidden_size, eps=s.rms_norm_eps)
        self.self_attn = nn.Module()
        self.self_attn.q_proj = nn.Linear(s.hidden_size, heads * d, bias=s.attention_bias)
        self.self_attn.k_proj = nn.Linear(s.hidden_size, kv_heads * d, bias=s.attention_bias)
        self.self_attn.v_proj = nn.Linear(s.hidden_size, kv_heads * d, bias=s.attention_bias)
        self.self_attn.o_proj = nn.Linear(heads * d, s.hidden_size, bias=False)
        if s.qk_norm:
            self.self_attn.q_norm = nn.RMSNorm(d, eps=s.rms_norm_eps)
            self.self_attn.k_norm = nn.RMSNorm(d, eps=s.rms_norm_eps)
        self.post_attention_layernorm = nn.RMSNorm(s.hidden_size, eps=s.rms_norm_eps)
        self.mlp = nn.Module()
        self.mlp.gate_proj = nn.Linear(s.hidden_size, s.intermediate_size, bias=False)
        self.mlp.up_proj = nn.Linear(s.hidden_size, s.intermediate_size, bias=False)
        self.mlp.down_proj = nn.Linear(s.intermediate_size, s.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        s, attn = self.s, self.self_attn
        h = self.input_layernorm(x)
        q = attn.q_proj(h).view(B, T, s.num_attention_heads, s.head_dim)
        k = attn.k_proj(h).view(B, T, s.num_key_value_heads, s.head_dim)
        v = attn.v_proj(h).view(B, T, s.num_key_value_heads, s.head_dim)
        if s.qk_norm:
            q, k = attn.q_norm(q), attn.k_norm(k)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        repeat = s.num_attention_heads // s.num_key_value_heads  # grouped-query attention: each kv head serves `repeat` q heads
        k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, -1)
        x = x + attn.o_proj(y)
        m = self.post_attention_layernorm(x)
        return x + self.mlp.down_proj(F.silu(self.mlp.gate_proj(m)) * self.mlp.up_proj(m))


class HFLlama(nn.Module):
    """LlamaForCausalLM / Qwen3ForCausalLM's forward: logits (B, T, V) from ids (B, T)."""

    def __init__(self, s: LlamaShape) -> None:
        super().__init__()
        if s.num_attention_heads % s.num_key_value_heads:
            raise ValueError(f"num_attention_heads ({s.num_attention_heads}) must be a multiple of "
                             f"num_key_value_heads ({s.num_key_value_heads})")
        self.shape, self.block_size = s, s.max_position_embeddings
        self.model = nn.Module()
        self.model.embed_tokens = nn.Embedding(s.vocab_size, s.hidden_size)
        self.model.layers = nn.ModuleList(LlamaBlock(s) for _ in range(s.num_hidden_layers))
        self.model.norm = nn.RMSNorm(s.hidden_size, eps=s.rms_norm_eps)
        self.lm_head = nn.Linear(s.hidden_size, s.vocab_size, bias=False)
        if s.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def rope_tables(self, length: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin (T, D/2) for the positions used; computed per call, as max_position_embeddings may be 128k."""
        d = self.shape.head_dim
        inv_freq = 1.0 / self.shape.rope_theta ** (torch.arange(0, d, 2, device=device, dtype=torch.float32) / d)
        angles = torch.outer(torch.arange(length, device=device, dtype=torch.float32), inv_freq)
        return angles.cos(), angles.sin()

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        T = idx.shape[1]
        if T > self.block_size:
            raise ValueError(f"sequence length {T} exceeds max_position_embeddings {self.block_size}")
        cos, sin = self.rope_tables(T, idx.device)
        x = self.model.embed_tokens(idx)  # (B, T, C)
        for block in self.model.layers:
            x = block(x, cos, sin)
        return self.lm_head(self.model.norm(x))

