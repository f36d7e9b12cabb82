"""Rebuild the model a checkpoint was trained with, weights loaded, ready to evaluate or export."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from torch import nn

from .checkpoint import latest_checkpoint, load_checkpoint
from .config import load_dict
from .models import build_model


def resolve_checkpoint(path: str) -> str:
    """A step_*.pt file as is; a run folder (or its checkpoints/ folder) -> its latest checkpoint."""
    if not Path(path).is_dir():
        return path
    found = latest_checkpoint(str(Path(path) / "checkpoints")) or latest_checkpoint(path)
    if found is None:
        raise FileNotFoundError(f"{path}: no step_*.pt checkpoint found")
    return found


def load_trained_model(path: str) -> nn.Module:
    checkpoint = resolve_checkpoint(path)
    state = load_checkpoint(checkpoint)
    cfg = load_dict(state["config"], source=f"{checkpoint} (config)")
    # The vocabulary size may have come from the tokenizer at train time; the weights say what it was.
    vocab = state["model"]["lm_head.weight"].shape[0]
    model = build_model(dataclasses.replace(cfg.model, vocab_size=vocab))
    model.load_state_dict(state["model"])
    return model
