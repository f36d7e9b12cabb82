"""Every fault, at every position that matters, in every kind of run: caught, undone, and logged.

Positions are chosen against the detector's history (window 10, warm-up 5) and the snapshots
(every 8 steps): inside the warm-up, one step before a snapshot (the bad update is captured by
the pending snapshot, which must never be promoted), at a snapshot, one step after, and with a
full history. Mixture runs add the steps around the expert switch at 20. For each case the run
is compared with the same run without the fault: it finishes, its val loss is within 2%, every
event the guard handled is in metrics.jsonl, and every fault that could do harm was caught.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_config
from faults import FAULTS, WINDOW_STEPS, inject

from koi_train import Trainer, load_dict
from koi_train import trainer as trainer_module

STEPS = 40
INSTABILITY = {"window": 10, "warmup": 5, "snapshot_every": 8}
MODES = {
    "plain": {},
    "in_backward": {"train": {"optimizer_in_backward": True, "grad_clip": 0}},
    "mixture": {"model": {"n_layer": 2}, "mixture": {"experts": 2, "switch": 20}},
}
POSITIONS = {  # fault step -> where it sits
    "plain": {3: "warm-up", 7: "before snapshot 8", 8: "at snapshot", 9: "after snapshot", 23: "before snapshot 24, full window"},
    "in_backward": {7: "before snapshot 8", 8: "at snapshot"},
    "mixture": {19: "last update before the switch", 20: "first step of expert 1", 21: "second step of expert 1",
                28: "snapshot of expert 1"},
}
UNCATCHABLE = {  # a window of noise that an untrained model (or a fresh expert) scores no worse than real text
    ("plain", "poisoned_window", 3), ("plain", "poisoned_window", 7), ("plain", "poisoned_window", 8),
    ("plain", "poisoned_window", 9), ("in_backward", "poisoned_window", 7), ("in_backward", "poisoned_window", 8),
    ("mixture", "poisoned_window", 20), ("mixture", "poisoned_window", 21),
}


@pytest.fixture(autouse=True)
def _no_loss_plot(monkeypatch):
    monkeypatch.setattr(trainer_module, "plot_loss", lambda *_: None)  # a second per run, and not what is tested


def _config(prepared, root, name, mode, **instability):
    extra = {key: value for key, value in MODES[mode].items() if key != "train"}
    # 200 val windows and a low final LR: otherwise one skipped step moves the val loss by 2% on its own
    return tiny_config(prepared, root, name=name, train={"steps": STEPS, "log_every": 1, "min_lr_ratio": 0.02,
                                                         **MODES[mode].get("train", {})},
                       eval={"every": 0, "max_windows": 200}, instability={**INSTABILITY, **instability}, **extra)


def _run(prepared, root, name, mode, fault=None, step=None, **instability):
    trainer = Trainer(load_dict(_config(prepared, root, name, mode, **instability)), root / name, log=lambda *_: None)
    if fault:
        inject(trainer, fault, step)
    summary = trainer.fit()
    return trainer, summary["val_loss"]


def _records(run_dir: Path, kind: str) -> list[dict]:
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


def _comparable(record: dict) -> dict:
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in record.items()}


@pytest.fixture(scope="module")
def clean(prepared, tmp_path_factory):
    """Each mode without a fault, detection on: the reference val loss, and the trainer."""
    root = tmp_path_factory.mktemp("clean")
    return {mode: _run(prepared, root, mode, mode) for mode in MODES}


def _check(trainer, val, clean_val, mode, fault, step, run_dir):
    assert all(torch.isfinite(p).all() for p in trainer.parts.model.parameters())
    assert abs(val - clean_val) / clean_val < 0.02, f"val {val:.4f} vs clean {clean_val:.4f}"
    handled = [_comparable(e.as_record()) for e in trainer.guard.events]
    assert [_comparable(r) for r in _records(run_dir, "instability")] == handled  # every event is on record
    if (mode, fault, step) not in UNCATCHABLE:
        late = WINDOW_STEPS if fault == "poisoned_window" else 1  # an LR spike shows in the next step's loss
        assert any(step <= e.step <= step + late for e in trainer.guard.events), f"{fault} at {step} was not caught"
    if mode == "in_backward" or fault == "lr_spike":  # the update was applied: only a restore undoes it
        assert all(e.action == "rollback" and e.restored_step is not None for e in trainer.guard.events)


@pytest.mark.parametrize("mode,step", [(mode, step) for mode in MODES for step in POSITIONS[mode]],
                         ids=[f"{mode}-{step}" for mode in MODES for step in POSITIONS[mode]])
@pytest.mark.parametrize("fault", FAULTS)
def test_fault_is_caught_and_undone(prepared, tmp_path, clean, mode, step, fault):
    trainer, val = _run(prepared, tmp_path, "run", mode, fault, step)
    _check(trainer, val, clean[mode][1], mode, fault, step, tmp_path / "run")


@pytest.mark.parametrize("fault,step", [("lr_spike", 7), ("nan_batch", 23), ("poisoned_window", 23)])
def test_rollback_action_restores_a_good_snapshot(prepared, tmp_path, clean, fault, step):
    trainer, val = _run(prepared, tmp_path, "run", "plain", fault, step, action="rollback")
    _check(trainer, val, clean["plain"][1], "plain", fault, step, tmp_path / "run")
    restored = [e.restored_step for e in trainer.guard.events]
    assert restored and all(s is not None and s <= step for s in restored)  # never the pending snapshot of a bad update


def test_mixture_rollback_stays_with_the_active_expert(prepared, tmp_path, clean):
    """A bad update at 24 (switch at 20) restores expert 1's own snapshot of step 20, never expert 0's weights."""
    trainer, val = _run(prepared, tmp_path, "run", "mixture", "lr_spike", 24)
    assert [(e.step, e.action, e.restored_step) for e in trainer.guard.events] == [(25, "rollback", 20)]
    assert trainer.parts.mixture.active == 1 and abs(val - clean["mixture"][1]) / clean["mixture"][1] < 0.02


@pytest.mark.parametrize("mode", list(MODES))
def test_detection_on_without_a_fault_is_bit_identical_to_off(prepared, tmp_path, clean, mode):
    on, _ = clean[mode]
    off, _ = _run(prepared, tmp_path, "off", mode, enabled=False)
    assert on.guard.events == []
    assert [r["loss"] for r in _records(on.run_dir, "train")] == [r["loss"] for r in _records(off.run_dir, "train")]
    for (name, a), b in zip(on.parts.model.state_dict().items(), off.parts.model.state_dict().values()):
        assert torch.equal(a, b), name
    rebases = _records(on.run_dir, "instability_rebase")
    assert [(r["step"], r["reason"]) for r in rebases] == ([(20, "expert_switch")] if mode == "mixture" else [])


DDP_CASES = ["nan_batch:7", "loss_spike:7", "lr_spike:7", "lr_spike:8", "grad_explosion:8", "poisoned_window:23"]


@pytest.fixture(scope="module")
def ddp_results(prepared, tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    raw = _config(prepared, root, "ddp", "plain")
    raw["train"]["batch_size"] = 4  # per rank: the same global batch as the single-process runs
    raw["distributed"] = {"strategy": "ddp", "backend": "gloo"}
    (root / "config.json").write_text(json.dumps(raw))
    runner = Path(__file__).with_name("ddp_fault_runner.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
                             str(runner), str(root / "config.json"), str(root / "out.json"), *DDP_CASES],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((root / "out.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("case", DDP_CASES)
def test_ddp_two_processes_recover_alike(ddp_results, case):
    """gloo, 2 CPU processes: both ranks decide the same (the run would hang otherwise) and recover."""
    kind, step = case.split(":")
    got, clean_val = ddp_results[case], ddp_results["clean"]["val"]
    assert ddp_results["clean"]["events"] == []
    assert got["finite"] and abs(got["val"] - clean_val) / clean_val < 0.02, (got["val"], clean_val)
    assert [_comparable(r) for r in got["records"]] == [_comparable(e) for e in got["events"]]
    late = WINDOW_STEPS if kind == "poisoned_window" else 1
    assert any(int(step) <= e["step"] <= int(step) + late for e in got["events"])


@pytest.mark.parametrize("fault,step,optimizer", [(None, None, "adamw"), ("nan_batch", 23, "adamw"), ("lr_spike", 7, "adamw"),
                                                  ("grad_explosion", 9, "adamw"), ("nan_batch", 23, "muon"), ("lr_spike", 7, "muon"),
                                                  ("lr_spike", 14, "adamw"),  # seen at 15, after snapshot 16 was taken
                                                  ("nan_batch", 23, "adamw8bit"), ("lr_spike", 7, "adamw8bit"),
                                                  ("nan_batch", 23, "adamw+bf16"), ("lr_spike", 14, "adamw8bit+bf16"),
                                                  ("nan_batch", 23, "lion")])
def test_judging_a_step_late_decides_and_trains_as_judging_it_at_once(prepared, tmp_path, fault, step, optimizer):
    """The default judges each step while the next runs (late_judging.py), with the update gated on the
    device; a rollback found late redoes the step run since. Same events, losses and weights as the host
    judging each step before its update."""
    runs = {}
    for late in (True, False):
        name = f"late-{late}"
        raw = _config(prepared, tmp_path, name, "plain")
        opt_name, _, weights = optimizer.partition("+")
        raw["optimizer"] = {**raw.get("optimizer", {}), "name": opt_name, **({"weights": weights} if weights else {})}
        trainer = Trainer(load_dict(raw), tmp_path / name, log=lambda *_: None)
        assert trainer.judge_late  # every optimizer here gates its update on a device flag, on the CPU too
        trainer.judge_late = late
        if fault:
            inject(trainer, fault, step)
        trainer.fit()
        runs[late] = trainer
    late, now = runs[True], runs[False]
    assert [_comparable(e.as_record()) for e in late.guard.events] == [_comparable(e.as_record()) for e in now.guard.events]
    assert bool(late.guard.events) == bool(fault)
    assert ([r["loss"] for r in _records(late.run_dir, "train")] == [r["loss"] for r in _records(now.run_dir, "train")])
    for (name, a), b in zip(late.parts.model.state_dict().items(), now.parts.model.state_dict().values()):
        assert torch.equal(a, b), name
    # Judged late, a snapshot is taken before the previous step's verdict and learns its history after:
    # each must carry what a snapshot taken after the verdict carries, or a rollback would restore the wrong level.
    kept = [(snap.step, snap.extra) for snap in late.guard.snapshots.good]
    assert kept and kept == [(snap.step, snap.extra) for snap in now.guard.snapshots.good]


def test_lasting_gradient_spikes_under_clipping_are_applied_not_skipped(prepared, tmp_path, clean):
    """Gradients that jump and stay up (the same weights give large gradients on every batch: seen in a
    real 4-layer run at the end of warm-up) must not be skipped step after step into an abort: with
    clipping on, each spike is recorded and its clipped update applied, and the history follows the new
    level within a window."""
    trainer = Trainer(load_dict(_config(prepared, tmp_path, "run", "plain")), tmp_path / "run", log=lambda *_: None)
    for step in range(10, 35):
        inject(trainer, "grad_explosion", step)
    val = trainer.fit()["val_loss"]
    events = trainer.guard.events
    assert 1 <= len(events) <= INSTABILITY["window"]
    assert all(e.action == "clipped" and e.signal == "grad_spike" and 10 <= e.step < 35 for e in events)
    assert [_comparable(r) for r in _records(tmp_path / "run", "instability")] == [_comparable(e.as_record()) for e in events]
    assert abs(val - clean["plain"][1]) / clean["plain"][1] < 0.02
