"""End to end: koi-train runs, writes its outputs, resumes bit for bit, and reports bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from conftest import tiny_config

from koi_tokenizer import read_shard
from koi_train import ConfigError, Trainer, load_dict
from koi_train.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint


def _train(raw, run_dir, resume=False):
    trainer = Trainer(load_dict(raw), run_dir, log=lambda *_: None)
    if resume:
        trainer.resume()
    trainer.fit()
    return trainer


def _losses(run_dir):
    return [r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "train"]


def test_run_writes_metrics_plot_checkpoint_and_loss_falls(prepared, tmp_path):
    raw = tiny_config(prepared, tmp_path, train={"steps": 60, "log_every": 5}, eval={"every": 30})
    trainer = _train(raw, tmp_path / "run")
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == list(range(5, 61, 5))
    assert train[-1]["loss"] < train[0]["loss"] - 0.5
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "tokens"} <= set(train[0])
    evals = [r for r in records if r["kind"] == "eval"]
    assert len(evals) == 2 and evals[-1]["val_loss"] < evals[0]["val_loss"]
    assert records[-1]["kind"] == "summary" and records[-1]["parameters"] == trainer.parts.params["total"]
    assert (tmp_path / "run" / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert load_checkpoint(records[-1]["checkpoint"])["step"] == 60


def test_ctrl_c_then_resume_equals_uninterrupted_bitwise(prepared, tmp_path):
    full = tiny_config(prepared, tmp_path, train={"steps": 20, "log_every": 1}, model={"dropout": 0.1})
    _train(full, tmp_path / "a")

    def interrupt_at_step_10(message):
        if message.startswith("step     10/"):  # a real SIGINT, mid-step: the trainer stops at the next step boundary
            os.kill(os.getpid(), signal.SIGINT)

    interrupted = Trainer(load_dict(full), tmp_path / "b", log=interrupt_at_step_10)
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit()
    # The line for step 10 is printed while step 11 runs (steps are judged one late): the stop comes after 10 or 11.
    stopped_at = load_checkpoint(latest_checkpoint(str(tmp_path / "b" / "checkpoints")))["step"]
    assert stopped_at in (10, 11)
    resumed = _train(full, tmp_path / "b", resume=True)
    assert _losses(tmp_path / "a") == _losses(tmp_path / "b")
    final_a = load_checkpoint(str(tmp_path / "a" / "checkpoints" / "step_00000020.pt"))["model"]
    for name, tensor in resumed.parts.model.state_dict().items():
        assert torch.equal(tensor, final_a[name]), name


def test_muon_lion_adamw8bit_and_llama_train(prepared, tmp_path):
    for name, extra in (("muon", {}), ("lion", {"lr": 1e-3}), ("adamw8bit", {})):
        raw = tiny_config(prepared, tmp_path, optimizer={"name": name}, train={"steps": 40, **extra})
        losses = _losses(_train(raw, tmp_path / name).run_dir)
        assert losses[-1] < losses[0] - 0.5, name
    raw = tiny_config(prepared, tmp_path, model={"arch": "llama", "preset": "llama-tiny", "n_layer": 2, "n_embd": 64,
                                                   "n_head": 4, "n_kv_head": 2, "block_size": 32}, train={"steps": 30})
    losses = _losses(_train(raw, tmp_path / "llama").run_dir)
    assert losses[-1] < losses[0] - 0.5


@pytest.mark.parametrize("mode", ["ffn", "selective", "full"])
def test_remat_gives_identical_training(prepared, tmp_path, mode):
    base = tiny_config(prepared, tmp_path, train={"steps": 5, "log_every": 1})
    _train(base, tmp_path / "plain")
    _train({**base, "remat": {"mode": mode}}, tmp_path / mode)
    assert _losses(tmp_path / "plain") == _losses(tmp_path / mode)


@pytest.mark.parametrize("fmt", ["fp8", "int8", "int4", "nf4", "ternary", "binary"])
def test_every_low_bit_format_trains(prepared, tmp_path, fmt):
    raw = tiny_config(prepared, tmp_path, precision={"plan": {"transformer.h.*": fmt}, "group_size": 32}, train={"steps": 30})
    trainer = _train(raw, tmp_path / fmt)
    quantized = [m for m in trainer.parts.model.modules() if type(m).__name__ == "QuantLinear"]
    assert len(quantized) == 8 and all(m.format.name == fmt for m in quantized)  # 4 Linear layers x 2 blocks
    losses = _losses(tmp_path / fmt)
    assert losses[-1] < losses[0] - 0.4, f"{fmt}: {losses[0]:.3f} -> {losses[-1]:.3f}"


def test_bf16_weights_with_stochastic_rounding(prepared, tmp_path):
    raw = tiny_config(prepared, tmp_path, optimizer={"weights": "bf16"}, train={"steps": 30})
    trainer = _train(raw, tmp_path / "bf16")
    assert all(p.dtype == torch.bfloat16 for p in trainer.parts.model.parameters())
    state = trainer.parts.optimizer.optimizers[0].state[trainer.parts.model.lm_head.weight]
    assert state["exp_avg"].dtype == torch.float32
    losses = _losses(tmp_path / "bf16")
    assert losses[-1] < losses[0] - 0.4
    raw = tiny_config(prepared, tmp_path, optimizer={"weights": "bf16", "name": "lion"})
    with pytest.raises(ConfigError, match="optimizer.weights: bf16 weights need optimizer.name adamw or adamw8bit"):
        _train(raw, tmp_path / "bad")


@pytest.mark.parametrize("scaling", ["row", "row-fused", "tile"])
def test_fp8_matmul_from_the_config(prepared, tmp_path, scaling):
    raw = tiny_config(prepared, tmp_path, precision={"plan": {"transformer.h.*": "fp8"}, "fp8_matmul": True, "fp8_scaling": scaling},
                      train={"steps": 30})
    trainer = _train(raw, tmp_path / "fp8")
    layers = [m for m in trainer.parts.model.modules() if type(m).__name__ == "Fp8Linear"]
    assert len(layers) == 8 and all(m.scaling == scaling for m in layers)
    losses = _losses(tmp_path / "fp8")
    assert losses[-1] < losses[0] - 0.4


@pytest.mark.parametrize("setting", [{"group_size": 32}, {"activations": True}])
def test_fp8_matmul_refuses_settings_it_would_drop(prepared, tmp_path, setting):
    """Real fp8 matmuls bring their own scales and input cast: a group size or int8 activations would be ignored."""
    raw = tiny_config(prepared, tmp_path, precision={"plan": {"transformer.h.*": "fp8"}, "fp8_matmul": True, **setting})
    with pytest.raises(ConfigError, match="precision.fp8_matmul: fp8 tensor-core matmuls set their own scales"):
        _train(raw, tmp_path / "bad")


def test_learnable_scales_from_the_config(prepared, tmp_path):
    raw = tiny_config(prepared, tmp_path, precision={"plan": {"transformer.h.*": "ternary"}, "learnable_scales": True},
                      train={"steps": 30})
    trainer = _train(raw, tmp_path / "lsq")
    assert sum(n.endswith("weight_scale") for n, _ in trainer.parts.model.named_parameters()) == 8
    losses = _losses(tmp_path / "lsq")
    assert losses[-1] < losses[0] - 0.4


def test_precision_plan_trains(prepared, tmp_path):
    raw = tiny_config(prepared, tmp_path, precision={"plan": {"transformer.h.*.mlp.*": "ternary", "transformer.h.*.attn.*": "int8"},
                                                     "tile": [16, 16], "activations": True}, train={"steps": 30})
    trainer = _train(raw, tmp_path / "q")
    layer = trainer.parts.model.transformer.h[0].mlp.c_fc
    assert type(layer).__name__ == "QuantLinear" and layer.granularity.tile == (16, 16) and layer.quantize_activations
    losses = _losses(tmp_path / "q")
    assert losses[-1] < losses[0] - 0.5


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "koi_train", *args], capture_output=True, text=True, cwd=cwd)


def test_cli_bad_inputs_exit_2(prepared, tmp_path):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(tiny_config(prepared, tmp_path, data={"train": [str(tmp_path / "nothing_*.bin")]})))
    result = _cli("run", str(cfg), cwd=tmp_path)
    assert result.returncode == 2 and "nothing_*.bin" in result.stderr and "data.train" in result.stderr
    broken = tmp_path / "broken.bin"
    broken.write_bytes(b"\x00" * 2000)
    cfg.write_text(json.dumps(tiny_config(prepared, tmp_path, data={"train": [str(broken)]})))
    result = _cli("run", str(cfg), cwd=tmp_path)
    assert result.returncode == 2 and "broken.bin: header.magic" in result.stderr
    assert result.stderr.strip().count("\n") == 0
    result = _cli("run", str(cfg), "--set", "train.lr=fast", cwd=tmp_path)
    assert result.returncode == 2 and 'train.lr: expected number > 0, got "fast"' in result.stderr


def test_damaged_checkpoint_is_named(tmp_path):
    path = tmp_path / "step_00000001.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"step_00000001\.pt: contents: expected a Koi checkpoint"):
        load_checkpoint(str(path))
    torch.save({"step": 1}, path)
    with pytest.raises(CheckpointError, match="model: expected this key"):
        load_checkpoint(str(path))


def test_export_to_hf_and_back_gives_the_same_logits(prepared, tmp_path):
    from koi_train.hf_io import load_hf

    raw = tiny_config(prepared, tmp_path, train={"steps": 3})
    trainer = _train(raw, tmp_path / "run")
    result = _cli("export", str(tmp_path / "run"), str(tmp_path / "hf"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["n_layer"] == 2
    from safetensors.torch import load_file

    tensors = load_file(str(tmp_path / "hf" / "model.safetensors"))
    assert tensors["transformer.h.0.attn.c_attn.weight"].shape == (64, 192)  # HF Conv1D layout (in, out)
    reloaded = load_hf(tmp_path / "hf").eval()
    model = trainer.parts.model.eval()
    idx = torch.randint(0, 512, (2, 16))
    torch.testing.assert_close(reloaded(idx), model(idx))


def test_training_from_fsspec_urls(prepared, tmp_path, monkeypatch):
    import fsspec

    monkeypatch.setenv("KOI_CACHE", str(tmp_path / "cache"))
    fs = fsspec.filesystem("memory")
    for split, paths in (("train", prepared.train), ("val", prepared.val)):
        with open(paths[0], "rb") as src, fs.open(f"/koi-run/{split}_000000.bin", "wb") as dst:
            dst.write(src.read())
    raw = tiny_config(prepared, tmp_path, data={"train": ["memory://koi-run/train_*.bin"], "val": ["memory://koi-run/val_*.bin"]},
                      train={"steps": 3})
    trainer = _train(raw, tmp_path / "remote")
    assert trainer.parts.train_data.tokens == len(read_shard(prepared.train[0]))


def test_pruning_keeps_the_newest_files_and_shard_folders(tmp_path):
    from koi_train.checkpoint import list_checkpoints, prune_checkpoints

    for step in (1, 2):
        (tmp_path / f"step_{step:08d}.pt").write_bytes(b"x")
    for step in (3, 4):
        (tmp_path / f"step_{step:08d}").mkdir()
        (tmp_path / f"step_{step:08d}" / "koi_state.pt").write_bytes(b"x")
    prune_checkpoints(str(tmp_path), keep_last=2)
    assert [step for step, _ in list_checkpoints(str(tmp_path))] == [3, 4]
    prune_checkpoints(str(tmp_path), keep_last=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000004"]


def test_low_bit_run_is_evaluated_and_exported_as_the_low_bit_model(prepared, tmp_path):
    """The loaded checkpoint computes with the quantized weights (not the latent ones), and so does its export."""
    from koi_quant import QuantLinear
    from koi_train.hf_io import load_hf
    from koi_train.load_model import load_trained_model

    raw = tiny_config(prepared, tmp_path, precision={"plan": {"transformer.h.*": "ternary"}}, train={"steps": 6})
    trainer = _train(raw, tmp_path / "run")
    loaded = load_trained_model(str(tmp_path / "run")).eval()
    assert isinstance(loaded.transformer.h[0].mlp.c_fc, QuantLinear)
    idx = torch.randint(0, 512, (2, 16))
    trained = trainer.parts.model.eval()
    torch.testing.assert_close(loaded(idx), trained(idx))
    result = _cli("export", str(tmp_path / "run"), str(tmp_path / "hf"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    torch.testing.assert_close(load_hf(tmp_path / "hf").eval()(idx), trained(idx), atol=1e-5, rtol=1e-5)
    latent = load_trained_model(str(tmp_path / "run"))
    from koi_quant import dequantize_

    assert len(dequantize_(latent)) == 4 * 2  # four Linears per block, two blocks


def test_a_plan_for_the_output_head_is_refused(prepared, tmp_path):
    raw = tiny_config(prepared, tmp_path, precision={"plan": {"transformer.h.*": "int4", "lm_head": "int4"}})
    with pytest.raises(ConfigError, match=r"precision.plan.lm_head: matches the output head 'lm_head'"):
        Trainer(load_dict(raw), tmp_path / "run", log=lambda *_: None)


@pytest.mark.parametrize("optimizer,extra", [("adamw", {}), ("muon", {}), ("adamw", {"optimizer_in_backward": True, "grad_clip": 0})])
def test_embedding_lr_gives_embeddings_and_head_their_own_peak_lr(prepared, tmp_path, optimizer, extra):
    raw = tiny_config(prepared, tmp_path, optimizer={"name": optimizer, "embedding_lr": 0.05}, train={"steps": 3, **extra})
    trainer = Trainer(load_dict(raw), tmp_path / "run", log=lambda *_: None)
    model = trainer.parts.model
    embeddings = {id(model.transformer.wte.weight), id(model.transformer.wpe.weight), id(model.output_head.weight)}
    base_lr = {id(p): g["base_lr"] for opt in trainer.parts.optimizer.optimizers for g in opt.param_groups for p in g["params"]}
    assert {base_lr[i] for i in embeddings} == {0.05}
    others = {lr for i, lr in base_lr.items() if i not in embeddings}
    assert 0.05 not in others and raw["train"]["lr"] in others
    trainer.fit()  # and the schedule drives both groups alike
    ratios = {round(g["lr"] / g["base_lr"], 12) for opt in trainer.parts.optimizer.optimizers for g in opt.param_groups}
    assert len(ratios) == 1


def test_compile_mode_reaches_torch_compile(prepared, tmp_path, monkeypatch):
    from koi_train import setup as setup_module

    seen = []
    monkeypatch.setattr(setup_module.torch, "compile", lambda module, **options: seen.append(options) or module)
    raw = tiny_config(prepared, tmp_path, train={"compile": True, "compile_mode": "max-autotune-no-cudagraphs"})
    Trainer(load_dict(raw), tmp_path / "run", log=lambda *_: None)
    assert seen == [{"mode": "max-autotune-no-cudagraphs"}]
    with pytest.raises(ConfigError) as err:
        load_dict(tiny_config(prepared, tmp_path, train={"compile_mode": "fastest"}))
    assert err.value.path == "train.compile_mode"


def test_each_record_carries_the_mean_loss_since_the_last_one(prepared, tmp_path):
    """One batch's loss is noisy; ``loss_mean`` averages every step since the previous record (what runs compare on)."""
    every_step = Trainer(load_dict(tiny_config(prepared, tmp_path, name="a", train={"steps": 6, "log_every": 1})), tmp_path / "a",
                         log=lambda *_: None)
    every_step.fit()
    every_third = Trainer(load_dict(tiny_config(prepared, tmp_path, name="b", train={"steps": 6, "log_every": 3})), tmp_path / "b",
                          log=lambda *_: None)
    every_third.fit()

    def train_records(run):
        return [r for r in map(json.loads, (tmp_path / run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "train"]

    losses = [r["loss"] for r in train_records("a")]
    assert [r["loss_mean"] for r in train_records("a")] == losses
    means = [r["loss_mean"] for r in train_records("b")]
    assert means == pytest.approx([sum(losses[:3]) / 3, sum(losses[3:]) / 3], rel=1e-5)
    assert means[0] != pytest.approx(losses[2], rel=1e-6)  # not the last batch's alone
