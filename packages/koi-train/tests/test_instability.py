"""The detector's statistics, the guard's decisions and the actions, one at a time.

The full matrix of faults x positions x kinds of run is in test_fault_injection.py.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import tiny_config
from faults import inject

from koi_train import Trainer, TrainingAborted, load_dict
from koi_train.config import InstabilityConfig
from koi_train.instability import InstabilityDetector

STEPS = 40


def _records(run_dir, kind="instability"):
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


def _trainer(prepared, tmp_path, name, **instability):
    raw = tiny_config(prepared, tmp_path, train={"steps": STEPS, "log_every": 1}, eval={"every": 0, "max_windows": 40},
                      instability={"window": 10, "warmup": 5, "snapshot_every": 8, **instability})
    return Trainer(load_dict(raw), tmp_path / name, log=lambda *_: None)


def _steady(detector, steps=20, start=0):
    for step in range(start, start + steps):
        loss = 3.0 - 0.01 * step + 0.02 * (step % 3)
        assert detector.check(loss, 1.0) is None, step
        detector.accept(loss, 1.0)


def test_spikes_are_flagged_and_not_learned():
    detector = InstabilityDetector(InstabilityConfig(window=10, warmup=5))
    _steady(detector)
    spike = detector.check(9.0, 1.0)
    assert spike.signal == "loss_spike" and spike.value == 9.0 and 2.8 < spike.threshold < 3.5
    assert detector.check(2.8, 50.0).signal == "grad_spike"
    assert detector.check(math.nan, 1.0).signal == "nonfinite_loss"
    assert detector.check(2.8, math.inf).signal == "nonfinite_grad"
    assert detector.check(2.8, 1.0) is None  # check() is pure: none of the spikes entered the history


def test_warm_up_flags_only_gross_failures():
    detector = InstabilityDetector(InstabilityConfig(window=10, warmup=5))
    assert detector.check(6.2, 3.0) is None  # nothing to compare with: the first step sets the level
    detector.accept(6.2, 3.0)
    assert detector.check(7.5, 3.0) is None  # 21% above the highest so far: fine while warming up
    assert detector.check(8.5, 3.0).signal == "loss_spike"  # 37%: gross
    assert detector.check(6.0, 40.0).signal == "grad_spike"


def test_rebase_after_a_planned_change_judges_the_new_level_on_its_own():
    """The issue's mixture run: the fresh expert starts a nat above the trained one; no step of it is flagged."""
    detector = InstabilityDetector(InstabilityConfig(window=10, warmup=5))
    for step in range(30):
        detector.accept(5.05 + 0.01 * (step % 3), 0.6)
    assert detector.check(6.01, 3.0).signal == "loss_spike"  # without a rebase: flagged, every step
    detector.rebase()
    for step in range(20):  # the fresh expert: higher loss, falling, larger gradients
        loss = 6.01 - 0.03 * step
        assert detector.check(loss, 3.0 - 0.1 * step) is None, step
        detector.accept(loss, 3.0 - 0.1 * step)
    detector.rebase()
    assert detector.check(50.0, 1.0).signal == "loss_spike"  # the first step after a change still meets the old level
    detector.first_step_flagged()
    assert detector.check(9.0, 1.0) is None  # ...once: a new stretch that really starts higher is accepted next


def test_events_are_counted_within_the_window():
    detector = InstabilityDetector(InstabilityConfig(window=10))
    assert [detector.count_event(s) for s in (5, 6, 7)] == [1, 2, 3]
    assert detector.count_event(16) == 2  # 5 and 6 fell out of the window; 7 and 16 remain


@pytest.mark.parametrize("kind", ["nan_batch", "loss_spike"])
def test_a_bad_batch_is_skipped_and_nothing_else_changes(prepared, tmp_path, kind):
    trainer = _trainer(prepared, tmp_path, kind)
    inject(trainer, kind, 23)
    trainer.fit()
    [event] = _records(tmp_path / kind)
    assert (event["step"], event["action"], event["diagnosis"], event["restored_step"]) == (23, "skip", "batch", None)
    assert all(torch.isfinite(p).all() for p in trainer.parts.model.parameters())


