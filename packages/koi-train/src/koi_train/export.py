"""`koi-train export`: a Koi checkpoint (or run folder) -> HF safetensors + config.json."""

from __future__ import annotations

from pathlib import Path

from .hf_io import save_hf
from .load_model import load_trained_model


def export_checkpoint(checkpoint: str, output: str, expert: int | None = None) -> list[Path]:
    return save_hf(load_trained_model(checkpoint, expert), output)
