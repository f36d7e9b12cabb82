"""Spot a training step that went wrong before it poisons the weights.

Signals: a non-finite loss or gradient norm; a loss far above its recent history (robust
z-score: distance from the running median in units of the median absolute deviation); a
gradient norm many times its running median. Only healthy steps enter the history, so one spike
does not raise the bar for the next.

The history describes one stretch of training. A planned change (an expert switch, an LR jump,
a resume) starts a new stretch whose losses need not look like the old ones: a fresh expert
starts a nat above the trained one, and judging it by the old median would flag every step.
`rebase` therefore empties the history and keeps only the old level as a *prior*. Until `warmup`
healthy steps have been seen again, only gross failures count: non-finite values, a loss
loss_z * 5% above the highest loss of the new stretch (30% with the default loss_z), a gradient
norm grad_factor times its highest. The first step after the change has no stretch of its own
yet and is held against the prior: 30% above the old loss level, grad_factor squared times the
old gradient norm (a fresh expert's gradients are legitimately several times larger). When that
first step is flagged anyway, the prior is dropped, so a new stretch that really starts higher
costs one skipped update and never a run of them. Enough to catch a NaN or an exploding update,
never enough to flag a model that is merely worse than the previous one.

The detector only reads the loss and gradient norm that the trainer already brought to the host,
so it adds no device synchronisation to a step.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import asdict, dataclass

from .config import InstabilityConfig

MAD_TO_SIGMA = 1.4826  # MAD of a normal distribution times this is its standard deviation
MIN_RELATIVE_SPREAD = 0.01  # a very steady loss still wobbles by ~1%: never demand tighter than that
WARMUP_RELATIVE_SPREAD = 0.05  # before the history is warm, a "sigma" is 5% of the loss (loss_z 6: 30% above)


class TrainingAborted(RuntimeError):
    """Too many instability events: the run stops with a report instead of training on garbage."""


@dataclass(frozen=True)
class Anomaly:
    """What looked wrong about a step, before anyone decided what to do about it."""

    signal: str  # "nonfinite_loss" | "nonfinite_grad" | "nonfinite_params" | "loss_spike" | "grad_spike" | "bad_update"
    value: float
    threshold: float


@dataclass(frozen=True)
class InstabilityEvent:
    """One handled event, as written to metrics.jsonl.

    ``action`` is what was done: ``skip`` (the step's update was not applied), ``rollback`` (the
    weights and optimizer state of snapshot ``restored_step`` were restored), ``lr_cut`` (skipped,
    and the LR is cut for ``instability.lr_cut_steps`` steps), ``clipped`` (a gradient spike with a
    normal loss under gradient clipping: the clipped update was applied, the event only recorded)
    or ``abort``. ``diagnosis`` says
    why: ``batch`` (the weights still do fine on the last healthy batch, so the batch was bad) or
    ``weights`` (they do not, or hold NaN/Inf, so the damage happened in an earlier update).
    """

    step: int
    signal: str
    value: float
    threshold: float
    action: str
    diagnosis: str = ""
    restored_step: int | None = None

    def as_record(self) -> dict:
        return {"kind": "instability", **asdict(self)}


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else 0.5 * (ordered[mid - 1] + ordered[mid])


class InstabilityDetector:
    """Robust running statistics of healthy steps and the tests a new step must pass."""

    def __init__(self, cfg: InstabilityConfig) -> None:
        self.cfg = cfg
        self.losses: deque[float] = deque(maxlen=cfg.window)
        self.grad_norms: deque[float] = deque(maxlen=cfg.window)
        self.event_steps: deque[int] = deque()
        self.prior: tuple[float, float] | None = None  # (loss, grad norm) level before the last planned change

    @property
    def warmed_up(self) -> bool:
        return len(self.losses) >= min(self.cfg.warmup, self.cfg.window)

    def loss_spread(self) -> float:
        """One robust standard deviation of the loss: MAD-based once warm, a fraction of the loss before."""
        losses = list(self.losses)
        if not self.warmed_up:
            return WARMUP_RELATIVE_SPREAD * abs(max(losses, default=0.0)) + 1e-8
        median = _median(losses)
        mad = _median([abs(x - median) for x in losses])
        return max(MAD_TO_SIGMA * mad, MIN_RELATIVE_SPREAD * abs(median), 1e-8)

    def _levels(self) -> tuple[float, float]:
        if self.warmed_up:
            return _median(list(self.losses)), _median(list(self.grad_norms))
        return max(self.losses), max(self.grad_norms)

    def loss_limit(self) -> float:
        """The highest loss a healthy step may have now (infinite with neither history nor prior)."""
        if not self.losses:
            return self.prior[0] * (1 + self.cfg.loss_z * WARMUP_RELATIVE_SPREAD) if self.prior else math.inf
        reference = _median(list(self.losses)) if self.warmed_up else max(self.losses)
        return reference + self.cfg.loss_z * self.loss_spread()

    def grad_limit(self) -> float:
        if not self.grad_norms:
            return self.prior[1] * self.cfg.grad_factor**2 if self.prior else math.inf
        reference = _median(list(self.grad_norms)) if self.warmed_up else max(self.grad_norms)
        return self.cfg.grad_factor * reference

    def check(self, loss: float, grad_norm: float) -> Anomaly | None:
        """What is wrong with a step, or None; the history is not touched (see `accept`)."""
        if not math.isfinite(loss):
            return Anomaly("nonfinite_loss", loss, math.nan)
        if not math.isfinite(grad_norm):
            return Anomaly("nonfinite_grad", grad_norm, math.nan)
        if loss > (limit := self.loss_limit()):
            return Anomaly("loss_spike", loss, limit)
        if grad_norm > (limit := self.grad_limit()):
            return Anomaly("grad_spike", grad_norm, limit)
        return None

    def accept(self, loss: float, grad_norm: float) -> None:
        """Add a healthy step to the history."""
        self.losses.append(loss)
        self.grad_norms.append(grad_norm)

    def history(self) -> tuple[list[float], list[float]]:
        """The healthy losses and gradient norms, to be put back with the weights they describe."""
        return list(self.losses), list(self.grad_norms)

    def set_history(self, history: tuple[list[float], list[float]]) -> None:
        self.losses.clear()
        self.grad_norms.clear()
        self.losses.extend(history[0])
        self.grad_norms.extend(history[1])

    def rebase(self) -> None:
        """Forget the history: what follows a planned change is judged on its own terms (and the old level)."""
        if self.losses:
            self.prior = self._levels()
        self.losses.clear()
        self.grad_norms.clear()

    def first_step_flagged(self) -> None:
        """The first step after a change was flagged: the next one sets the level, whatever the old one was."""
        if not self.losses:
            self.prior = None

    def count_event(self, step: int) -> int:
        """Record an event; return how many fell within the last `window` steps, this one included."""
        self.event_steps.append(step)
        while self.event_steps and self.event_steps[0] <= step - self.cfg.window:
            self.event_steps.popleft()
        return len(self.event_steps)

    def state_dict(self) -> dict:
        return {"losses": list(self.losses), "grad_norms": list(self.grad_norms), "event_steps": list(self.event_steps)}

    def load_state_dict(self, state: dict) -> None:
        """Also reads checkpoints written before events were kept by step (their count is dropped)."""
        self.set_history((state["losses"], state["grad_norms"]))
        self.event_steps = deque(state.get("event_steps", []))
