"""Judging a step while the next one runs, so the GPU never waits for the host.

Reading the loss back after every step drains the GPU's queue: the device then idles while the
host launches the optimizer, fetches the next batch and launches the next forward (11 ms of every
72 at 124M on an H200; see the profile in BENCHMARKS.md). Here the step's verdict is computed on
the device instead: a flag from the detector's limits, which the host already knows, since they
depend only on earlier steps. The optimizer applies the update unless the flag is set (fused
AdamW's ``found_inf`` input, the same gate mixed precision's loss scaler uses), and the three
numbers travel to pinned host memory without a sync. The host reads them one step later, while
the device is busy with that step's forward and backward, and judges the step exactly as it
would have at once: same numbers, same limits, same decision as the device's flag.

A rollback found that late has already run one more forward and backward on the weights it
discards; the trainer redoes that step from the restored weights and the same batch, so a run
judged late makes the same decisions, and the same weights, as a run judged at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from koi_kernels import AdamW8bit, FusedAdamW

from .optim import Lion, Muon
from .optimizer_set import OptimizerSet


def optimizer_can_gate(optimizer: OptimizerSet) -> bool:
    """Torch's fused Adam/AdamW, Koi's Muon and Lion, and koi-kernels' AdamW (bf16 weights) and 8-bit
    AdamW skip an update on a device flag (a ``found_inf`` input)."""
    return all(isinstance(opt, Muon | Lion | FusedAdamW | AdamW8bit)
               or (isinstance(opt, torch.optim.Adam | torch.optim.AdamW) and opt.defaults.get("fused"))
               for opt in optimizer.optimizers)


def step_gated(optimizer: OptimizerSet, skip: torch.Tensor | None) -> None:
    """Step every optimizer, each skipping its update on the device where ``skip`` is 1.0."""
    if skip is None:
        optimizer.step()
        return
    for opt in optimizer.optimizers:
        opt.found_inf = skip
        try:
            opt.step()
        finally:
            del opt.found_inf


@dataclass
class StepInFlight:
    """A step whose update is launched but whose numbers the host has not read yet."""

    step: int
    values: torch.Tensor  # (loss, grad norm) as float64, in host memory once `ready` has passed
    ready: torch.cuda.Event | None
    data_before: dict  # the data position its batch was drawn from: the replay test needs it
    lr: float

    def read(self) -> tuple[float, float]:
        """(loss, grad norm); waits only for this step's copy, which finished long before on a busy GPU."""
        if self.ready is not None:
            self.ready.synchronize()
        loss, grad_norm = self.values.tolist()
        return loss, grad_norm


class LateReads:
    """Copies each step's numbers to one reused pinned buffer: a step is always read before the next is launched."""

    def __init__(self, device: torch.device) -> None:
        self._host = torch.empty(2, dtype=torch.float64, pin_memory=device.type == "cuda")

    def launch(self, step: int, loss: torch.Tensor, grad_norm: torch.Tensor, data_before: dict, lr: float) -> StepInFlight:
        """The host re-derives the device's skip flag from these numbers, so only they travel."""
        values = torch.stack([loss.double(), grad_norm.double().to(loss.device)])
        host = self._host
        ready = None
        if values.is_cuda:
            host.copy_(values, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record()
        else:
            host.copy_(values)
        return StepInFlight(step, host, ready, data_before, lr)
