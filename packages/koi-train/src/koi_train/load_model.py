"""Rebuild the model a checkpoint was trained with, weights loaded, ready to evaluate or export."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from torch import nn

from .checkpoint import latest_checkpoint, load_checkpoint
from .config import ConfigError, load_dict
from .mixture import expert_model_config
from .models import build_model, resolve_sizes
from .quantize import apply_precision_plan
from .sparsity import apply_sparsity


def resolve_checkpoint(path: str) -> str:
    """A step_*.pt file as is; a run folder (or its checkpoints/ folder) -> its latest checkpoint."""
    if not Path(path).is_dir():
        return path
    found = latest_checkpoint(str(Path(path) / "checkpoints")) or latest_checkpoint(path)
    if found is None:
        raise FileNotFoundError(f"{path}: no step_*.pt checkpoint found")
    return found


def load_trained_model(path: str, expert: int | None = None) -> nn.Module:
    """The trained model, with the precision plan it trained under (quantized layers compute as in training).

    For an expert-mixture run: one expert (``expert``, by default the best at
    the last evaluation, else the active one) around the shared embedding and head, with the
    expert's depth, so what is exported is exactly what was evaluated as that expert."""
    checkpoint = resolve_checkpoint(path)
    if Path(checkpoint).is_dir():  # DCP shards written under FSDP
        from .sharded_checkpoint import load_sharded, read_extra

        extra = read_extra(checkpoint)
        model = _model_for(extra["config"], _vocab_from_dcp(checkpoint), checkpoint)
        load_sharded(checkpoint, model)
        return model
    state = load_checkpoint(checkpoint)
    mixture = state.get("mixture")
    if mixture is None and expert is not None:
        raise ConfigError(checkpoint, "expert", "a run without mixture.experts has no experts to choose from")
    model = _model_for(state["config"], state["model"]["lm_head.weight"].shape[0], checkpoint, expert_depth=mixture is not None)
    model.load_state_dict(state["model"])  # for a mixture: the shared weights, and the active expert's blocks
    if mixture is not None:
        model.blocks.load_state_dict(mixture["weights"][_chosen_expert(mixture, expert, checkpoint)])
    return model


def _chosen_expert(mixture: dict, expert: int | None, checkpoint: str) -> int:
    best = mixture.get("best_expert")
    chosen = expert if expert is not None else best if best is not None else mixture["active"]
    if not 0 <= chosen < len(mixture["weights"]):
        raise ConfigError(checkpoint, "expert", f"expected an expert number in 0..{len(mixture['weights']) - 1}, got {chosen}")
    return chosen


def _model_for(config: dict, vocab: int, checkpoint: str, expert_depth: bool = False) -> nn.Module:
    """The run's model; the vocabulary size may have come from the tokenizer at train time, so the weights say.

    ``expert_depth``: the model of a mixture run at one expert's depth, as it trained.
    """
    cfg = load_dict(config, source=f"{checkpoint} (config)")
    model_cfg = dataclasses.replace(cfg.model, vocab_size=vocab)
    if expert_depth:
        model_cfg = expert_model_config(model_cfg, cfg.mixture, resolve_sizes(model_cfg)["n_layer"])
    model = build_model(model_cfg)
    apply_precision_plan(model, cfg.precision)  # a low-bit run is evaluated as the low-bit model it trained
    apply_sparsity(model, cfg.sparsity, cfg.precision)  # 2:4 masks and predictors: loaded from the checkpoint
    return model


def _vocab_from_dcp(checkpoint: str) -> int:
    from torch.distributed.checkpoint import FileSystemReader

    metadata = FileSystemReader(checkpoint).read_metadata()
    return metadata.state_dict_metadata["model.lm_head.weight"].size[0]
