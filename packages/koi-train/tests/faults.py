"""Fault injection for the trainer: each fault lives where it would in a real run.

Data faults (a NaN batch, a loss spike, exploding gradients, a poisoned window of a shard) are
tied to *positions in the data stream*, not to step numbers: the batch drawn from a given
generator state is bad every time it is drawn, including when the guard replays it. The LR spike
is tied to one update (a scheduler bug), applied once. Nothing here reaches into the guard.
"""

from __future__ import annotations

import math

import numpy as np
import torch

FAULTS = ("nan_batch", "loss_spike", "lr_spike", "grad_explosion", "poisoned_window")
WINDOW_STEPS = 4  # a poisoned shard window spans this many consecutive steps
LR_SPIKE = 3000.0
GRAD_SCALE = 1e4
LOSS_SCALE = 8.0


def _draw_keys(data, first_draw: int, draws: int) -> set[int]:
    """Generator states at the start of draws [first_draw, first_draw + draws) of ``data``, from its current state."""
    rng = np.random.Generator(np.random.PCG64())
    rng.bit_generator.state = data.rng.bit_generator.state
    keys = set()
    for index in range(first_draw + draws):
        if index >= first_draw:
            keys.add(rng.bit_generator.state["state"]["state"])
        rng.integers(0, int(data.cumulative[-1]), size=data.batch_size * data.world_size)
    return keys


def inject(trainer, kind: str, step: int) -> None:
    """Make ``trainer`` meet fault ``kind`` at ``step`` (counted from the trainer's current position)."""
    if kind not in FAULTS:
        raise ValueError(f"unknown fault {kind!r}; expected one of {FAULTS}")
    if kind == "lr_spike":
        _spike_lr(trainer, step)
        return
    accum = trainer.cfg.train.grad_accum
    offset = step - trainer.step
    keys = _draw_keys(trainer.parts.train_data, offset * accum, (WINDOW_STEPS if kind == "poisoned_window" else 1) * accum)
    data, marked = trainer.parts.train_data, {}
    draw = data.next_batch

    def next_batch():
        key = data.rng.bit_generator.state["state"]["state"]
        x, y = draw()
        if key in keys:
            if kind == "poisoned_window":  # a stretch of the shard that is noise
                g = torch.Generator().manual_seed(key % 2**63)
                x, y = torch.randint(0, 512, x.shape, generator=g), torch.randint(0, 512, y.shape, generator=g)
            else:
                marked[id(x)] = x  # kept alive, so the id stays this batch's
        return x, y

    compute = trainer.compute_loss

    def compute_loss(x, y):
        loss = compute(x, y)
        if id(x) not in marked:
            return loss
        if kind == "nan_batch":
            return loss * math.nan
        if kind == "loss_spike":
            return loss * LOSS_SCALE
        return loss + (GRAD_SCALE - 1) * (loss - loss.detach())  # grad_explosion: same value, 1e4 x the gradient

    data.next_batch = next_batch
    trainer.compute_loss = compute_loss


def _spike_lr(trainer, step: int) -> None:
    """The update of ``step`` runs at LR_SPIKE times its learning rate (in-backward: inside that step's backward)."""
    optimizer = trainer.parts.optimizer
    set_multiplier = optimizer.set_lr_multiplier
    optimizer.set_lr_multiplier = lambda m: set_multiplier(m * LR_SPIKE if trainer.step == step else m)
