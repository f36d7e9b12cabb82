"""What Koi's fused optimizers share: a step count on the device, a device-side skip, state kept in its own dtypes.

The step count lives beside the parameter (as in torch's fused AdamW) so that a step can be
skipped on a device flag (``found_inf``, the gate torch's loss scaler uses and Koi's late
instability judging relies on) without the host learning of it: a skipped step leaves the count,
the weights and the moments as they were, bit for bit, and draws the same rounding noise the next
time, exactly as if ``step()`` had not been called.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

SEED_MODULUS = 2**31 - 1
SEED_STEP_FACTOR = 7_919


def seed_base(seed: int, index: int) -> int:
    """The part of a parameter's rounding seed the host knows; the kernel adds ``step * 7919`` (mod 2**31 - 1)."""
    return (seed * 1_000_003 + index) % SEED_MODULUS


def step_seed(base: int, step: int) -> int:
    """The seed a step draws its rounding noise from: the same formula the kernels evaluate on the device."""
    return (base + step * SEED_STEP_FACTOR) % SEED_MODULUS


def device_step(state: dict, param: torch.Tensor) -> torch.Tensor:
    """The parameter's step count as an fp32 scalar on its device (a checkpoint may hold it on the host)."""
    step = state.get("step")
    if step is None:
        step = state["step"] = torch.zeros((), dtype=torch.float32, device=param.device)
    elif step.device != param.device or step.dtype != torch.float32:
        step = state["step"] = step.to(device=param.device, dtype=torch.float32)
    return step


def count_steps(steps: list[torch.Tensor], skip: torch.Tensor | None) -> None:
    """Add one to every count, or, gated, one where ``skip`` is 0 (one fused launch per device and call)."""
    if not steps:
        return
    if skip is None:
        torch._foreach_add_(steps, 1.0)
    else:
        keep = (skip.reshape(()) == 0).to(torch.float32)
        torch._foreach_add_(steps, [keep.to(s.device) for s in steps])


def advance(optimizer: torch.optim.Optimizer, group: dict, new_state: Callable[[torch.Tensor], dict],
            skip: torch.Tensor | None) -> list[tuple[torch.Tensor, torch.Tensor, int]]:
    """(parameter, its device step count, its rounding seed base) for each parameter of ``group`` with a
    gradient: a first step's state made by ``new_state``, every count advanced (not where ``skip`` is 1)."""
    stepping = [(index, p) for index, p in enumerate(group["params"]) if p.grad is not None]
    for _, p in stepping:
        state = optimizer.state[p]
        if len(state) <= ("step" in state):  # nothing but (perhaps) a count yet
            state.update(new_state(p))
    steps = [device_step(optimizer.state[p], p) for _, p in stepping]
    count_steps(steps, skip)
    return [(p, step, seed_base(optimizer.seed, index)) for (index, p), step in zip(stepping, steps, strict=True)]


def load_keeping_dtypes(optimizer: torch.optim.Optimizer, state_dict: dict) -> None:
    """``Optimizer.load_state_dict``, but each state tensor keeps the dtype it was saved in.

    torch casts every floating state tensor to its parameter's dtype: 8-bit moment codes came back
    as fp32 (four times the memory, kept for the rest of the run) and the fp32 moments of bf16
    weights as bf16. Only the device follows the parameter here.
    """
    saved = state_dict["state"]
    torch.optim.Optimizer.load_state_dict(optimizer, state_dict)
    ids = [i for group in state_dict["param_groups"] for i in group["params"]]
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for saved_id, param in zip(ids, params, strict=True):
        for key, value in saved.get(saved_id, {}).items():
            if torch.is_tensor(value) and key != "step":
                optimizer.state[param][key] = value.to(device=param.device, copy=True)
