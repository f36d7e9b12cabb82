"""The expert mixture: exact offload and restore, the PSO step, honest parameter counts, and a run."""

from __future__ import annotations

import json
import os
import signal

import torch
from conftest import tiny_config

from koi_train import Trainer, load_dict
from koi_train.config import ModelConfig
from koi_train.models import build_model, count_parameters


def _trainer(prepared, tmp_path, name="mix", **mixture):
    raw = tiny_config(prepared, tmp_path, name=name, model={"n_layer": 3}, train={"steps": 12, "log_every": 1},
                      mixture={"experts": 3, "switch": 4, **mixture}, eval={"every": 0, "max_windows": 10})
    return Trainer(load_dict(raw), tmp_path / name, log=lambda *_: None)


def _snapshot(trainer):
    mixture = trainer.parts.mixture
    weights = {n: p.detach().clone() for n, p in mixture.block_params.items()}
    opt = trainer.parts.optimizer.optimizers[0]
    states = {n: {k: v.clone() for k, v in opt.state[p].items()} for n, p in mixture.block_params.items()}
    return weights, states


def test_offload_and_restore_are_exact(prepared, tmp_path):
    trainer = _trainer(prepared, tmp_path, social=0.0, crossover=0.0, method="pso_ga")
    for _ in range(3):
        loss, _ = trainer.train_step()
        trainer._apply_update(None)
    before = _snapshot(trainer)
    mixture = trainer.parts.mixture
    assert [mixture.switch() for _ in range(3)] == [1, 2, 0]  # round robin back to expert 0
    after = _snapshot(trainer)
    for name in before[0]:
        assert torch.equal(before[0][name], after[0][name])
        assert before[1][name].keys() == after[1][name].keys()
        assert all(torch.equal(before[1][name][k], after[1][name][k]) for k in before[1][name])


def test_switches_store_each_expert_into_the_host_tensors_it_already_has(prepared, tmp_path):
    """Pinned host memory costs about a second per GB to allocate: a switch copies the active expert
    (weights and optimizer state) into the host tensors of its previous switch, and still exactly."""
    trainer = _trainer(prepared, tmp_path, social=0.0, crossover=0.0, method="pso")
    mixture = trainer.parts.mixture
    for _ in range(2):
        trainer.train_step()
        trainer._apply_update(None)
    mixture.switch()  # expert 0's optimizer state reaches the host for the first time
    held = {n: t.data_ptr() for n, t in mixture.weights[0].items()}
    held_state = {(n, k): v.data_ptr() for n, s in mixture.opt_states[0].items() for k, v in s.items() if torch.is_tensor(v)}
    mixture.switch()
    mixture.switch()  # back to expert 0, which trains again before it is stored
    trainer.train_step()
    trainer._apply_update(None)
    weights, states = _snapshot(trainer)
    mixture.switch()
    assert {n: t.data_ptr() for n, t in mixture.weights[0].items()} == held
    assert {(n, k): v.data_ptr() for n, s in mixture.opt_states[0].items() for k, v in s.items() if torch.is_tensor(v)} == held_state
    assert all(torch.equal(mixture.weights[0][n], weights[n]) for n in weights)
    assert all(torch.equal(mixture.opt_states[0][n][k], states[n][k]) for n in states for k in states[n])


def test_pso_pulls_each_element_part_of_the_way(prepared, tmp_path):
    trainer = _trainer(prepared, tmp_path, social=0.3, method="pso")
    mixture = trainer.parts.mixture
    old = {n: t.clone() for n, t in mixture.weights[1].items()}
    best = {n: p.detach().cpu().clone() for n, p in mixture.block_params.items()}
    mixture.switch()
    for name, x in mixture.weights[1].items():
        moved, gap = x - old[name], best[name] - old[name]
        fraction = moved[gap.abs() > 1e-6] / gap[gap.abs() > 1e-6]
        if fraction.numel():
            assert fraction.min() >= -1e-5 and fraction.max() <= 0.3 + 1e-5 and fraction.std() > 0.01


def test_counts_are_honest():
    with torch.device("meta"):
        full = count_parameters(build_model(ModelConfig(preset="gpt2-tiny", n_layer=6), tokenizer_vocab=512))["total"]
    from koi_train.config import MixtureConfig
    from koi_train.mixture import ExpertMixture

    shallow = build_model(ModelConfig(preset="gpt2-tiny", n_layer=2), tokenizer_vocab=512)
    counts = ExpertMixture(shallow, [], MixtureConfig(experts=3), seed=0).parameter_counts()
    assert counts["total"] == full  # three 2-layer experts hold as many weights as the 6-layer model
    assert counts["active"] == count_parameters(shallow)["total"] < full


def test_mixture_run_reports_every_expert_and_the_ensemble(prepared, tmp_path):
    trainer = _trainer(prepared, tmp_path, name="run", method="pso_ga")
    summary = trainer.fit()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    switches = [r for r in records if r["kind"] == "mixture_switch"]
    assert [(r["step"], r["active"]) for r in switches] == [(4, 1), (8, 2)]
    final = [r for r in records if r["kind"] == "eval"][-1]
    assert len(final["expert_losses"]) == 3 and final["best_loss"] == min(final["expert_losses"])
    assert final["ensemble_loss"] > 0
    assert summary["parameters_trained"] < summary["parameters"]


def test_mixture_resumes_exactly(prepared, tmp_path):
    import pytest

    _trainer(prepared, tmp_path, name="a", method="pso_ga").fit()
    interrupted = _trainer(prepared, tmp_path, name="b", method="pso_ga")

    def stop_at_6(message):
        if message.startswith("step      6/"):
            os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C: the trainer stops and saves at the next step boundary

    interrupted.log = stop_at_6
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit()
    resumed = _trainer(prepared, tmp_path, name="b", method="pso_ga")
    resumed.resume()
    resumed.fit()

    def losses(name):
        lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        return [r["loss"] for r in map(json.loads, lines) if r["kind"] == "train"]

    assert losses("a") == losses("b")


def test_export_takes_one_expert_at_its_own_depth(prepared, tmp_path):
    """Each exported expert is the model that was evaluated as that expert: same loss on the same windows."""
    import pytest

    from koi_eval import estimate_loss
    from koi_train.config import ConfigError
    from koi_train.load_model import load_trained_model

    trainer = _trainer(prepared, tmp_path, name="run", method="pso")
    trainer.fit()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    final = [r for r in records if r["kind"] == "eval"][-1]
    cfg, p = trainer.cfg, trainer.parts
    windows = dict(block_size=p.block_size, batch_size=cfg.train.batch_size, fraction=cfg.eval.sample_fraction, seed=cfg.seed,
                   max_windows=cfg.eval.max_windows)
    for expert, recorded in enumerate(final["expert_losses"]):
        model = load_trained_model(str(tmp_path / "run"), expert=expert)
        assert model.spec.n_layer == 1  # 3 layers in 3 experts
        assert abs(estimate_loss(model, p.val_shards, **windows).loss - recorded) < 1e-5
    best = load_trained_model(str(tmp_path / "run"))
    assert abs(estimate_loss(best, p.val_shards, **windows).loss - final["best_loss"]) < 1e-5
    with pytest.raises(ConfigError, match="expected an expert number in 0..2, got 3"):
        load_trained_model(str(tmp_path / "run"), expert=3)
