"""koi-train: models, trainer, checkpoints and the `koi-train` command.

    from koi_train import load_config, Trainer
    cfg = load_config("run.json")
    Trainer(cfg, "runs/my-run").fit()
"""

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import ConfigError, RunConfig, load_config, load_dict
from .models import GPT2, Llama, build_model, count_parameters
from .trainer import Trainer, TrainingAborted

__version__ = "0.1.0"
__all__ = [
    "GPT2", "CheckpointError", "ConfigError", "Llama", "RunConfig", "Trainer", "TrainingAborted", "build_model",
    "count_parameters", "load_checkpoint", "load_config", "load_dict", "save_checkpoint",
]
