"""A broken config gets one clear line (file, JSON path, expectation, value) and exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from koi_train.config import ConfigError, load_config, load_dict


@pytest.mark.parametrize("raw,message", [
    ({"train": {"lr": "fast"}}, 'train.lr: expected number > 0, got "fast"'),
    ({"train": {"lr": 0}}, "train.lr: expected number > 0, got 0"),
    ({"train": {"steps": 2.5}}, "train.steps: expected integer >= 1, got 2.5"),
    ({"model": {"n_layer": 0}}, "model.n_layer: expected integer >= 1 or null, got 0"),
    ({"model": {"arch": "gpt3"}}, 'model.arch: expected one of "gpt2", "llama", got "gpt3"'),
    ({"optimizer": {"betas": [0.9]}}, "optimizer.betas: expected list of exactly 2 items, got [0.9]"),
    ({"train": {"lrr": 1}}, "train.lrr: unknown key; expected one of batch_size,"),
    ({"bogus": 1}, "bogus: unknown key; expected one of checkpoint,"),
    ({"precision": {"plan": {"*.mlp.*": "int3"}}}, 'precision.plan.*.mlp.*: expected one of "bf16"'),
    ({"train": {"device": "tpu"}}, 'train.device: expected string matching ^(auto|cpu|cuda(:[0-9]+)?)$, got "tpu"'),
    ([1, 2], "(top level): expected object, got [1, 2]"),
])
def test_messages(raw, message):
    with pytest.raises(ConfigError) as err:
        load_dict(raw, source="cfg.json")
    assert str(err.value).startswith("cfg.json: ")
    assert message in str(err.value)


def test_set_overrides_are_typed_and_validated(tmp_path):
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"train": {"steps": 10}}))
    cfg = load_config(path, ["train.steps=50", "train.lr=3e-4", "name=abc", "optimizer.betas=[0.8,0.9]"])
    assert (cfg.train.steps, cfg.train.lr, cfg.name, cfg.optimizer.betas) == (50, 3e-4, "abc", (0.8, 0.9))
    with pytest.raises(ConfigError, match='train.lr: expected number > 0, got "fast"'):
        load_config(path, ["train.lr=fast"])


def test_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "broken.json"
    bad.write_text('{"train": {"lr": 1e-3,}}')
    with pytest.raises(ConfigError, match=r"broken\.json: line 1 column \d+: expected JSON"):
        load_config(bad)
    with pytest.raises(ConfigError, match="missing.json: .*file not found"):
        load_config(tmp_path / "missing.json")


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "koi_train", *args], capture_output=True, text=True)


def test_validate_command_exit_codes(tmp_path):
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps({"train": {"lr": 1e-3}}))
    bad.write_text(json.dumps({"train": {"lr": "fast"}}))
    ok = _cli("validate", str(good))
    assert ok.returncode == 0, ok.stderr
    broken = _cli("validate", str(bad))
    assert broken.returncode == 2
    assert broken.stderr.strip().count("\n") == 0
    assert broken.stderr.strip() == f'koi-train validate: {bad}: train.lr: expected number > 0, got "fast"'
