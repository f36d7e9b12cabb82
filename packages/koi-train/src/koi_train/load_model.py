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
    if Path(checkpoint).is_dir():  # DCP shards written under FSDP
        import torch

        from .sharded_checkpoint import EXTRA_FILE, load_sharded

        extra = torch.load(Path(checkpoint) / EXTRA_FILE, map_location="cpu", weights_only=True)
        cfg = load_dict(extra["config"], source=f"{checkpoint} (config)")
        vocab = _vocab_from_dcp(checkpoint)
        model = build_model(dataclasses.replace(cfg.model, vocab_size=vocab))
        load_sharded(checkpoint, model)
        return model
    state = load_checkpoint(checkpoint)
    cfg = load_dict(state["config"], source=f"{checkpoint} (config)")
    # The vocabulary size may have come from the tokenizer at train time; the weights say what it was.
    vocab = state["model"]["lm_head.weight"].shape[0]
    model = build_model(dataclasses.replace(cfg.model, vocab_size=vocab))
    model.load_state_dict(state["model"])
    return model


def _vocab_from_dcp(checkpoint: str) -> int:
    from torch.distributed.checkpoint import FileSystemReader

    metadata = FileSystemReader(checkpoint).read_metadata()
    return metadata.state_dict_metadata["model.lm_head.weight"].size[0]
