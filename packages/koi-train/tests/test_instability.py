"""Injected failures (a NaN, a poisoned batch, an LR bomb) are caught and the run recovers."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import tiny_config

from koi_train import Trainer, TrainingAborted, load_dict
from koi_train.config import InstabilityConfig
from koi_train.instability import InstabilityDetector

STEPS = 60


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _final_val(run_dir):
    return next(r for r in reversed(_records(run_dir)) if r["kind"] == "eval")["val_loss"]


def _trainer(prepared, tmp_path, name, **instability):
    raw = tiny_config(prepared, tmp_path, train={"steps": STEPS, "log_every": 1}, eval={"every": 0, "max_windows": 40},
                      instability={"window": 20, **instability})
    return Trainer(load_dict(raw), tmp_path / name, log=lambda *_: None)


@pytest.fixture(scope="module")
def clean_val(prepared, tmp_path_factory):
    root = tmp_path_factory.mktemp("clean")
    _trainer(prepared, root, "clean").fit()
    return _final_val(root / "clean")


def _poison_step(trainer, step, kind):
    """Wrap the trainer so that optimizer step ``step`` sees the injected failure."""
    original_batch, original_loss = trainer.parts.train_data.next_batch, trainer.compute_loss

    def next_batch():
        x, y = original_batch()
        if kind == "poisoned_batch" and trainer.step == step:
            g = torch.Generator().manual_seed(0)
            y = torch.randint(0, 512, y.shape, generator=g)  # targets that are pure noise
            x = torch.randint(0, 512, x.shape, generator=g)
        return x, y

    def compute_loss(x, y):
        loss = original_loss(x, y)
        if kind == "nan" and trainer.step == step:
            loss = loss * float("nan")
        return loss

    trainer.parts.train_data.next_batch = next_batch
    trainer.compute_loss = compute_loss


@pytest.mark.parametrize("kind,action", [("nan", "skip"), ("poisoned_batch", "skip"), ("poisoned_batch", "rollback")])
def test_injected_failure_is_caught_and_run_recovers(prepared, tmp_path, clean_val, kind, action):
    trainer = _trainer(prepared, tmp_path, f"{kind}-{action}", action=action)
    _poison_step(trainer, 40, kind)
    trainer.fit()
    events = [r for r in _records(tmp_path / f"{kind}-{action}") if r["kind"] == "instability"]
    assert [e["step"] for e in events] == [40]
    assert events[0]["signal"] == ("nonfinite_loss" if kind == "nan" else "loss_spike")
    assert events[0]["action"] == action and math.isfinite(events[0]["threshold"]) == (kind != "nan")
    assert all(torch.isfinite(p).all() for p in trainer.parts.model.parameters())
    assert abs(_final_val(tmp_path / f"{kind}-{action}") - clean_val) < 0.05


def test_lr_bomb_is_rolled_back(prepared, tmp_path, clean_val):
    trainer = _trainer(prepared, tmp_path, "bomb", action="rollback")
    original = trainer._apply_update

    def bomb(event):
        if trainer.step == 40:
            for opt in trainer.parts.optimizer.optimizers:
                for group in opt.param_groups:
                    group["base_lr"] *= 3000
            original(event)
            for opt in trainer.parts.optimizer.optimizers:
                for group in opt.param_groups:
                    group["base_lr"] /= 3000
        else:
            original(event)

    trainer._apply_update = bomb
    trainer.fit()
    events = [r for r in _records(tmp_path / "bomb") if r["kind"] == "instability"]
    assert events and events[0]["step"] == 41 and events[0]["action"] == "rollback"
    assert abs(_final_val(tmp_path / "bomb") - clean_val) < 0.1


def test_without_detection_the_nan_ruins_the_run(prepared, tmp_path):
    trainer = _trainer(prepared, tmp_path, "off", enabled=False)
    _poison_step(trainer, 40, "nan")
    trainer.fit()
    assert not all(torch.isfinite(p).all() for p in trainer.parts.model.parameters())


def test_abort_after_max_events(prepared, tmp_path):
    trainer = _trainer(prepared, tmp_path, "abort", action="skip", max_events=2)
    original_loss = trainer.compute_loss
    trainer.compute_loss = lambda x, y: original_loss(x, y) * (float("nan") if trainer.step >= 30 else 1.0)
    with pytest.raises(TrainingAborted, match="3 instability events"):
        trainer.fit()
    actions = [r["action"] for r in _records(tmp_path / "abort") if r["kind"] == "instability"]
    assert actions == ["skip", "skip", "abort"]


def test_lr_cut_lowers_the_rate_for_k_steps():
    detector = InstabilityDetector(InstabilityConfig(window=10, action="lr_cut"))
    for step in range(20):
        assert detector.check(step, 3.0 - 0.01 * step + 0.002 * (step % 3), 1.0) is None
    event = detector.check(20, 9.0, 1.0)
    assert event.signal == "loss_spike" and event.action == "lr_cut"
    spike = detector.check(21, 2.8, 50.0)
    assert spike.signal == "grad_spike" and spike.value == 50.0


def test_lr_cut_action_in_training(prepared, tmp_path):
    from koi_train.schedule import lr_multiplier

    trainer = _trainer(prepared, tmp_path, "cut", action="lr_cut", lr_cut_factor=0.25, lr_cut_steps=5)
    _poison_step(trainer, 40, "nan")
    trainer.fit()
    records = _records(tmp_path / "cut")
    assert [r["step"] for r in records if r["kind"] == "instability"] == [40]  # the NaN update was not applied
    lrs = {r["step"]: r["lr"] for r in records if r["kind"] == "train"}
    peak = trainer.cfg.train.lr
    # the record of step s shows the lr used for update s-1 (0-based); steps 41..45 run at a quarter of the schedule
    for step in range(42, 46):
        assert math.isclose(lrs[step], 0.25 * peak * lr_multiplier(step - 1, trainer.cfg.train), rel_tol=1e-9)
    assert math.isclose(lrs[47], peak * lr_multiplier(46, trainer.cfg.train), rel_tol=1e-9)
