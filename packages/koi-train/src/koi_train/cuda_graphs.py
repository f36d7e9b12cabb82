"""CUDA graphs for the compiled objective (`train.compile_mode: reduce-overhead`).

At small micro-batches the host, not the GPU, sets the pace: a compiled GPT-2 124M forward and
backward launches about 600 kernels, and on the card one micro-batch of 8x1024 took longer to
launch than to run (profile in BENCHMARKS.md: 39% of the step's wall time on the GPU with 4
micro-batches). Replaying a captured graph launches the whole forward (or backward) at once.

Two things make graphs safe in this trainer, and this module owns both:
- Gradients must live outside the graphs' memory pool. A backward replay writes its outputs into
  the pool; had `AccumulateGrad` adopted them as `.grad` (it does when `.grad` is None), the next
  micro-batch's replay would overwrite the sum. So every trained parameter gets a zeroed `.grad`
  once, and zeroing between steps keeps the buffers (`set_to_none=False`): each backward adds into
  them.
- Each call of the objective starts a new graph step (`cudagraph_mark_step_begin`), so the
  previous call's outputs (already read into the running loss) may be reused.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import ConfigError, RunConfig

MODE = "reduce-overhead"


def _conflict(cfg: RunConfig) -> str | None:
    """What in this config CUDA graphs would break, or None."""
    if cfg.train.optimizer_in_backward:
        return "cannot step the optimizer inside backward; expected default with train.optimizer_in_backward"
    if cfg.distributed.strategy in ("ddp", "fsdp"):
        return f"runs on one GPU; expected default with distributed.strategy {cfg.distributed.strategy}"
    if cfg.mixture.experts > 1:
        return "cannot follow the mixture's expert switches; expected default with mixture.experts > 1"
    return None


def wants_cuda_graphs(cfg: RunConfig, device: torch.device, compiled: bool) -> bool:
    """True when the run replays captured graphs. Combinations that graphs would break are refused on
    every device, so a config that trains on a laptop does not fail on the card."""
    if cfg.train.compile_mode != MODE or cfg.train.compile is False:
        return False
    if problem := _conflict(cfg):
        raise ConfigError("", "train.compile_mode", f"reduce-overhead (CUDA graphs) {problem}")
    return compiled and device.type == "cuda"


def graphs_hint(cfg: RunConfig, device: torch.device, compiled: bool) -> str | None:
    """A line for runs that would likely gain from graphs but did not ask: micro-batches on one GPU."""
    if (not compiled or device.type != "cuda" or cfg.train.compile_mode != "default" or cfg.train.grad_accum <= 1
            or _conflict(cfg) is not None):
        return None
    return ("compile: train.grad_accum > 1 launches every micro-batch's kernels from the host; "
            "train.compile_mode reduce-overhead replays them as CUDA graphs (4 x 8 micro-batches at 124M: 1.3-1.5x on an H100)")


def compile_mode_for(cfg: RunConfig, device: torch.device) -> str:
    """torch.compile's mode: CUDA graphs only on CUDA (on the CPU there is nothing to replay)."""
    mode = cfg.train.compile_mode
    return "default" if mode == MODE and device.type != "cuda" else mode


def give_stable_grads(model: nn.Module) -> int:
    """Allocate a zeroed `.grad` for every trained parameter that has none; return how many."""
    made = 0
    for param in model.parameters():
        if param.requires_grad and param.grad is None:
            param.grad = torch.zeros_like(param)
            made += 1
    return made


def begin_graph_step() -> None:
    """Mark a new graph step: the previous objective call's outputs may now be overwritten."""
    torch.compiler.cudagraph_mark_step_begin()


def skipped_graphs() -> int:
    """How many graphs Inductor compiled without CUDA graphs (a mutated input, a CPU tensor, ...).

    Inductor logs each skip only to an artifact logger that is off by default, so a run that asked
    for graphs and got none would not know it; the trainer reports this count after the first step.
    """
    from torch._dynamo.utils import counters

    return int(counters["inductor"].get("cudagraph_skips", 0))


def skip_note(skipped: int) -> str | None:
    """The line a run prints when graphs were skipped, or None."""
    if skipped <= 0:
        return None
    return (f"compile: Inductor ran {skipped} graph(s) without CUDA graphs (train.compile_mode reduce-overhead); "
            "those parts launch kernel by kernel. TORCH_LOGS=cudagraphs says why")