def test_an_lr_spike_one_step_before_a_snapshot_is_never_restored(prepared, tmp_path):
    """The issue's case: update 23 is bad, the snapshot of step 24 holds it; rollback must go to 16."""
    trainer = _trainer(prepared, tmp_path, "bomb")
    inject(trainer, "lr_spike", 23)
    trainer.fit()
    [event] = _records(tmp_path / "bomb")
    assert (event["step"], event["action"], event["diagnosis"], event["restored_step"]) == (24, "rollback", "weights", 16)


def test_nonfinite_parameters_are_caught_at_a_snapshot(prepared, tmp_path):
    """A NaN in a row the loss never reads (an unused embedding) is still found, when the next snapshot is taken."""
    trainer = _trainer(prepared, tmp_path, "param")
    original = trainer.train_step

    def poison_then_step():
        if trainer.step == 21:
            with torch.no_grad():
                trainer.parts.model.transformer.wpe.weight[-1] = math.nan  # position 31: never used with 16-token batches
        return original()

    trainer.train_step = poison_then_step
    trainer.parts.train_data.block_size = 16  # shorter windows leave the last positions unread
    trainer.fit()
    events = _records(tmp_path / "param")
    assert [(e["step"], e["signal"], e["action"], e["restored_step"]) for e in events] == [(24, "nonfinite_params", "rollback", 16)]
    assert all(torch.isfinite(p).all() for p in trainer.parts.model.parameters())


def test_without_detection_the_nan_ruins_the_run(prepared, tmp_path):
    trainer = _trainer(prepared, tmp_path, "off", enabled=False)
    inject(trainer, "nan_batch", 20)
    trainer.fit()
    assert not all(torch.isfinite(p).all() for p in trainer.parts.model.parameters())


def test_abort_when_events_keep_coming(prepared, tmp_path):
    trainer = _trainer(prepared, tmp_path, "abort", max_events=2)
    original_loss = trainer.compute_loss
    trainer.compute_loss = lambda x, y: original_loss(x, y) * (math.nan if trainer.step >= 30 else 1.0)
    with pytest.raises(TrainingAborted, match="3 events within 10 steps"):
        trainer.fit()
    assert [r["action"] for r in _records(tmp_path / "abort")][-1] == "abort"
    assert len(_records(tmp_path / "abort")) == 3


def test_abort_action_stops_at_the_first_event(prepared, tmp_path):
    trainer = _trainer(prepared, tmp_path, "first", action="abort")
    inject(trainer, "nan_batch", 12)
    with pytest.raises(TrainingAborted, match="stopped at step 12"):
        trainer.fit()
    assert [(r["step"], r["action"]) for r in _records(tmp_path / "first")] == [(12, "abort")]


def test_lr_cut_skips_then_lowers_the_rate_for_k_steps(prepared, tmp_path):
    from koi_train.schedule import lr_multiplier

    trainer = _trainer(prepared, tmp_path, "cut", action="lr_cut", lr_cut_factor=0.25, lr_cut_steps=5)
    inject(trainer, "nan_batch", 20)
    trainer.fit()
    assert [(r["step"], r["action"]) for r in _records(tmp_path / "cut")] == [(20, "lr_cut")]
    lrs = {r["step"]: r["lr"] for r in _records(tmp_path / "cut", "train")}
    peak = trainer.cfg.train.lr
    # the record of step s shows the lr of update s-1 (0-based); updates 21..25 run at a quarter of the schedule
    for step in range(22, 27):
        assert math.isclose(lrs[step], 0.25 * peak * lr_multiplier(step - 1, trainer.cfg.train), rel_tol=1e-9)
    assert math.isclose(lrs[28], peak * lr_multiplier(27, trainer.cfg.train), rel_tol=1e-9)
    rebases = _records(tmp_path / "cut", "instability_rebase")
    assert [(r["step"], r["reason"]) for r in rebases] == [(26, "lr_jump")]  # the LR doubling back is a planned change


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the side-stream copy exists on CUDA only")
def test_a_snapshot_copied_on_the_side_stream_holds_the_weights_of_its_capture():
    """The copy runs beside the compute stream; a write fenced behind it must not leak into the snapshot."""
    from koi_train.optimizer_set import OptimizerSet
    from koi_train.snapshots import SnapshotStore

    model = torch.nn.Linear(4096, 4096, device="cuda")  # 64 MB: a copy long enough for a race to show
    optimizer = OptimizerSet([torch.optim.AdamW(model.parameters())])
    model(torch.randn(2, 4096, device="cuda")).sum().backward()
    optimizer.step()
    store = SnapshotStore(model, optimizer, every=1)
    for step in range(3):
        before = model.weight.detach().clone()
        moment = optimizer.optimizers[0].state[model.weight]["exp_avg"].clone()
        snap = store.capture(step)
        store.fence()
        with torch.no_grad():  # what the optimizer step would do next, as soon as the compute stream may
            model.weight.add_(1.0)
            optimizer.optimizers[0].state[model.weight]["exp_avg"].mul_(0.0)
        torch.cuda.synchronize()
        assert torch.equal(snap.model["weight"], before.cpu()), step
        assert torch.equal(snap.optimizer[0]["exp_avg"], moment.cpu()), step
        store.promote(step)
    store.restore(snap)
    torch.testing.assert_close(model.weight.detach(), before)


