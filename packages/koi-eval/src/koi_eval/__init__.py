"""koi-eval: validation loss (sampled or full), perplexity, HellaSwag and generation.

Everything takes a model as a function from token ids (B, T) to logits (B, T, V):

    from koi_eval import estimate_loss
    est = estimate_loss(model, val_shards, block_size=1024, fraction=0.1, seed=0)
    print(est.loss, "+-", est.stderr)

A Hugging Face GPT-2 or Llama folder loads without any other Koi package: `load_hf_folder(path)`.
"""

from collections.abc import Sequence
from importlib import metadata

from .generate import filter_logits, generate
from .hellaswag import (
    EvalFileError,
    Example,
    HellaSwagResult,
    evaluate_hellaswag,
    read_eval_bin,
    read_jsonl,
    write_eval_bin,
)
from .models import LoadedModel, ModelLoader, load_hf_folder, load_hf_model
from .perplexity import PerplexityResult, perplexity
from .val_loss import LossEstimate, Window, all_windows, estimate_loss, sample_windows, window_losses


def run_command(argv: Sequence[str] | None = None, *, load_model: ModelLoader | None = None, prog: str = "koi-eval",
                user_errors: tuple[type[Exception], ...] = ()) -> int:
    """The `koi-eval` command line; another package passes its own ``load_model`` (koi-train: `koi-train eval`).

    Returns the exit code: 0, or 2 after one line on stderr for bad input (and for ``user_errors``).
    """
    from .cli import main  # imported here so `python -m koi_eval.cli` does not find itself already loaded

    return main(argv, load_model=load_model or load_hf_model, prog=prog, user_errors=user_errors)


try:
    __version__ = metadata.version("koi-eval")  # the one place it is written is pyproject.toml
except metadata.PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
__all__ = [
    "EvalFileError", "Example", "HellaSwagResult", "LoadedModel", "LossEstimate", "ModelLoader", "PerplexityResult", "Window",
    "all_windows", "estimate_loss", "evaluate_hellaswag", "filter_logits", "generate", "load_hf_folder", "perplexity",
    "read_eval_bin", "read_jsonl", "run_command", "sample_windows", "window_losses", "write_eval_bin",
]
