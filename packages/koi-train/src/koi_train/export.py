"""`koi-train export`: a Koi checkpoint (or run folder) -> HF safetensors + config.json."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from .checkpoint import latest_checkpoint, load_checkpoint
from .config import load_dict
from .hf_io import save_hf
from .models import build_model


def export_checkpoint(checkpoint: str, output: str) -> list[Path]:
    path = checkpoint
    if Path(checkpoint).is_dir():
        path = latest_checkpoint(str(Path(checkpoint) / "checkpoints")) or latest_checkpoint(checkpoint)
        if path is None:
            raise FileNotFoundError(f"{checkpoint}: no step_*.pt checkpoint found")
    state = load_checkpoint(path)
    cfg = load_dict(state["config"], source=f"{path} (config)")
    # The vocabulary size may have come from the tokenizer at train time; the weights say what it was.
    vocab = state["model"]["lm_head.weight"].shape[0]
    model = build_model(dataclasses.replace(cfg.model, vocab_size=vocab))
    model.load_state_dict(state["model"])
    return save_hf(model, output)
