"""Format versions: today's checkpoints and configs carry one; older ones migrate on load, newer ones are refused."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config

from koi_train import CheckpointError, ConfigError, Trainer, load_dict, load_trained_model
from koi_train.checkpoint import load_checkpoint
from koi_train.config import config_to_dict
from koi_train.versions import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_MIGRATIONS,
    CONFIG_FORMAT,
    CONFIG_MIGRATIONS,
    FORMAT_KEY,
    migrate,
)


def _rewrite(path, change) -> None:
    state = torch.load(path, map_location="cpu", weights_only=True)
    change(state)
    torch.save(state, path)


@pytest.fixture(scope="module")
def run(prepared, tmp_path_factory):
    root = tmp_path_factory.mktemp("versions")
    raw = tiny_config(prepared, root, train={"steps": 8}, checkpoint={"every": 4, "keep_last": 2})
    Trainer(load_dict(raw), root / "run", log=lambda *_: None).fit()
    return root, raw


def test_checkpoints_and_resolved_configs_carry_the_version(run):
    root, raw = run
    state = torch.load(root / "run" / "checkpoints" / "step_00000008.pt", map_location="cpu", weights_only=True)
    assert state[FORMAT_KEY] == CHECKPOINT_FORMAT
    assert state["config"][FORMAT_KEY] == CONFIG_FORMAT
    assert config_to_dict(load_dict(raw))[FORMAT_KEY] == CONFIG_FORMAT


def test_an_unversioned_checkpoint_migrates_and_resumes_bit_for_bit(run, tmp_path):
    """A checkpoint as koi-train 0.1.0 wrote it (no version key, nor one in its config) still resumes and evaluates."""
    root, raw = run
    old_dir = tmp_path / "old" / "checkpoints"
    old_dir.mkdir(parents=True)
    old = old_dir / "step_00000004.pt"
    old.write_bytes((root / "run" / "checkpoints" / "step_00000004.pt").read_bytes())

    def strip(state):
        del state[FORMAT_KEY], state["config"][FORMAT_KEY]
    _rewrite(old, strip)
    assert FORMAT_KEY not in torch.load(old, weights_only=True)
    assert load_checkpoint(str(old))[FORMAT_KEY] == CHECKPOINT_FORMAT
    assert load_trained_model(str(old)).spec.n_layer == 2

    resumed = Trainer(load_dict(raw), tmp_path / "old", log=lambda *_: None)
    resumed.resume()
    resumed.fit()
    final = load_checkpoint(str(root / "run" / "checkpoints" / "step_00000008.pt"))["model"]
    for name, tensor in resumed.parts.model.state_dict().items():
        assert torch.equal(tensor, final[name]), name


def test_a_newer_checkpoint_or_config_is_refused_by_name(run, tmp_path):
    root, _ = run
    newer = tmp_path / "step_00000004.pt"
    newer.write_bytes((root / "run" / "checkpoints" / "step_00000004.pt").read_bytes())
    _rewrite(newer, lambda state: state.update({FORMAT_KEY: CHECKPOINT_FORMAT + 1}))
    with pytest.raises(CheckpointError, match=rf"step_00000004.pt: {FORMAT_KEY}: expected {CHECKPOINT_FORMAT} or older, got"):
        load_checkpoint(str(newer))
    with pytest.raises(ConfigError, match=rf"run.json: {FORMAT_KEY}: .*written by a newer koi-train"):
        load_dict({FORMAT_KEY: CONFIG_FORMAT + 1}, source="run.json")


def test_every_older_version_has_a_migration():
    assert set(CHECKPOINT_MIGRATIONS) == set(range(CHECKPOINT_FORMAT))
    assert set(CONFIG_MIGRATIONS) == set(range(1, CONFIG_FORMAT))  # a config without the key is today's


def test_migrations_chain_one_version_at_a_time():
    """How the next layout change will look: version 1 -> 2 renames a key, 2 -> 3 adds one."""
    migrations = {1: lambda d: {**{k: v for k, v in d.items() if k != "lr"}, "peak_lr": d["lr"]}, 2: lambda d: {**d, "warmup": 0}}
    errors = lambda field, problem: ValueError(f"{field}: {problem}")
    out = migrate({FORMAT_KEY: 1, "lr": 0.1}, current=3, migrations=migrations, missing_means=1, what="test", error=errors)
    assert out == {FORMAT_KEY: 3, "peak_lr": 0.1, "warmup": 0}
    with pytest.raises(ValueError, match="no migration from test format 0 to 1"):
        migrate({FORMAT_KEY: 0}, current=3, migrations=migrations, missing_means=1, what="test", error=errors)
    with pytest.raises(ValueError, match="expected a non-negative integer"):
        migrate({FORMAT_KEY: "1"}, current=3, migrations=migrations, missing_means=1, what="test", error=errors)
