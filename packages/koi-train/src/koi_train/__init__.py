"""koi-train: models, trainer, checkpoints and the `koi-train` command.

    from koi_train import load_config, Trainer
    cfg = load_config("run.json")
    Trainer(cfg, "runs/my-run").fit()

Names are imported on first use, so reading or validating a config does not load torch.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"
_EXPORTS = {
    "CheckpointError": ".errors", "ConfigError": ".errors", "ExportError": ".errors",
    "RunConfig": ".config", "load_config": ".config", "load_dict": ".config",
    "GPT2": ".models", "Llama": ".models", "build_model": ".models", "count_parameters": ".models",
    "load_checkpoint": ".checkpoint", "save_checkpoint": ".checkpoint",
    "Trainer": ".trainer", "TrainingAborted": ".trainer",
    "load_hf": ".hf_io", "save_hf": ".hf_io", "load_trained_model": ".load_model",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'koi_train' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
