"""Load a model to evaluate: a Koi checkpoint / run folder, or a Hugging Face GPT-2/Llama folder.

Model definitions live in koi-train, which is imported only here and only when a checkpoint is
loaded, so the rest of koi-eval works with any logits function and without koi-train.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn


def load_model(path: str | Path, device: str = "cpu") -> nn.Module:
    try:
        from koi_train.hf_io import load_hf
        from koi_train.load_model import load_trained_model
    except ImportError:
        raise ImportError("loading checkpoints needs koi-train: pip install koi-train") from None
    path = Path(path)
    if (path / "config.json").exists() and (path / "model.safetensors").exists():
        model = load_hf(path)
    else:
        model = load_trained_model(str(path))
    return model.to(device).eval()