def test_snapshot_buffers_are_pinned_ahead_and_reused_by_later_captures():
    """Pinning host memory inside a step would stall it: the buffers come from a background thread, then get reused."""
    from koi_train.optimizer_set import OptimizerSet
    from koi_train.snapshots import SnapshotStore

    model = torch.nn.Linear(8, 8)
    optimizer = OptimizerSet([torch.optim.AdamW(model.parameters())])
    store = SnapshotStore(model, optimizer, every=1)
    store.capture(0)
    store.promote(0)
    store.warm_up()
    assert store._allocator is None  # no optimizer state yet: nothing to size the buffers by
    model(torch.randn(2, 8)).sum().backward()
    optimizer.step()
    store.warm_up()
    store._allocator.join()
    buffers = {id(t) for spare in store._spares for part in (spare.model, *spare.optimizer) for t in part.values()}
    assert len(store._spares) == 3 and len(buffers) == 3 * (2 + 2 * 3)  # weight, bias; step, exp_avg, exp_avg_sq each
    for step in range(1, 6):
        snap = store.capture(step)
        store.promote(step)
        held = [snap.model[n] for n in snap.model] + [t for s in snap.optimizer for t in s.values() if torch.is_tensor(t)]
        assert all(id(t) in buffers for t in held), step  # no allocation in the step
        torch.testing.assert_close(snap.model["weight"], model.weight.detach())


def test_nonfinite_values_are_found_on_the_host_and_on_the_accelerator_alike():
    """AdamW's foreach ``step`` stays on the host beside weights on the GPU; one verdict covers both."""
    from koi_train.snapshots import all_finite

    device = "cuda" if torch.cuda.is_available() else "cpu"
    weights, step = torch.ones(4, device=device), torch.tensor(3.0)
    assert bool(all_finite([weights, step])) and all_finite([weights, step]).device == weights.device
    assert not bool(all_finite([weights, torch.tensor(float("nan"))]))
    assert not bool(all_finite([torch.full((4,), float("inf"), device=device), step]))
    assert not bool(all_finite([weights, torch.full((2,), float("nan"), dtype=torch.float8_e4m3fn), step]))


def test_a_pending_snapshot_waits_for_its_own_steps_verdict():
    """Judged late, step s-1's verdict can arrive after step s's capture: it must not vouch for s's weights,
    and no second capture may start before s is judged (the trainer then need not drain the GPU for it)."""
    from koi_train.optimizer_set import OptimizerSet
    from koi_train.snapshots import SnapshotStore

    model = torch.nn.Linear(8, 8)
    store = SnapshotStore(model, OptimizerSet([torch.optim.AdamW(model.parameters())]), every=10)
    assert store.due(0)
    store.capture(0)
    assert not store.due(1) and not store.due(50)  # pending: judged first
    store.promote(0)
    assert [s.step for s in store.good] == [0] and not store.due(9) and store.due(10)
    store.capture(10)
    store.promote(9)  # the previous step's verdict
    assert store.pending is not None and [s.step for s in store.good] == [0]
    store.promote(10)
    assert store.pending is None and [s.step for s in store.good] == [0, 10]
