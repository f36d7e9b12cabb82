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
        model = _model_for(extra["config"], _vocab_from_dcp(checkpoint), checkpoint)
        load_sharded(checkpoint, model)
        return model
    state = load_checkpoint(checkpoint)
    model = _model_for(state["config"], state["model"]["lm_head.weight"].shape[0], checkpoint)
    model.load_state_dict(state["model"])
    return model


def _model_for(config: dict, vocab: int, checkpoint: str) -> nn.Module:
    """The run's model; the vocabulary size may have come from the tokenizer at train time, so the weights say."""
    cfg = load_dict(config, source=f"{checkpoint} (config)")
    return build_model(dataclasses.replace(cfg.model, vocab_size=vocab))


def _vocab_from_dcp(checkpoint: str) -> int:
    from torch.distributed.checkpoint import FileSystemReader

    metadata = FileSystemReader(checkpoint).read_metadata()
    return metadata.state_dict_metadata["model.lm_head.weight"].size[0]
