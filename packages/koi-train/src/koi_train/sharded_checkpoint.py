"""Sharded checkpoints through torch.distributed.checkpoint (DCP), used when FSDP shards the model.

Each rank writes its own shards into ``step_XXXXXXXX/`` (through a ``.tmp`` folder renamed when
every rank is done); rank 0 adds ``koi_state.pt`` with the step, data position, RNG and config.
DCP reshards on load, so a checkpoint written by N processes loads on M, or on one without FSDP.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from koi_tokenizer import atomic_write_bytes

from .checkpoint import prune_checkpoints
from .distributed import DistInfo, barrier
from .errors import CheckpointError
from .versions import CHECKPOINT_FORMAT, FORMAT_KEY, migrate_checkpoint

EXTRA_FILE = "koi_state.pt"


def _state(model: nn.Module, optimizers: list[torch.optim.Optimizer]) -> dict[str, Any]:
    state = {"model": get_model_state_dict(model)}
    for i, opt in enumerate(optimizers):
        state[f"optimizer_{i}"] = get_optimizer_state_dict(model, opt)
    return state


def save_sharded(directory: str, step: int, model: nn.Module, optimizers: list[torch.optim.Optimizer],
                 extra: dict[str, Any], info: DistInfo, *, keep_last: int) -> str:
    final = Path(directory) / f"step_{step:08d}"
    tmp = final.with_name(final.name + ".tmp")
    if info.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier(info)
    dcp.save(_state(model, optimizers), checkpoint_id=str(tmp))
    if info.is_main:
        buffer = io.BytesIO()
        torch.save({**extra, FORMAT_KEY: CHECKPOINT_FORMAT}, buffer)
        atomic_write_bytes(tmp / EXTRA_FILE, buffer.getvalue())
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        prune_checkpoints(directory, keep_last)
    barrier(info)
    return str(final)


def is_sharded(path: str) -> bool:
    return Path(path).is_dir()


def load_sharded(path: str, model: nn.Module, optimizers: list[torch.optim.Optimizer] | None = None) -> dict[str, Any]:
    """Load shards into ``model`` (and optimizers), resharding to however they are laid out now; return the extra state."""
    extra_path = Path(path) / EXTRA_FILE
    if not extra_path.exists():
        raise CheckpointError(path, EXTRA_FILE, "expected this file in a sharded checkpoint, it is missing")
    state = _state(model, optimizers or [])
    dcp.load(state, checkpoint_id=path)
    set_model_state_dict(model, state["model"])
    for i, opt in enumerate(optimizers or []):
        set_optimizer_state_dict(model, opt, state[f"optimizer_{i}"])
    return read_extra(path)


def read_extra(path: str) -> dict[str, Any]:
    """The non-tensor state of a sharded checkpoint (step, data, RNG, config), migrated to today's format."""
    extra = torch.load(Path(path) / EXTRA_FILE, map_location="cpu", weights_only=True)
    return migrate_checkpoint(extra, lambda field, problem: CheckpointError(Path(path) / EXTRA_FILE, field, problem))
