"""Models Koi trains: GPT-2 (HF names) and a Llama/Qwen3-style decoder, built from presets."""

from .gpt2 import GPT2, GPT2Spec
from .llama import Llama, LlamaSpec
from .registry import PRESETS, build_model, count_parameters, resolve_sizes

__all__ = ["GPT2", "GPT2Spec", "Llama", "LlamaSpec", "PRESETS", "build_model", "count_parameters", "resolve_sizes"]
