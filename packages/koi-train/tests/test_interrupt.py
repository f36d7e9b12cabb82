"""Ctrl-C at any moment, then `koi-train resume`, ends bit for bit where the uninterrupted run ends.

Real SIGINTs go to a real `koi-train` process at random moments: during start-up, mid-step,
during evaluation or a checkpoint write. A finished run is left alone by `resume`.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from conftest import tiny_config

from koi_train.checkpoint import latest_checkpoint, load_checkpoint
from koi_train.cli import main

STEPS = 40


def _config(prepared, tmp_path: Path, name: str) -> Path:
    raw = tiny_config(prepared, tmp_path, name=name, model={"dropout": 0.1}, train={"steps": STEPS, "log_every": 1},
                      eval={"every": 15, "max_windows": 4}, checkpoint={"every": 10, "keep_last": 2})
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(raw))
    return path


def _start(args: list[str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "koi_train", *args], stdout=out, stderr=subprocess.STDOUT)


def _wait_for(log: Path, text: str, proc: subprocess.Popen, after: int = 0, timeout: float = 120) -> None:
    """Until ``text`` shows in the log past byte ``after`` (or the process ended)."""
    deadline = time.monotonic() + timeout
    while text.encode() not in log.read_bytes()[after:] and proc.poll() is None:
        assert time.monotonic() < deadline, log.read_text(errors="replace")[-2000:]
        time.sleep(0.01)


def _train_records(run_dir: Path) -> list[tuple]:
    """What must be equal: every logged loss, grad norm, lr and eval loss, in order (timings may differ)."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    keys = ("kind", "step", "loss", "grad_norm", "lr", "val_loss")
    return [tuple(r.get(k) for k in keys) for r in records if r["kind"] in ("train", "eval", "summary")]


def test_sigint_at_random_moments_then_resume_equals_uninterrupted(prepared, tmp_path):
    whole = tmp_path / "whole"
    assert main(["run", str(_config(prepared, tmp_path, "whole"))]) == 0

    rng = random.Random(20240607)
    log, run_dir = tmp_path / "cut.log", tmp_path / "cut"
    proc = _start(["run", str(_config(prepared, tmp_path, "cut"))], log)
    # The first SIGINT lands in training whatever the machine's speed: at a random step's progress
    # line (a delay counted from the run folder's line let a fast machine finish all 40 steps first);
    # start-up is the third SIGINT's moment.
    step = rng.randint(2, STEPS - 10)
    _wait_for(log, f"step {step:>6}/{STEPS}", proc)
    moments = [f"at step {step}'s line"]
    for attempt in range(4):
        if attempt:
            offset = log.stat().st_size
            proc = _start(["resume", str(run_dir)], log)
            if attempt == 2:  # once during start-up: imports, setup, loading the checkpoint
                moments.append(f"{rng.uniform(0.0, 3.0):.2f}s after start")
            else:  # else mid-training: mid-step, in an evaluation or a checkpoint write
                _wait_for(log, "step ", proc, after=offset)
                moments.append(f"{rng.uniform(0.0, 1.5):.2f}s after its first step")
            time.sleep(float(moments[-1].split("s")[0]))
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=120)
        assert code in (0, 130, -signal.SIGINT), log.read_text()[-2000:]
        if code == 0:
            break
    else:
        proc = _start(["resume", str(run_dir)], log)
        assert proc.wait(timeout=300) == 0, log.read_text()[-2000:]
    text = log.read_text()
    assert "interrupted at step" in text, f"no SIGINT landed in training ({moments}):\n{text[-2000:]}"

    assert _train_records(run_dir) == _train_records(whole), f"SIGINTs at {moments}"
    final_cut = load_checkpoint(latest_checkpoint(str(run_dir / "checkpoints")))
    final_whole = load_checkpoint(latest_checkpoint(str(whole / "checkpoints")))
    assert final_cut["step"] == final_whole["step"] == STEPS
    _assert_identical(final_cut["model"], final_whole["model"], "model")
    _assert_identical(final_cut["optimizer"], final_whole["optimizer"], "optimizer")


def _assert_identical(a, b, where: str) -> None:
    """Nested dicts/lists of tensors and numbers, equal bit for bit."""
    if torch.is_tensor(b):
        assert torch.equal(a, b), where
    elif isinstance(b, dict):
        assert a.keys() == b.keys(), where
        for key in b:
            _assert_identical(a[key], b[key], f"{where}.{key}")
    elif isinstance(b, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_ctrl_c_after_the_last_step_stops_at_once_and_resume_finishes(prepared, tmp_path, monkeypatch, capsys):
    """A Ctrl-C in the final evaluation used to be deferred and then never looked at: "done", exit 0."""
    from koi_train.trainer import Trainer

    real_evaluate, signalled = Trainer.evaluate, []

    def evaluate(self, *, full=False):
        if self.step == 6 and not signalled:  # the end-of-run evaluation, once (the resumed run's goes through)
            signalled.append(True)
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1.0)  # the handler runs at the next bytecode: this sleep is cut short
            raise AssertionError("SIGINT did not stop the final evaluation")
        return real_evaluate(self, full=full)

    monkeypatch.setattr(Trainer, "evaluate", evaluate)
    config = _config(prepared, tmp_path, "tail")
    assert main(["run", str(config), "--set", "train.steps=6", "--set", "eval.every=0"]) == 130
    run_dir = tmp_path / "tail"
    assert "interrupted after the last step" in capsys.readouterr().out
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert not [r for r in records if r["kind"] == "summary"]  # nothing of the ending was written
    assert main(["resume", str(run_dir)]) == 0
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "summary"] == [6]
    assert [r["step"] for r in records if r["kind"] == "train"] == list(range(1, 7))
    assert (run_dir / "loss.png").exists()


def test_resume_of_a_finished_run_leaves_it_untouched(prepared, tmp_path, capsys):
    config = _config(prepared, tmp_path, "done")
    assert main(["run", str(config), "--set", "train.steps=4", "--set", "eval.every=0"]) == 0
    run_dir = tmp_path / "done"
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in run_dir.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main(["resume", str(run_dir)]) == 0
    out = capsys.readouterr().out
    hint = f"koi-train resume {run_dir} --set train.steps=N"
    assert out.strip() == f"{run_dir}: complete at step 4 of 4, nothing to do (to train longer: {hint})"
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in run_dir.rglob("*") if p.is_file()} == before


def test_run_files_follow_the_umask(prepared, tmp_path):
    """Checkpoints and config.json are as readable as metrics.jsonl (atomic writes used to make them 0600)."""
    old = os.umask(0o022)
    try:
        assert main(["run", str(_config(prepared, tmp_path, "modes")), "--set", "train.steps=2", "--set", "eval.every=0"]) == 0
    finally:
        os.umask(old)
    run_dir = tmp_path / "modes"
    for path in (run_dir / "config.json", run_dir / "metrics.jsonl", run_dir / "tokenizer.json",
                 Path(latest_checkpoint(str(run_dir / "checkpoints")))):
        assert path.stat().st_mode & 0o777 == 0o644, path
