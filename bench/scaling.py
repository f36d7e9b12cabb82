"""Scale-out on one host (issue 20): the job's tokens/s of `koi-train run` under torchrun against the plain reference's DDP job.

For each GPU count (``--gpus``, default 1, 2 and every visible GPU) and each side, one torchrun
job on that many GPUs, same per-GPU batch and sequence on every side (train_throughput.py's
cases), from the same initial weights:

- ``reference``: TARGETS.md's plain GPT-2 (bench/reference_gpt2.py) wrapped in DDP, then
  torch.compile, bf16 autocast, fused AdamW, clipping at 1.0: what a user writes for torchrun.
  One GPU runs it without DDP. ``reference-remat`` checkpoints each block (the 1558M case).
- ``koi`` (DDP), ``koi-fsdp`` (FSDP2), ``koi-remat`` / ``koi-remat-fsdp`` (full remat, for
  1558M): `koi-train run` through torchrun with ``distributed.strategy`` set; one GPU runs
  without a strategy.

Columns: the job's tokens/s, per GPU, the efficiency (per-GPU rate over the same side's one-GPU
rate), and the job against the reference's job at the same GPU count. Issue 20 asks for Koi's
DDP job at >= 1.25x the reference's at efficiency >= 0.95 (2 GPUs) and >= 0.92 (4), and for
FSDP2's efficiency at 1558M. Rows print as each job ends (a failed job is marked and the rest go
on) and land in $OUT/scaling.jsonl.

    python bench/scaling.py                                     # 124M: reference and koi, 1 / 2 / all GPUs
    python bench/scaling.py --case 1558M-remat --side reference-remat --side koi-remat-fsdp --steps 10
    python bench/scaling.py --smoke                             # tiny GPT-2, 1 and 2 processes on the CPU (gloo)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from data_tokens import make_shards  # noqa: E402
from train_throughput import CASES, ReferenceRun, koi_config, run_koi_config  # noqa: E402

REFERENCE_SIDES = {"reference": False, "reference-remat": True}  # side -> checkpoint each block
KOI_SIDES = {  # side -> (distributed strategy on several GPUs, extra config)
    "koi": ("ddp", {}),
    "koi-fsdp": ("fsdp", {}),
    "koi-remat": ("ddp", {"remat": {"mode": "full"}}),
    "koi-remat-fsdp": ("fsdp", {"remat": {"mode": "full"}}),
}
ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
TARGET_EFFICIENCY = {2: 0.95, 4: 0.92}
TARGET_VS_REFERENCE = 1.25


def torchrun(gpus: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}"]


# The reference, one process per GPU ----------------------------------------------------------------

def reference_worker(case: str, remat: bool, steps: int, shards: Path, smoke: bool) -> None:
    """One rank of the reference's job; rank 0 prints the job's row (the slowest rank's time)."""
    import torch.distributed as dist

    cuda = not smoke
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    reference = ReferenceRun(case, remat, shards, device=device, rank=rank, distributed=world > 1)
    for i in range(2 * steps):
        if i == steps:
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            dist.barrier()
            start = time.perf_counter()
        loss = reference.step()
    if cuda:
        torch.cuda.synchronize()
    seconds = torch.tensor([time.perf_counter() - start])
    peak = torch.tensor([torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0])
    dist.all_reduce(seconds, op=dist.ReduceOp.MAX)  # the job is as fast as its slowest rank
    dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    if rank == 0:
        per_gpu = steps * reference.batch * reference.seq / float(seconds)
        print("ROW " + json.dumps({"tokens_per_s": per_gpu * world, "tokens_per_s_per_gpu": per_gpu, "peak_gib": float(peak),
                                   "loss": float(loss)}), flush=True)
    dist.destroy_process_group()


def run_reference(case: str, side: str, gpus: int, steps: int, shards: Path, smoke: bool) -> dict:
    command = [*torchrun(gpus), __file__, "--reference-worker", case, side, "--steps", str(steps), "--shards", str(shards)]
    done = subprocess.run(command + (["--smoke"] if smoke else []), capture_output=True, text=True, env={**os.environ, **ENV})
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("ROW ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(" | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])[-400:])
    return json.loads(line[4:])


# Koi: `koi-train run` under torchrun -------------------------------------------------------------

def run_koi(case: str, side: str, gpus: int, steps: int, shards: Path, work: Path, smoke: bool) -> dict:
    strategy, extra = KOI_SIDES[side]
    run_root = Path(tempfile.mkdtemp(dir=work, prefix=f"{side}-{gpus}-"))
    try:
        config = koi_config(case, steps, shards, run_root, "koi")
        config["name"] = side
        for key, value in extra.items():
            config[key] = {**config.get(key, {}), **value}
        config["distributed"] = {"strategy": strategy if gpus > 1 else "none"}
        if smoke:
            config["train"].update(device="cpu", compile=False)
        row, _ = run_koi_config(config, run_root, torchrun(gpus) if gpus > 1 else [sys.executable], steps, ENV)
    finally:
        shutil.rmtree(run_root, ignore_errors=True)
    return {"tokens_per_s": row["tokens_per_s"], "tokens_per_s_per_gpu": row.get("tokens_per_s_per_device", row["tokens_per_s"]),
            "peak_gib": row.get("peak_memory_gib") or 0.0, "loss": row["loss"]}


