"""Model presets and the one function that turns a `ModelConfig` into a built model.

A preset gives every size field; keys set in the config override it. Sizes are the published
GPT-2 ones (layers, width, heads); the tiny presets exist for tests and CPU quickstarts.
"""

from __future__ import annotations

from torch import nn

from ..config import ConfigError, ModelConfig
from .gpt2 import GPT2, GPT2Spec
from .llama import Llama, LlamaSpec

PRESETS: dict[str, dict] = {
    "gpt2-tiny": dict(arch="gpt2", n_layer=4, n_head=4, n_embd=128, block_size=128),
    "gpt2-124M": dict(arch="gpt2", n_layer=12, n_head=12, n_embd=768, block_size=1024),
    "gpt2-350M": dict(arch="gpt2", n_layer=24, n_head=16, n_embd=1024, block_size=1024),
    "gpt2-774M": dict(arch="gpt2", n_layer=36, n_head=20, n_embd=1280, block_size=1024),
    "gpt2-1558M": dict(arch="gpt2", n_layer=48, n_head=25, n_embd=1600, block_size=1024),
    "llama-tiny": dict(arch="llama", n_layer=4, n_head=4, n_kv_head=2, n_embd=128, block_size=128),
    "llama-124M": dict(arch="llama", n_layer=12, n_head=12, n_kv_head=4, n_embd=768, block_size=1024),
}
GPT2_VOCAB = 50304  # 50257 padded to a multiple of 64


def round_up(n: int, multiple: int = 64) -> int:
    return (n + multiple - 1) // multiple * multiple


def resolve_sizes(cfg: ModelConfig, tokenizer_vocab: int | None = None) -> dict:
    """Merge preset and overrides into concrete sizes; fail with the config path when one is missing."""
    sizes: dict = {}
    if cfg.preset is not None:
        if cfg.preset not in PRESETS:
            raise ConfigError("", "model.preset", f"expected one of {', '.join(PRESETS)}, got {cfg.preset!r}")
        sizes.update(PRESETS[cfg.preset])
        if sizes["arch"] != cfg.arch:
            raise ConfigError("", "model.arch", f"preset {cfg.preset} is a {sizes['arch']} model, got arch {cfg.arch!r}")
    for key in ("n_layer", "n_head", "n_kv_head", "n_embd", "block_size", "vocab_size", "mlp_hidden"):
        if getattr(cfg, key) is not None:
            sizes[key] = getattr(cfg, key)
    if "vocab_size" not in sizes:
        sizes["vocab_size"] = round_up(tokenizer_vocab) if tokenizer_vocab else GPT2_VOCAB
    for key in ("n_layer", "n_head", "n_embd", "block_size"):
        if key not in sizes:
            raise ConfigError("", f"model.{key}", "expected an integer (no preset gives it)")
    if sizes["n_embd"] % sizes["n_head"]:
        raise ConfigError("", "model.n_head", f"expected a divisor of n_embd {sizes['n_embd']}, got {sizes['n_head']}")
    if tokenizer_vocab and sizes["vocab_size"] < tokenizer_vocab:
        raise ConfigError("", "model.vocab_size", f"expected at least the tokenizer's {tokenizer_vocab}, got {sizes['vocab_size']}")
    return sizes


def build_model(cfg: ModelConfig, tokenizer_vocab: int | None = None) -> nn.Module:
    sizes = resolve_sizes(cfg, tokenizer_vocab)
    common = dict(
        n_layer=sizes["n_layer"], n_head=sizes["n_head"], n_embd=sizes["n_embd"], block_size=sizes["block_size"],
        vocab_size=sizes["vocab_size"], dropout=cfg.dropout, init_std=cfg.init_std,
    )
    if cfg.arch == "gpt2":
        spec = GPT2Spec(
            **common, mlp_hidden=sizes.get("mlp_hidden", 4 * sizes["n_embd"]),
            tie_embeddings=True if cfg.tie_embeddings is None else cfg.tie_embeddings,
        )
        return GPT2(spec)
    hidden = sizes.get("mlp_hidden") or round_up(int(8 * sizes["n_embd"] / 3), 64)
    spec = LlamaSpec(
        **common, n_kv_head=sizes.get("n_kv_head", sizes["n_head"]), mlp_hidden=hidden,
        tie_embeddings=bool(cfg.tie_embeddings), rope_theta=cfg.rope_theta, qk_norm=cfg.qk_norm,
    )
    return Llama(spec)


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Unique parameters (tied weights once), and how many of them the optimizer updates."""
    seen: dict[int, int] = {}
    trained: dict[int, int] = {}
    for p in model.parameters():
        seen[id(p)] = p.numel()
        if p.requires_grad:
            trained[id(p)] = p.numel()
    return {"total": sum(seen.values()), "trained": sum(trained.values())}
