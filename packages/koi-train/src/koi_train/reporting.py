"""The progress line of a run: step, loss, lr, grad norm, tokens/s, MFU (on GPU) and ETA."""

from __future__ import annotations

import math
import time

import torch
from torch import nn

# Dense bf16 tensor-core peak per GPU, for MFU. Unknown cards report no MFU rather than a wrong one.
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def flops_per_token(params: int, n_layer: int, n_embd: int, block_size: int) -> float:
    """6N for the matmuls of forward+backward plus the attention scores (PaLM appendix B)."""
    return 6 * params + 12 * n_layer * n_embd * block_size


def device_peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


def format_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


class ProgressReporter:
    def __init__(self, total_steps: int, tokens_per_step: int, params: int, block_size: int,
                 model: nn.Module, device: torch.device, *, start_step: int = 0, world_size: int = 1) -> None:
        """``tokens_per_step`` is one process's; with ``world_size`` processes the job does that many times more."""
        self.total_steps, self.tokens_per_step, self.world_size = total_steps, tokens_per_step, world_size
        spec = model.spec
        self.flops_per_token = flops_per_token(params, spec.n_layer, spec.n_embd, block_size)
        self.peak = device_peak_flops(device)
        self.last_time, self.last_step = time.perf_counter(), start_step
        self._loss_sum, self._loss_count = 0.0, 0

    def note_loss(self, loss: float) -> None:
        """Every step's loss, for the record's mean since the last one (one batch's loss is noisy: runs
        compare on the mean; a non-finite loss is left out, the step's own record shows it)."""
        if math.isfinite(loss):
            self._loss_sum, self._loss_count = self._loss_sum + loss, self._loss_count + 1

    def record(self, step: int, loss: float, grad_norm: float, lr: float) -> tuple[dict, str]:
        """The metrics record and the progress line for ``step``."""
        now = time.perf_counter()
        steps = step - self.last_step
        elapsed = max(now - self.last_time, 1e-9)
        self.last_time, self.last_step = now, step
        per_device = steps * self.tokens_per_step / elapsed
        tokens_per_s = per_device * self.world_size  # the whole job's
        eta = (self.total_steps - step) * elapsed / max(steps, 1)
        loss_mean = self._loss_sum / self._loss_count if self._loss_count else loss
        self._loss_sum, self._loss_count = 0.0, 0
        record = {"kind": "train", "step": step, "tokens": step * self.tokens_per_step, "loss": loss, "loss_mean": loss_mean, "lr": lr,
                  "grad_norm": grad_norm, "tokens_per_s": tokens_per_s, "tokens_per_s_per_device": per_device,
                  "devices": self.world_size, "time": time.time()}
        mfu = ""
        if torch.cuda.is_available() and self.peak is not None:
            record["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        if self.peak:
            record["mfu"] = per_device * self.flops_per_token / self.peak
            mfu = f" | MFU {record['mfu']:.2f} | peak {record['peak_memory_gib']:.1f} GiB"
        speed = f"{tokens_per_s:,.0f} tok/s" + (f" ({per_device:,.0f} per GPU x {self.world_size})" if self.world_size > 1 else "")
        line = (f"step {step:>6}/{self.total_steps} | loss {loss:.4f} | lr {lr:.2e} | grad {grad_norm:.3f} | "
                f"{speed}{mfu} | ETA {format_duration(eta)}")
        return record, line
