"""Checkpoints: everything needed to continue a run bit for bit, written atomically.

A checkpoint is one ``step_XXXXXXXX.pt`` file holding plain tensors, numbers and strings, loaded
with ``weights_only=True`` so opening a file from elsewhere cannot run code. Local files go
through temp file + fsync + rename; fsspec URLs are written to a temp name and moved. Each file
records its layout's `format_version`; loading migrates an older one (`versions.py`).

File helpers (`atomic_write_bytes`, `is_url`) come from koi-tokenizer's public API: koi-train
depends on it anyway, and one owner for atomic writes keeps shards and checkpoints written alike.
"""

from __future__ import annotations

import io
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from koi_tokenizer import atomic_write_bytes, is_url

from .errors import CheckpointError
from .versions import CHECKPOINT_FORMAT, FORMAT_KEY, migrate_checkpoint

STEP_FILE = re.compile(r"step_(\d{8})(\.pt)?$")  # a file, or a folder of DCP shards


def _fs(path: str):
    import fsspec

    return fsspec.core.url_to_fs(path)[0]


def checkpoint_path(directory: str, step: int) -> str:
    return f"{directory.rstrip('/')}/step_{step:08d}.pt"


def list_checkpoints(directory: str) -> list[tuple[int, str]]:
    if is_url(directory):
        fs = _fs(directory)
        names = fs.ls(directory, detail=False) if fs.exists(directory) else []
        entries = [(n, fs.unstrip_protocol(n)) for n in names]
    else:
        root = Path(directory)
        entries = [(p.name, str(p)) for p in root.iterdir()] if root.is_dir() else []
    found = [(int(m.group(1)), full) for name, full in entries if (m := STEP_FILE.search(name))]
    return sorted(found)


def save_checkpoint(directory: str, step: int, state: dict[str, Any], *, keep_last: int) -> str:
    buffer = io.BytesIO()
    torch.save({**state, FORMAT_KEY: CHECKPOINT_FORMAT}, buffer)
    path = checkpoint_path(directory, step)
    if is_url(path):
        fs = _fs(path)
        fs.makedirs(directory, exist_ok=True)
        with fs.open(path + ".tmp", "wb") as f:
            f.write(buffer.getvalue())
        fs.mv(path + ".tmp", path)
    else:
        atomic_write_bytes(path, buffer.getvalue())
    prune_checkpoints(directory, keep_last)
    return path


def prune_checkpoints(directory: str, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` checkpoints, files or folders of DCP shards alike."""
    for _, old in list_checkpoints(directory)[:-keep_last]:
        if is_url(old):
            _fs(old).rm(old, recursive=True)
        elif Path(old).is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            Path(old).unlink(missing_ok=True)


REQUIRED_KEYS = ("step", "model", "optimizer", "data", "rng")


def load_checkpoint(path: str) -> dict[str, Any]:
    try:
        if is_url(path):
            with _fs(path).open(path, "rb") as f:
                state = torch.load(io.BytesIO(f.read()), map_location="cpu", weights_only=True)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(path, "file", "not found") from None
    except Exception as exc:  # a truncated or foreign file fails in many ways; all mean "not a checkpoint"
        raise CheckpointError(path, "contents", f"expected a Koi checkpoint, could not read it ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict):
        raise CheckpointError(path, "contents", f"expected a Koi checkpoint (a dict), got {type(state).__name__}")
    state = migrate_checkpoint(state, lambda field, problem: CheckpointError(path, field, problem))
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise CheckpointError(path, missing[0], "expected this key in the checkpoint, it is missing")
    return state


def latest_checkpoint(directory: str) -> str | None:
    found = list_checkpoints(directory)
    return found[-1][1] if found else None
