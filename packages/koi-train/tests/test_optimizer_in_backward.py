"""The optimizer step inside backward trains exactly as the ordinary step does, without holding gradients."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_config

from koi_train import ConfigError, Trainer, load_dict


def _losses(run_dir):
    return [r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "train"]


@pytest.mark.parametrize("name", ["adamw", "adamw8bit"])
def test_same_losses_as_the_ordinary_step(prepared, tmp_path, name):
    common = dict(train={"steps": 8, "log_every": 1, "grad_clip": 0}, optimizer={"name": name},
                  instability={"action": "rollback"})
    ordinary = Trainer(load_dict(tiny_config(prepared, tmp_path, name="a", **common)), tmp_path / "a", log=lambda *_: None)
    ordinary.fit()
    common["train"]["optimizer_in_backward"] = True
    fused = Trainer(load_dict(tiny_config(prepared, tmp_path, name="b", **common)), tmp_path / "b", log=lambda *_: None)
    fused.fit()
    a, b = _losses(tmp_path / "a"), _losses(tmp_path / "b")
    assert max(abs(x - y) for x, y in zip(a, b)) < 1e-5
    assert all(p.grad is None for p in fused.parts.model.parameters())  # gradients were freed as they were used
    norms = [r["grad_norm"] for r in map(json.loads, (tmp_path / "b" / "metrics.jsonl").read_text().splitlines())
             if r["kind"] == "train"]
    ordinary_norms = [r["grad_norm"] for r in map(json.loads, (tmp_path / "a" / "metrics.jsonl").read_text().splitlines())
                      if r["kind"] == "train"]
    torch.testing.assert_close(torch.tensor(norms), torch.tensor(ordinary_norms), rtol=1e-4, atol=1e-6)


def test_incompatible_settings_are_config_errors(prepared, tmp_path):
    raw = tiny_config(prepared, tmp_path, train={"optimizer_in_backward": True})
    with pytest.raises(ConfigError, match="train.grad_clip: expected 0"):
        Trainer(load_dict(raw), tmp_path / "x", log=lambda *_: None)
    raw["train"]["grad_clip"] = 0
    raw["instability"] = {"action": "lr_cut"}
    with pytest.raises(ConfigError, match="instability.action: expected skip, rollback or abort"):
        Trainer(load_dict(raw), tmp_path / "y", log=lambda *_: None)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_distributed_runs_refuse_the_step_in_backward(prepared, tmp_path, strategy):
    """The hook fires before DDP averages (or FSDP reduce-scatters) the gradient: ranks would drift apart."""
    raw = tiny_config(prepared, tmp_path, train={"optimizer_in_backward": True, "grad_clip": 0},
                      distributed={"strategy": strategy})
    with pytest.raises(ConfigError, match=f"train.optimizer_in_backward: expected false with distributed.strategy '{strategy}'"):
        Trainer(load_dict(raw), tmp_path / "x", log=lambda *_: None)


def test_bf16_weights_keep_stochastic_rounding_when_stepped_in_backward(prepared, tmp_path):
    from koi_kernels import FusedAdamW

    raw = tiny_config(prepared, tmp_path, train={"optimizer_in_backward": True, "grad_clip": 0, "steps": 4},
                      optimizer={"weights": "bf16"}, instability={"action": "rollback"})
    trainer = Trainer(load_dict(raw), tmp_path / "run", log=lambda *_: None)
    assert all(isinstance(opt, FusedAdamW) for opt in trainer.parts.optimizer.optimizers)
    before = [p.detach().clone() for p in trainer.parts.model.parameters()]
    trainer.fit()
    params = list(trainer.parts.model.parameters())
    assert all(p.dtype == torch.bfloat16 for p in params)
    assert sum(not torch.equal(a, b) for a, b in zip(before, params)) == len(params)  # every parameter moved
    raw["optimizer"] = {"weights": "bf16", "name": "adamw8bit"}
    with pytest.raises(ConfigError, match="optimizer.weights: bf16 weights need optimizer.name adamw"):
        Trainer(load_dict(raw), tmp_path / "other", log=lambda *_: None)
