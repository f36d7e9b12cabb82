"""Judge every step and make sure no bad update stands: skip it, or roll back to a good snapshot.

The trainer calls four methods: `before_step` (remember the data position, take a pending
snapshot when one is due), `after_step` (judge the step; on an event decide and act, before the
update is applied), `planned_change` (an expert switch: judge the last update, make the change,
start a new history) and `finish` (judge the very last update before the final checkpoint).

Deciding between skip and rollback. A flagged step has two possible causes: its batch (a NaN,
noise, an outlier) or its weights (an earlier update that went wrong; an LR spike shows only in
the *next* step's loss). The guard replays the last healthy batch under the current weights with
no gradient: if that loss is still close to what it was, the weights are fine and skipping this
step's update is enough; if not, or if any parameter is NaN/Inf, the weights are restored from
the newest good snapshot that passes the same test. With ``train.optimizer_in_backward`` the
update has happened by the time the step is judged, so every event restores a snapshot (the one
taken at this very step when there is one: then nothing but the bad step is lost).

Cost: nothing per step beyond the detector's arithmetic on the two numbers the trainer already
synced. Snapshots cost what `snapshots.py` says. Each planned change and the end of the run add
one forward pass without gradient and one host sync; an event adds one per candidate weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .config import RunConfig
from .distributed import DistInfo, mean_across_ranks
from .instability import Anomaly, InstabilityDetector, InstabilityEvent, TrainingAborted
from .metrics import NullMetrics
from .schedule import lr_multiplier
from .setup import RunParts
from .snapshots import Snapshot, SnapshotStore, all_finite

LR_JUMP = 1.5  # the LR multiplier rising by more than this factor between steps is a planned change


class InstabilityGuard:
    def __init__(self, cfg: RunConfig, parts: RunParts, dist: DistInfo, *, loss_fn: Callable, log=print) -> None:
        self.cfg, self.icfg, self.parts, self.dist = cfg, cfg.instability, parts, dist
        self.loss_fn, self.log = loss_fn, log
        self.detector = InstabilityDetector(cfg.instability)
        self.snapshots = SnapshotStore(parts.model, parts.optimizer, every=cfg.instability.snapshot_every)
        self.metrics = NullMetrics()
        self.events: list[InstabilityEvent] = []
        self.lr_cut_until = -1
        self._last_multiplier: float | None = None
        self._data_before_step: dict | None = None
        self._reference: tuple[dict, float] | None = None  # data position before the last healthy step, and its loss
        self._resumed = False

    @property
    def enabled(self) -> bool:
        return self.icfg.enabled

    @property
    def clipping_bounds_spikes(self) -> bool:
        """A gradient spike alone is harmless when the update is clipped (and no strict abort was asked for)."""
        return self.cfg.train.grad_clip > 0 and not self.in_backward and self.icfg.action != "abort"

    @property
    def data_before_step(self) -> dict | None:
        """The data position the current step's batch was drawn from (noted by `before_step`)."""
        return self._data_before_step

    @property
    def in_backward(self) -> bool:
        return self.cfg.train.optimizer_in_backward

    def begin(self, metrics, step: int) -> None:
        """Where event records go (metrics.jsonl on rank 0); a resume is recorded as a planned change."""
        self.metrics = metrics
        if self._resumed and self.enabled:
            self.metrics.write({"kind": "instability_rebase", "step": step, "reason": "resume"})
        self._resumed = False

    # every step -------------------------------------------------------------------------------
    def before_step(self, step: int) -> None:
        """Note the data position; take a pending snapshot when one is due.

        Judged late, the previous step's verdict is still on its way here: the snapshot is taken
        anyway (waiting for it would drain the GPU) and gets the detector's history and reference,
        which describe these weights, once that verdict is in (`after_step`, `_respond`). A verdict
        that rolls back discards it; a skipped update left these weights as they were, so it stays.
        """
        if not self.enabled:
            return
        self._data_before_step = self.parts.train_data.state_dict()
        if self.snapshots.due(step):
            self.snapshots.capture(step, self._detector_state())

    def _detector_state(self) -> dict:
        return {"history": self.detector.history(), "reference": self._reference}

    def _snapshot_after(self, step: int) -> Snapshot | None:
        """The pending snapshot if it was taken after ``step``'s update (judged late: see `before_step`)."""
        pending = self.snapshots.pending
        return pending if pending is not None and pending.step > step else None

    def device_gate(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> torch.Tensor:
        """A device float, 1.0 when `after_step` will flag this step, computed without a host read (detection on).

        The same tests as `InstabilityDetector.check` (and the pending snapshot's finiteness), in
        float64 against the same limits, so the device and the later host judgment always agree.
        """
        loss, grad_norm = loss.double(), grad_norm.double()
        bad = ~torch.isfinite(loss) | ~torch.isfinite(grad_norm) | (loss > self.detector.loss_limit())
        if not self.clipping_bounds_spikes:
            bad = bad | (grad_norm > self.detector.grad_limit())
        pending = self.snapshots.pending
        if pending is not None and pending.finite is not None:
            bad = bad | ~pending.finite.to(bad.device)
        return bad.float()

    def after_step(self, step: int, loss: float, grad_norm: float, data_before: dict | None = None) -> InstabilityEvent | None:
        """None for a healthy step (its update may be applied), else the event (it may not).

        ``data_before`` is the data position the step drew its batch from, when the step is judged
        after the next one began (see `late_judging.py`); by default the one `before_step` noted.
        """
        if not self.enabled:
            return None
        if data_before is None:
            data_before = self._data_before_step
        later = self._snapshot_after(step)
        pending = None if later is not None else self.snapshots.pending  # a later one holds other weights
        anomaly = None
        if pending is not None and not pending.is_finite():
            anomaly = Anomaly("nonfinite_params", math.nan, math.nan)
        anomaly = anomaly or self.detector.check(loss, grad_norm)
        if anomaly is not None and anomaly.signal == "grad_spike" and self.clipping_bounds_spikes:
            # Clipping already bounds this update, and the loss is fine. Skipping it would stall a run whose
            # gradients legitimately jumped (the same weights give the same large gradients on every next
            # batch: skip after skip, then an abort), so it is applied, recorded, and joins the history.
            self._record(InstabilityEvent(step, anomaly.signal, anomaly.value, anomaly.threshold, "clipped"))
            anomaly = None
        if anomaly is None:
            self.snapshots.warm_up()  # from the first step with optimizer state on: pins snapshot buffers off the step
            self.detector.accept(loss, grad_norm)
            self._reference = (data_before, loss)
            if later is not None:  # taken before this verdict came: now it is known
                later.extra.update(self._detector_state())
            self.snapshots.promote(step)
            return None
        return self._respond(step, anomaly, pending)

    def scheduled_multiplier(self, step: int) -> float:
        """The schedule's multiplier times any LR cut, with no side effect."""
        multiplier = lr_multiplier(step, self.cfg.train)
        if step < self.lr_cut_until:
            multiplier *= self.icfg.lr_cut_factor
        return multiplier

    def lr_multiplier(self, step: int) -> float:
        """`scheduled_multiplier`; called once per step after the step is judged, since a jump up
        (a cut ending) starts a new history, which must not hold the step that led to it."""
        multiplier = self.scheduled_multiplier(step)
        last, self._last_multiplier = self._last_multiplier, multiplier
        if self.enabled and last is not None and step >= self.cfg.train.warmup_steps and multiplier > LR_JUMP * last:
            self.rebase(step, "lr_jump")
        return multiplier

    # planned changes ----------------------------------------------------------------------------
    def planned_change(self, step: int, change: Callable[[], object], reason: str = "expert_switch"):
        """Judge the last update before ``change`` carries it elsewhere (an expert switch spreads it to the others)."""
        if self.enabled:
            self._judge_last_update(step)
        self.snapshots.fence()  # the change writes weights that a snapshot may still be copying
        result = change()
        if self.enabled:
            self.rebase(step, reason)
        return result

    def finish(self, step: int) -> None:
        """The last update has no next step to judge it: do it here, before the final checkpoint."""
        if self.enabled:
            self._judge_last_update(step)

    def rebase(self, step: int, reason: str) -> None:
        """A new stretch of training: new history, and snapshots of the old stretch no longer apply."""
        self.detector.rebase()
        self.snapshots.clear()
        self._reference = None
        self.metrics.write({"kind": "instability_rebase", "step": step, "reason": reason})

    def _judge_last_update(self, step: int) -> None:
        if self._reference is None:
            return
        ok, value, limit = self._weights_ok()
        if not ok:
            self._respond(step, Anomaly("bad_update", value, limit), None, diagnosis="weights")

    # deciding and acting ------------------------------------------------------------------------
    def _respond(self, step: int, anomaly: Anomaly, pending: Snapshot | None, diagnosis: str = "") -> InstabilityEvent:
        later = self._snapshot_after(step)
        if later is None:  # this step's own weights (or older): never good now
            self.snapshots.discard_pending()
        self.detector.first_step_flagged()
        recent = self.detector.count_event(step)
        if self.icfg.action == "abort" or recent > self.icfg.max_events:
            event = InstabilityEvent(step, anomaly.signal, anomaly.value, anomaly.threshold, "abort", diagnosis)
            self._record(event)
            why = "" if self.icfg.action == "abort" else f" ({recent} events within {self.icfg.window} steps)"
            raise TrainingAborted(f"stopped at step {step}{why}; last: {anomaly.signal} = {anomaly.value:.4g}")
        if not diagnosis:
            diagnosis = self._diagnose(anomaly)
        restored = None
        if self.in_backward or diagnosis == "weights" or self.icfg.action == "rollback":
            candidates = [pending] if self.in_backward and pending is not None and pending.step == step else []
            restored = self._roll_back(candidates + self.snapshots.good[::-1])
        action = "rollback" if restored is not None else "skip"
        if self.icfg.action == "lr_cut":
            action, self.lr_cut_until = "lr_cut", step + 1 + self.icfg.lr_cut_steps
        event = InstabilityEvent(step, anomaly.signal, anomaly.value, anomaly.threshold, action, diagnosis, restored)
        self._record(event)
        if later is not None:  # taken after this step's update, which the device gate skipped (see `before_step`)
            if restored is not None:
                self.snapshots.discard_pending()  # of weights just replaced: the trainer redoes that step
            else:
                later.extra.update(self._detector_state())  # the weights are this step's own, so they stay
        return event

    def _diagnose(self, anomaly: Anomaly) -> str:
        """'batch' when the weights this step ran with are fine, 'weights' when they are not."""
        if anomaly.signal == "nonfinite_params" or self.in_backward:
            return "weights"  # in-backward: the update is in the weights already, whatever caused it
        return "batch" if self._weights_ok()[0] else "weights"

    def _roll_back(self, candidates: list[Snapshot]) -> int | None:
        """Restore the newest candidate whose weights pass the replay test; None when there is none."""
        failed = []
        for snap in candidates:
            self._restore(snap)
            if self._weights_ok()[0]:
                for bad in failed:  # a good snapshot that fails now was damaged too late to be seen: never again
                    if bad in self.snapshots.good:
                        self.snapshots.forget(bad)
                return snap.step
            self.log(f"instability: the weights of step {snap.step} fail the replay test too; trying an older snapshot")
            failed.append(snap)
        if candidates:  # none passed: the test may be too strict early in training; take the newest and go on
            self._restore(candidates[0])
            return candidates[0].step
        self.log("instability: no snapshot to roll back to (instability.snapshot_every is 0 or none was good yet)")
        return None

    def _restore(self, snap: Snapshot) -> None:
        """Weights, optimizer state, and the history of losses those weights had: the loss level goes back with them."""
        self.snapshots.restore(snap)
        if snap.extra:
            self.detector.set_history(snap.extra["history"])
            self._reference = snap.extra["reference"]

    def _weights_ok(self) -> tuple[bool, float, float]:
        """(ok, replayed loss, limit): parameters finite and the last healthy batch still scores as it did."""
        params = [p for p in self.parts.model.parameters()]
        if not bool(all_finite(params)):
            return False, math.nan, math.nan
        if self._reference is None:
            return True, math.nan, math.nan
        data_state, reference_loss = self._reference
        replayed = self._replay(data_state)
        limit = reference_loss + self.icfg.loss_z * self.detector.loss_spread()
        return math.isfinite(replayed) and replayed <= limit, replayed, limit

    @torch.no_grad()
    def _replay(self, data_state: dict) -> float:
        """The loss of the batch drawn from ``data_state``, under the current weights, without gradient or dropout."""
        p, accum = self.parts, self.cfg.train.grad_accum
        now = p.train_data.state_dict()
        p.train_data.load_state_dict(data_state)
        p.model.eval()
        total = 0.0
        try:
            for _ in range(accum):
                x, y = p.train_data.next_batch()
                total += self.loss_fn(x.to(p.device), y.to(p.device)).item() / accum
        finally:
            p.model.train()
            p.train_data.load_state_dict(now)
        return mean_across_ranks(total, self.dist, p.device)

    def _record(self, event: InstabilityEvent) -> None:
        self.events.append(event)
        self.metrics.write(event.as_record())
        restored = f" (restored step {event.restored_step})" if event.restored_step is not None else ""
        self.log(f"instability at step {event.step}: {event.signal} = {event.value:.4g} (threshold {event.threshold:.4g}), "
                 f"{event.diagnosis or 'no diagnosis'} -> {event.action}{restored}")

    # checkpoints ----------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return self.detector.state_dict()

    def load_state_dict(self, state: dict, *, lr_cut_until: int = -1) -> None:
        """A resume: events and the LR cut carry over; the history starts afresh (settings may have changed)."""
        self.detector.load_state_dict(state)
        self.lr_cut_until = lr_cut_until
        self.detector.rebase()
        self._reference = None
        self._resumed = True
