"""Spot a training step that went wrong before it poisons the weights.

Signals: a non-finite loss or gradient norm; a loss far above its recent history (robust
z-score: distance from the running median in units of the median absolute deviation); a
gradient norm many times its running median. Only clean steps enter the history, so one spike
does not raise the bar for the next.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from .config import InstabilityConfig

MAD_TO_SIGMA = 1.4826  # MAD of a normal distribution times this is its standard deviation


@dataclass(frozen=True)
class InstabilityEvent:
    step: int
    signal: str  # "nonfinite_loss" | "nonfinite_grad" | "loss_spike" | "grad_spike"
    value: float
    threshold: float
    action: str

    def as_record(self) -> dict:
        return {"kind": "instability", "step": self.step, "signal": self.signal, "value": self.value,
                "threshold": self.threshold, "action": self.action}


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else 0.5 * (ordered[mid - 1] + ordered[mid])


class InstabilityDetector:
    def __init__(self, cfg: InstabilityConfig) -> None:
        self.cfg = cfg
        self.losses: deque[float] = deque(maxlen=cfg.window)
        self.grad_norms: deque[float] = deque(maxlen=cfg.window)
        self.events = 0

    @property
    def warmed_up(self) -> bool:
        return len(self.losses) >= min(self.cfg.window, 10)

    def check(self, step: int, loss: float, grad_norm: float) -> InstabilityEvent | None:
        """Return an event for a bad step, or record a good one and return None."""
        if not self.cfg.enabled:
            return None
        event = None
        if not math.isfinite(loss):
            event = ("nonfinite_loss", loss, float("nan"))
        elif not math.isfinite(grad_norm):
            event = ("nonfinite_grad", grad_norm, float("nan"))
        elif self.warmed_up:
            losses = list(self.losses)
            median = _median(losses)
            spread = max(MAD_TO_SIGMA * _median([abs(x - median) for x in losses]), 1e-3 * abs(median), 1e-8)
            z = (loss - median) / spread
            if z > self.cfg.loss_z:
                event = ("loss_spike", loss, median + self.cfg.loss_z * spread)
            grad_limit = self.cfg.grad_factor * _median(list(self.grad_norms))
            if event is None and grad_norm > grad_limit:
                event = ("grad_spike", grad_norm, grad_limit)
        if event is None:
            self.losses.append(loss)
            self.grad_norms.append(grad_norm)
            return None
        self.events += 1
        action = "abort" if self.events > self.cfg.max_events else self.cfg.action
        return InstabilityEvent(step, event[0], float(event[1]), float(event[2]), action)

    def state_dict(self) -> dict:
        return {"losses": list(self.losses), "grad_norms": list(self.grad_norms), "events": self.events}

    def load_state_dict(self, state: dict) -> None:
        self.losses.extend(state["losses"])
        self.grad_norms.extend(state["grad_norms"])
        self.events = state["events"]
