"""`koi-train eval`: koi-eval's commands (perplexity, hellaswag, generate) on Koi checkpoints.

koi-eval cannot load a Koi checkpoint itself: that needs koi-train's models, and koi-train already
depends on koi-eval, so the loader lives here and is handed to koi-eval's command line.

``--predicted-mlp`` (koi-train's own flag, taken out before koi-eval parses the rest) computes
each MLP on the neurons its activation predictor picks (a run trained with
``sparsity.activation_predictor``): perplexity then says what the predicted neurons cost in
loss, and generation decodes each token through koi-kernels' gathered MLP.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path

from koi_eval import LoadedModel, run_command

from .config import ConfigError
from .errors import CheckpointError, ExportError

PREDICTED_MLP = "--predicted-mlp"


def load_for_eval(path: str, device: str, *, predicted_mlp: bool = False) -> LoadedModel:
    """A Koi run folder, step_*.pt checkpoint, or Hugging Face folder -> the Koi model, in eval mode."""
    from .hf_io import load_hf
    from .load_model import load_trained_model
    from .sparsity import PredictedMLP

    folder = Path(path)
    if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
        model = load_hf(folder)
    else:
        model = load_trained_model(path)
    model = model.to(device).eval()
    if predicted_mlp:
        blocks = [m for m in model.modules() if isinstance(m, PredictedMLP)]
        if not blocks:
            raise ConfigError(path, "sparsity.activation_predictor.enabled", f"{PREDICTED_MLP} needs a Koi run or checkpoint "
                              "trained with the activation predictor (export drops it); expected true, found none")
        for block in blocks:
            block.use_predictor = True
    return LoadedModel(model, model.spec.block_size)


def main(argv: Sequence[str]) -> int:
    argv = list(argv)
    predicted_mlp = PREDICTED_MLP in argv
    argv = [arg for arg in argv if arg != PREDICTED_MLP]
    return run_command(argv, load_model=partial(load_for_eval, predicted_mlp=predicted_mlp), prog="koi-train eval",
                       user_errors=(ConfigError, CheckpointError, ExportError))
