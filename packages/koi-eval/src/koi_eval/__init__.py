"""koi-eval: validation loss (sampled or full), perplexity, HellaSwag and generation.

Everything takes a model as a function from token ids (B, T) to logits (B, T, V):

    from koi_eval import estimate_loss
    est = estimate_loss(model, val_shards, block_size=1024, fraction=0.1, seed=0)
    print(est.loss, "+-", est.stderr)
"""

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
from .perplexity import PerplexityResult, perplexity
from .val_loss import LossEstimate, Window, all_windows, estimate_loss, sample_windows, window_losses

__version__ = "0.1.0"
__all__ = [
    "EvalFileError", "Example", "HellaSwagResult", "LossEstimate", "PerplexityResult", "Window", "all_windows",
    "estimate_loss", "evaluate_hellaswag", "filter_logits", "generate", "perplexity", "read_eval_bin", "read_jsonl",
    "sample_windows", "window_losses", "write_eval_bin",
]
