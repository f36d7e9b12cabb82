"""`koi-train eval`: koi-eval's commands (perplexity, hellaswag, generate) on Koi checkpoints.

koi-eval cannot load a Koi checkpoint itself: that needs koi-train's models, and koi-train already
depends on koi-eval, so the loader lives here and is handed to koi-eval's command line.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from koi_eval import LoadedModel, run_command

from .config import ConfigError
from .errors import CheckpointError, ExportError


def load_for_eval(path: str, device: str) -> LoadedModel:
    """A Koi run folder, step_*.pt checkpoint, or Hugging Face folder -> the Koi model, in eval mode."""
    from .hf_io import load_hf
    from .load_model import load_trained_model

    folder = Path(path)
    if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
        model = load_hf(folder)
    else:
        model = load_trained_model(path)
    model = model.to(device).eval()
    return LoadedModel(model, model.spec.block_size)


def main(argv: Sequence[str]) -> int:
    return run_command(argv, load_model=load_for_eval, prog="koi-train eval", user_errors=(ConfigError, CheckpointError, ExportError))