# The table --------------------------------------------------------------------------------------

def verdict(side: str, gpus: int, efficiency: float | None, vs_reference: float | None) -> str:
    if side.startswith("reference") or gpus == 1:
        return ""
    notes = []
    if efficiency is not None and gpus in TARGET_EFFICIENCY:
        notes.append(f"efficiency {'meets' if efficiency >= TARGET_EFFICIENCY[gpus] else 'misses'} {TARGET_EFFICIENCY[gpus]}")
    if vs_reference is not None:
        notes.append(f"job {'meets' if vs_reference >= TARGET_VS_REFERENCE else 'misses'} {TARGET_VS_REFERENCE}x")
    return "; ".join(notes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", default="124M", choices=list(CASES))
    parser.add_argument("--side", action="append", choices=[*REFERENCE_SIDES, *KOI_SIDES], help="default: reference, koi")
    parser.add_argument("--gpus", help="comma-separated GPU counts (default: 1, 2 and all visible)")
    parser.add_argument("--steps", type=int, default=30, help="warm-up steps, then as many timed")
    parser.add_argument("--smoke", action="store_true", help="the tiny case on the CPU (gloo), 1 and 2 processes: checks the script")
    parser.add_argument("--reference-worker", nargs=2, metavar=("CASE", "SIDE"), help=argparse.SUPPRESS)
    parser.add_argument("--shards", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.reference_worker:
        case, side = args.reference_worker
        reference_worker(case, REFERENCE_SIDES[side], args.steps, Path(args.shards), args.smoke)
        return
    case = "tiny" if args.smoke else args.case
    visible = 2 if args.smoke else torch.cuda.device_count()
    counts = sorted({int(n) for n in args.gpus.split(",")} if args.gpus else {1, min(2, visible), visible})
    counts = [n for n in counts if 0 < n <= visible]
    out = Path(os.environ.get("OUT") or (tempfile.mkdtemp(prefix="koi-scaling-smoke-") if args.smoke else REPO / "bench" / "results"))
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="koi-scaling-"))
    shards = work / "shards"
    make_shards(shards)
    name = "cpu (gloo)" if args.smoke else f"{visible} x {torch.cuda.get_device_name()}"
    print(f"{name}, torch {torch.__version__}, case {case}, GPU counts {counts}, {args.steps} warm-up + {args.steps} timed steps",
          flush=True)
    print(f"{'side':<16}{'GPUs':>5}{'job tok/s':>12}{'per GPU':>11}{'efficiency':>11}{'vs ref job':>11}{'peak GiB':>9}  target",
          flush=True)
    one_gpu: dict[str, float] = {}
    reference_job: dict[int, float] = {}
    try:
        for gpus in counts:
            for side in args.side or ["reference", "koi"]:
                record = {"case": case, "side": side, "gpus": gpus, "date": time.strftime("%Y-%m-%d")}
                try:
                    if side in REFERENCE_SIDES:
                        row = run_reference(case, side, gpus, args.steps, shards, args.smoke)
                    else:
                        row = run_koi(case, side, gpus, args.steps, shards, work, args.smoke)
                except Exception as exc:  # noqa: BLE001 - a bench row reports any failure and the rest still run
                    row = {"error": f"{type(exc).__name__}: {exc}"[-400:]}
                record.update(row)
                with (out / "scaling.jsonl").open("a") as f:
                    f.write(json.dumps(record) + "\n")
                if "error" in row:
                    print(f"{side:<16}{gpus:>5}  FAILED: {row['error']}", flush=True)
                    continue
                if gpus == 1:
                    one_gpu[side] = row["tokens_per_s"]
                if side.startswith("reference"):
                    reference_job.setdefault(gpus, row["tokens_per_s"])
                efficiency = row["tokens_per_s_per_gpu"] / one_gpu[side] if side in one_gpu else None
                vs_reference = row["tokens_per_s"] / reference_job[gpus] if gpus in reference_job else None
                print(f"{side:<16}{gpus:>5}{row['tokens_per_s']:>12,.0f}{row['tokens_per_s_per_gpu']:>11,.0f}"
                      f"{'-' if efficiency is None else f'{efficiency:.3f}':>11}"
                      f"{'-' if vs_reference is None else f'{vs_reference:.2f}x':>11}{row['peak_gib']:>9.2f}  "
                      f"{verdict(side, gpus, efficiency, vs_reference)}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
