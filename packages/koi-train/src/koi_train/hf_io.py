"""Move weights between Koi models and Hugging Face layouts (safetensors + config.json).

Names already match HF; the one difference is GPT-2's Conv1D, which stores (in, out) where
nn.Linear stores (out, in), so those four weights are transposed on the way out and back in.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from koi_tokenizer import EOT_TOKEN, Tokenizer, atomic_write_bytes

from .errors import ExportError
from .models import GPT2, GPT2Spec, Llama, LlamaSpec

CONV1D_SUFFIXES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def hf_config(model: nn.Module) -> dict:
    s = model.spec
    if isinstance(model, GPT2):
        return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": s.vocab_size, "n_positions": s.block_size,
                "n_ctx": s.block_size, "n_embd": s.n_embd, "n_layer": s.n_layer, "n_head": s.n_head, "n_inner": s.mlp_hidden,
                "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5, "initializer_range": s.init_std,
                "tie_word_embeddings": s.tie_embeddings}
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": s.vocab_size,
            "max_position_embeddings": s.block_size, "hidden_size": s.n_embd, "intermediate_size": s.mlp_hidden,
            "num_hidden_layers": s.n_layer, "num_attention_heads": s.n_head, "num_key_value_heads": s.n_kv_head,
            "rms_norm_eps": s.norm_eps, "rope_theta": s.rope_theta, "tie_word_embeddings": s.tie_embeddings,
            "hidden_act": "silu", "attention_bias": False, "koi_qk_norm": s.qk_norm}


def hf_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    out = {}
    for name, tensor in model.state_dict().items():
        if model.spec.tie_embeddings and name == "lm_head.weight":
            continue  # HF re-ties it from the embedding
        if isinstance(model, GPT2) and name.endswith(CONV1D_SUFFIXES):
            tensor = tensor.t()
        out[name] = tensor.detach().to("cpu").contiguous()
    return out


def save_hf(model: nn.Module, folder: str | Path, *, eot_id: int | None = None) -> list[Path]:
    """Weights and config.json; ``eot_id`` (the tokenizer's <|endoftext|>) becomes bos, eos and pad, as in GPT-2."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights, config = folder / "model.safetensors", folder / "config.json"
    tmp = folder / ".model.safetensors.tmp"
    save_file(hf_state_dict(model), str(tmp), metadata={"format": "pt"})
    tmp.replace(weights)
    special = {} if eot_id is None else {"bos_token_id": eot_id, "eos_token_id": eot_id, "pad_token_id": eot_id}
    atomic_write_bytes(config, json.dumps({**hf_config(model), **special}, indent=2).encode())
    return [weights, config]


def save_hf_tokenizer(tokenizer: Tokenizer, folder: str | Path) -> list[Path]:
    """tokenizer.json (HF format) and tokenizer_config.json, so AutoTokenizer loads the folder."""
    folder = Path(folder)
    tokens = {"bos_token": EOT_TOKEN, "eos_token": EOT_TOKEN, "unk_token": EOT_TOKEN, "pad_token": EOT_TOKEN} \
        if EOT_TOKEN in tokenizer.special_tokens else {}
    config = {"tokenizer_class": "GPT2TokenizerFast", "add_prefix_space": False, "clean_up_tokenization_spaces": False, **tokens}
    tokenizer.save_hf_json(folder / "tokenizer.json")
    atomic_write_bytes(folder / "tokenizer_config.json", json.dumps(config, indent=2).encode())
    return [folder / "tokenizer.json", folder / "tokenizer_config.json"]


def spec_from_hf_config(config: dict, path: Path) -> GPT2Spec | LlamaSpec:
    kind = config.get("model_type")
    try:
        if kind == "gpt2":
            return GPT2Spec(n_layer=config["n_layer"], n_head=config["n_head"], n_embd=config["n_embd"],
                            block_size=config["n_positions"], vocab_size=config["vocab_size"],
                            mlp_hidden=config.get("n_inner") or 4 * config["n_embd"],
                            tie_embeddings=config.get("tie_word_embeddings", True))
        if kind in ("llama", "qwen3"):
            return LlamaSpec(n_layer=config["num_hidden_layers"], n_head=config["num_attention_heads"],
                             n_kv_head=config.get("num_key_value_heads", config["num_attention_heads"]),
                             n_embd=config["hidden_size"], block_size=config["max_position_embeddings"],
                             vocab_size=config["vocab_size"], mlp_hidden=config["intermediate_size"],
                             tie_embeddings=config.get("tie_word_embeddings", False), rope_theta=config.get("rope_theta", 10000.0),
                             qk_norm=kind == "qwen3" or config.get("koi_qk_norm", False), norm_eps=config.get("rms_norm_eps", 1e-6))
    except KeyError as exc:
        raise ExportError(path, exc.args[0], "expected this key in the HF config") from None
    raise ExportError(path, "model_type", f"expected 'gpt2', 'llama' or 'qwen3', got {kind!r}")


def load_hf(folder: str | Path) -> nn.Module:
    """Build a Koi model from an HF folder (config.json + model.safetensors); no pickle involved."""
    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.exists():
        raise ExportError(config_path, "file", "not found")
    spec = spec_from_hf_config(json.loads(config_path.read_text()), config_path)
    model = GPT2(spec) if isinstance(spec, GPT2Spec) else Llama(spec)
    tensors = load_file(str(folder / "model.safetensors"))
    if isinstance(model, GPT2):
        # Hub files name GPT2Model tensors ("h.0...", "wte.weight") and carry causal-mask buffers; Koi's carry "transformer.".
        tensors = {(k if k.startswith(("transformer.", "lm_head")) else f"transformer.{k}"): v for k, v in tensors.items()
                   if not k.endswith((".attn.bias", ".attn.masked_bias"))}
        tensors = {k: (v.t() if k.endswith(CONV1D_SUFFIXES) else v) for k, v in tensors.items()}
    if spec.tie_embeddings:
        tensors.pop("lm_head.weight", None)
    expected = {k for k in model.state_dict() if not (spec.tie_embeddings and k == "lm_head.weight")}
    missing = sorted(expected - set(tensors))
    if missing:
        raise ExportError(folder / "model.safetensors", missing[0], "expected this tensor, it is missing")
    model.load_state_dict(tensors, strict=False)
    return model
