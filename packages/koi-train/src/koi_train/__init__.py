"""koi-train: models, trainer, checkpoints and the `koi-train` command.

    from koi_train import load_config, Trainer
    cfg = load_config("run.json")
    Trainer(cfg, "runs/my-run").fit()

Names are imported on first use, so reading or validating a config does not load torch (the
`schema` nox session runs without it). The `TYPE_CHECKING` block names every export for type
checkers and editors; a test keeps it equal to `_EXPORTS`.
"""

from __future__ import annotations

import importlib
from importlib import metadata
from typing import TYPE_CHECKING

try:
    __version__ = metadata.version("koi-train")  # the one place it is written is pyproject.toml
except metadata.PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

if TYPE_CHECKING:
    from .checkpoint import load_checkpoint, save_checkpoint
    from .config import RunConfig, load_config, load_dict
    from .errors import CheckpointError, ConfigError, ExportError
    from .hf_io import load_hf, save_hf
    from .load_model import load_trained_model
    from .models import GPT2, Llama, build_model, count_parameters
    from .trainer import Trainer, TrainingAborted

_EXPORTS = {
    "CheckpointError": ".errors", "ConfigError": ".errors", "ExportError": ".errors",
    "RunConfig": ".config", "load_config": ".config", "load_dict": ".config",
    "GPT2": ".models", "Llama": ".models", "build_model": ".models", "count_parameters": ".models",
    "load_checkpoint": ".checkpoint", "save_checkpoint": ".checkpoint",
    "Trainer": ".trainer", "TrainingAborted": ".trainer",
    "load_hf": ".hf_io", "save_hf": ".hf_io", "load_trained_model": ".load_model",
}
__all__ = [
    "CheckpointError", "ConfigError", "ExportError", "GPT2", "Llama", "RunConfig", "Trainer", "TrainingAborted", "build_model",
    "count_parameters", "load_checkpoint", "load_config", "load_dict", "load_hf", "load_trained_model", "save_checkpoint",
    "save_hf",
]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'koi_train' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name], __name__), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
