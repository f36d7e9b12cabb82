"""Rebuild the model a checkpoint was trained with, weights loaded, ready to evaluate or export."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from torch import nn

from .checkpoint import latest_checkpoint, load_checkpoint
from .config import ConfigError, load_dict
from .mixture import expert_layers
from .models import build_model, resolve_sizes


def resolve_checkpoint(path: str) -> str:
    """A step_*.pt file as is; a run folder (or its checkpoints/ folder) -> its latest checkpoint."""
    if not Path(path).is_dir():
        return path
    found = latest_checkpoint(str(Path(path) / "checkpoints")) or latest_checkpoint(path)
    if found is None:
        raise FileNotFoundError(f"{path}: no step_*.pt checkpoint found")
    return found


def load_trained_model(path: str, expert: int | None = None) -> nn.Module:
    """The trained model. For an expert-mixture run: one expert (``expert``, by default the best at
    the last evaluation, else the active one) around the shared embedding and head, with the
    expert's depth, so what is exported is exactly what was evaluated as that expert."""
    checkpoint = resolve_checkpoint(path)
    if Path(checkpoint).is_dir():  # DCP shards written under FSDP
        import torch

        from .sharded_checkpoint import EXTRA_FILE, load_sharded

        extra = torch.load(Path(checkpoint) / EXTRA_FILE, map_location="cpu", weights_only=True)
        model = _model_for(extra["config"], _vocab_from_dcp(checkpoint), checkpoint)
        load_sharded(checkpoint, model)
        return model
    state = load_checkpoint(checkpoint)
    vocab = state["model"]["lm_head.weight"].shape[0]
    if "mixture" not in state:
        if expert is not None:
            raise ConfigError(checkpoint, "expert", "a run without mixture.experts has no experts to choose from")
        model = _model_for(state["config"], vocab, checkpoint)
        model.load_state_dict(state["model"])
        return model
    return _expert_model(state, vocab, checkpoint, expert)


def _expert_model(state: dict, vocab: int, checkpoint: str, expert: int | None) -> nn.Module:
    mixture = state["mixture"]
    experts = len(mixture["weights"])
    best = mixture.get("best_expert")
    chosen = expert if expert is not None else best if best is not None else mixture["active"]
    if not 0 <= chosen < experts:
        raise ConfigError(checkpoint, "expert", f"expected an expert number in 0..{experts - 1}, got {chosen}")
    cfg = load_dict(state["config"], source=f"{checkpoint} (config)")
    depth = expert_layers(resolve_sizes(cfg.model, vocab)["n_layer"], cfg.mixture)
    model = build_model(dataclasses.replace(cfg.model, vocab_size=vocab, n_layer=depth))
    model.load_state_dict(state["model"])  # shared weights, and the active expert's blocks
    model.blocks.load_state_dict(mixture["weights"][chosen])
    return model


def _model_for(config: dict, vocab: int, checkpoint: str) -> nn.Module:
    """The run's model; the vocabulary size may have come from the tokenizer at train time, so the weights say."""
    cfg = load_dict(config, source=f"{checkpoint} (config)")
    return build_model(dataclasses.replace(cfg.model, vocab_size=vocab))


def _vocab_from_dcp(checkpoint: str) -> int:
    from torch.distributed.checkpoint import FileSystemReader

    metadata = FileSystemReader(checkpoint).read_metadata()
    return metadata.state_dict_metadata["model.lm_head.weight"].size[0]
