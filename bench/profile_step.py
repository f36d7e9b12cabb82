"""Where a training step's time goes: the plain reference against `koi-train run`'s trainer, profiled.

Each side runs in this process on the same real tokens: 124M GPT-2, batch 32x1024, compiled,
``--warmup`` steps, then ``--steps`` steps under torch.profiler. Per side it prints the wall time
per step, the GPU's kernel time per step (the difference is time the GPU waited for the host),
and the kernels that take the most time, so a speed change can start from a measurement.
Koi's side is the Trainer that `koi-train run` builds, from the same config as
bench/train_throughput.py's `koi` side.

    python bench/profile_step.py --side reference --side koi
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from data_tokens import make_shards  # noqa: E402
from train_throughput import CASES, ReferenceRun, koi_config  # noqa: E402

HOST_READS = ("aten::_local_scalar_dense", "cudaStreamSynchronize", "cudaDeviceSynchronize")  # .item(), float(t), syncs
ACTIVITIES = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])


def summarize(name: str, prof, steps: int, seconds: float, top: int) -> dict:
    averages = prof.key_averages()
    events = [e for e in averages if e.device_type == torch.autograd.DeviceType.CUDA]
    kernel_us = sum(e.self_device_time_total for e in events)
    host_reads = sum(e.count for e in averages if e.key in HOST_READS) / steps
    row = {"side": name, "wall_ms_per_step": 1e3 * seconds / steps, "gpu_ms_per_step": kernel_us / 1e3 / steps,
           "host_reads_per_step": host_reads}
    print(f"\n== {name}: {row['wall_ms_per_step']:.1f} ms wall per step, {row['gpu_ms_per_step']:.1f} ms of GPU kernels "
          f"({row['gpu_ms_per_step'] / row['wall_ms_per_step']:.0%} busy), {host_reads:.1f} host reads or syncs per step",
          flush=True)
    for e in sorted(events, key=lambda e: e.self_device_time_total, reverse=True)[:top]:
        print(f"  {e.self_device_time_total / 1e3 / steps:8.2f} ms/step  {e.count // steps:>5} calls/step  {e.key[:110]}", flush=True)
    host = [e for e in averages if e.device_type == torch.autograd.DeviceType.CPU]
    print("  host side, by self CPU time:", flush=True)
    for e in sorted(host, key=lambda e: e.self_cpu_time_total, reverse=True)[: max(5, top // 2)]:
        print(f"  {e.self_cpu_time_total / 1e3 / steps:8.2f} ms/step  {e.count / steps:>7.1f} calls/step  {e.key[:110]}", flush=True)
    return row


@functools.cache
def real_shards() -> Path:
    """The real-text shards every side trains on, tokenized once per process (every side reads the same)."""
    return make_shards(Path(tempfile.mkdtemp(prefix="koi-profile-shards-")))


def profile_reference(case: str, warmup: int, steps: int, top: int) -> dict:
    reference = ReferenceRun(case, remat=case.endswith("-remat"), shards=real_shards())  # checkpointed where its case is
    for _ in range(warmup):
        reference.step()
    torch.cuda.synchronize()
    with profile(activities=ACTIVITIES) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            reference.step()
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    return summarize("reference", prof, steps, seconds, top)


def profile_koi(case: str, side: str, warmup: int, steps: int, top: int) -> dict:
    """The trainer of `koi-train run`, profiled from its step ``warmup`` for ``steps`` steps."""
    from koi_train import Trainer, load_dict

    work = Path(tempfile.mkdtemp(prefix="koi-profile-"))
    raw = koi_config(case, (warmup + steps + 1) // 2 + 1, real_shards(), work, side)
    raw["train"]["log_every"] = 10_000
    raw["train"]["device"] = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: a check of the script itself
    trainer = Trainer(load_dict(raw), work / side, log=lambda *_: None)
    state: dict = {}
    original = trainer.train_step

    def train_step():  # steps warmup .. warmup + steps - 1 run whole (update included) under the profiler
        if trainer.step in (warmup, warmup + steps):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            if trainer.step == warmup:
                state["prof"] = profile(activities=ACTIVITIES).__enter__()
                state["start"] = time.perf_counter()
            else:
                state["seconds"] = time.perf_counter() - state["start"]
                state["prof"].__exit__(None, None, None)
        return original()

    trainer.train_step = train_step
    trainer.fit()
    return summarize(side, state["prof"], steps, state["seconds"], top)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=list(CASES), default="124M")
    parser.add_argument("--side", action="append", help="reference, or a koi side of bench/train_throughput.py")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    rows = []
    for side in args.side or ["reference", "koi"]:
        try:
            if side == "reference":
                rows.append(profile_reference(args.case, args.warmup, args.steps, args.top))
            else:
                rows.append(profile_koi(args.case, side, args.warmup, args.steps, args.top))
        except Exception as exc:  # a failing side is reported; the next one still runs
            print(f"\n== {side}: FAILED {type(exc).__name__}: {exc}"[:400], flush=True)
    print("\n" + json.dumps(rows), flush=True)


if __name__ == "__main__":
    main()
