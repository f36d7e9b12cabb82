"""Load a model to evaluate from a Hugging Face folder (config.json + model.safetensors).

koi-eval scores any logits function; from the command line it loads HF GPT-2 and Llama/Qwen3
folders with its own small forward passes (`hf_models`), so `pip install koi-eval` alone can score
one. Other architectures load through transformers when it is installed (`koi-eval[hf]`). Koi
checkpoints and run folders are koi-train's to load (koi-train depends on koi-eval, never the
reverse): `koi-train eval perplexity -m RUN ...` runs these same commands on them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from .hellaswag import EvalFileError
from .hf_models import HFGPT2, GPT2Shape, HFLlama, LlamaShape


class LoadedModel(NamedTuple):
    """What the commands need of a model: its logits function, in eval mode, and its context length."""

    model: Callable[[torch.Tensor], torch.Tensor]
    block_size: int


ModelLoader = Callable[[str, str], LoadedModel]
"""(path, device) -> LoadedModel; `koi-eval` passes `load_hf_model`, `koi-train eval` its own checkpoint loader."""

KOI_RUN_HINT = "a Koi run or checkpoint is loaded by koi-train: use `koi-train eval` (or `koi-train export` it first)"


def _field(config: dict[str, Any], key: str, path: Path) -> Any:
    if key not in config:
        raise EvalFileError(path, key, "expected this key in the Hugging Face config, it is missing")
    return config[key]


def gpt2_shape(config: dict[str, Any], path: Path) -> GPT2Shape:
    n_embd = _field(config, "n_embd", path)
    if config.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
        raise EvalFileError(path, "activation_function", f"expected gelu_new, got {config['activation_function']!r}")
    return GPT2Shape(n_layer=_field(config, "n_layer", path), n_head=_field(config, "n_head", path), n_embd=n_embd,
                     n_positions=_field(config, "n_positions", path), vocab_size=_field(config, "vocab_size", path),
                     n_inner=config.get("n_inner") or 4 * n_embd, layer_norm_epsilon=config.get("layer_norm_epsilon", 1e-5),
                     tie_word_embeddings=config.get("tie_word_embeddings", True))


def rope_theta(config: dict[str, Any], path: Path) -> float:
    """RoPE's base: ``rope_theta`` (transformers 4) or ``rope_parameters.rope_theta`` (5); scaled RoPE is refused."""
    for key in ("rope_scaling", "rope_parameters"):
        params = config.get(key) or {}
        if params.get("rope_type", params.get("type", "default")) != "default":
            raise EvalFileError(path, f"{key}.rope_type", f"koi-eval's own Llama has plain RoPE only, got {params.get('rope_type')!r}")
    return float(config.get("rope_theta") or (config.get("rope_parameters") or {}).get("rope_theta") or 10000.0)


def llama_shape(config: dict[str, Any], path: Path) -> LlamaShape:
    for key, plain in (("hidden_act", "silu"), ("mlp_bias", False)):
        if config.get(key, plain) != plain:
            raise EvalFileError(path, key, f"koi-eval's own Llama expects {plain!r}, got {config[key]!r}")
    heads, hidden = _field(config, "num_attention_heads", path), _field(config, "hidden_size", path)
    return LlamaShape(num_hidden_layers=_field(config, "num_hidden_layers", path), num_attention_heads=heads,
                      num_key_value_heads=config.get("num_key_value_heads") or heads, hidden_size=hidden,
                      head_dim=config.get("head_dim") or hidden // heads,
                      intermediate_size=_field(config, "intermediate_size", path),
                      max_position_embeddings=_field(config, "max_position_embeddings", path),
                      vocab_size=_field(config, "vocab_size", path), rms_norm_eps=config.get("rms_norm_eps", 1e-6),
                      rope_theta=rope_theta(config, path), tie_word_embeddings=config.get("tie_word_embeddings", False),
                      qk_norm=config.get("model_type") == "qwen3" or bool(config.get("koi_qk_norm", False)),
                      attention_bias=bool(config.get("attention_bias", False)))


def _hub_names(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Files saved from the headless model (GPT2Model, LlamaModel) lack the ``transformer.`` / ``model.`` prefix."""
    return {(k if k.startswith((prefix, "lm_head.")) else prefix + k): v for k, v in tensors.items()}


def build_own(config: dict[str, Any], config_path: Path) -> nn.Module | None:
    """koi-eval's own model for this config, or None when the architecture is not one it carries."""
    kind = config.get("model_type")
    if kind == "gpt2":
        return HFGPT2(gpt2_shape(config, config_path))
    if kind in ("llama", "qwen3"):
        return HFLlama(llama_shape(config, config_path))
    return None


def load_weights(model: nn.Module, weights: Path) -> None:
    from safetensors.torch import load_file

    tensors = _hub_names(load_file(str(weights)), "transformer." if isinstance(model, HFGPT2) else "model.")
    tensors = {k: v for k, v in tensors.items() if not k.endswith((".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq"))}
    expected = model.state_dict()
    if model.shape.tie_word_embeddings:  # the head is the embedding; files may or may not repeat it
        tensors.pop("lm_head.weight", None)
        expected = {k: v for k, v in expected.items() if k != "lm_head.weight"}
    for name, tensor in tensors.items():
        if name not in expected:
            raise EvalFileError(weights, name, "unexpected tensor for this config.json")
        if tensor.shape != expected[name].shape:
            raise EvalFileError(weights, name, f"expected shape {tuple(expected[name].shape)}, got {tuple(tensor.shape)}")
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise EvalFileError(weights, missing[0], "expected this tensor, it is missing")
    model.load_state_dict(tensors, strict=False)


class TransformersModel(nn.Module):
    """A transformers causal LM as a logits function, for architectures koi-eval does not carry."""

    def __init__(self, model: nn.Module, block_size: int) -> None:
        super().__init__()
        self.inner, self.block_size = model, block_size

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.inner(input_ids=idx).logits


def _load_with_transformers(folder: Path, config: dict[str, Any], config_path: Path) -> nn.Module:
    try:
        from transformers import AutoModelForCausalLM
    except ImportError:
        raise EvalFileError(config_path, "model_type", f"expected gpt2, llama or qwen3, got {config.get('model_type')!r} "
                            "(other architectures need koi-eval[hf], which installs transformers)") from None
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, local_files_only=True)
    block = config.get("max_position_embeddings") or config.get("n_positions") or 2048
    return TransformersModel(model, int(block))


def load_hf_folder(path: str | Path, device: str = "cpu") -> nn.Module:
    """An HF folder's model in fp32 and eval mode; ``model.block_size`` is its context length. No pickle involved."""
    folder = Path(path)
    config_path, weights = folder / "config.json", folder / "model.safetensors"
    if not folder.exists():
        raise FileNotFoundError(f"{folder}: not found")
    if not config_path.is_file() or not weights.is_file():
        raise EvalFileError(folder, "model", f"expected a Hugging Face folder with config.json and model.safetensors; {KOI_RUN_HINT}")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise EvalFileError(config_path, "contents", f"expected JSON ({exc})") from None
    model = build_own(config, config_path)
    if model is None:
        model = _load_with_transformers(folder, config, config_path)
    else:
        load_weights(model, weights)
    return model.float().to(device).eval()


def load_hf_model(path: str, device: str) -> LoadedModel:
    """The command line's loader: an HF folder, with its context length."""
    model = load_hf_folder(path, device)
    return LoadedModel(model, model.block_size)
