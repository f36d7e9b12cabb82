"""koi-eval: validation loss (sampled or full), generation, and later HellaSwag and perplexity.

    from koi_eval import estimate_loss
    est = estimate_loss(model, val_shards, block_size=1024, fraction=0.1, seed=0)
    print(est.loss, "+-", est.stderr)
"""

from .generate import filter_logits, generate
from .val_loss import LossEstimate, Window, all_windows, estimate_loss, sample_windows, window_losses

__version__ = "0.1.0"
__all__ = ["LossEstimate", "Window", "all_windows", "estimate_loss", "filter_logits", "generate", "sample_windows", "window_losses"]
