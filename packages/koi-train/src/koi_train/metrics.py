"""Run outputs a person and a program can read: metrics.jsonl and loss.png."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from koi_tokenizer import atomic_write_bytes


class MetricsLog:
    """Appends one JSON object per line and flushes, so a crash keeps everything logged so far."""

    def __init__(self, path: Path, *, truncate_after_step: int | None = None) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if truncate_after_step is not None and path.exists():
            # On resume, drop records from steps the checkpoint does not contain, so the curve is continuous.
            kept = [line for line in path.read_text().splitlines() if line and json.loads(line).get("step", 0) <= truncate_after_step]
            atomic_write_bytes(path, "".join(line + "\n" for line in kept).encode())  # a Ctrl-C here must not cut the file
        self._file = open(path, "a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


class NullMetrics:
    """What ranks other than 0 write to: nothing."""

    def write(self, record: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


def read_metrics(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def final_summary(path: Path, steps: int) -> dict[str, Any] | None:
    """The summary a finished run wrote (at ``steps`` or later), or None while the run still has steps to go."""
    if not path.exists():
        return None
    done = [r for r in read_metrics(path) if r.get("kind") == "summary" and r.get("step", 0) >= steps]
    return done[-1] if done else None


def plot_loss(metrics_path: Path, image_path: Path) -> None:
    """Train loss (and val loss where recorded) against tokens seen."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path)
    train = [(r["tokens"], r["loss"]) for r in records if r.get("kind") == "train" and math.isfinite(r["loss"])]
    val = [(r["tokens"], r["val_loss"]) for r in records if r.get("kind") == "eval"]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot(*zip(*train), label="train loss", linewidth=1)
    if val:
        ax.plot(*zip(*val), "o-", label="val loss (sampled)")
    ax.set_xlabel("tokens")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = image_path.with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, image_path)
