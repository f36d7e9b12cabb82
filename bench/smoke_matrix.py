"""Every config path trains on the card: `koi-train run` on GPT-2 124M for 50 steps, one row per path.

Rows cover every format of `precision.plan` (fp8 also on real fp8 matmuls: row, row-fused and tile scales),
compile on and off, each optimizer, bf16 weights, the optimizer in backward, each remat mode, CUDA
graphs with gradient accumulation, and DDP / FSDP over 2 GPUs. Each row is its own `koi-train run` process (a crash marks that row
failed and the rest go on); rows run several at a time, spread over the visible GPUs, so tok/s
here is a sanity figure, not a benchmark (bench/train_throughput.py times speed alone). A row is
printed as soon as it ends; compiled and eager twins of one config must end within 0.02 in loss
(the last step's; the note also gives the gap of the mean over the last 10 steps, which one
batch's luck moves less).

    python bench/smoke_matrix.py                      # all rows, GPUs from torch.cuda.device_count()
    python bench/smoke_matrix.py --only int4 --steps 20
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
from data_tokens import make_shards, shared_data  # noqa: E402

FORMATS = ["int8", "int4", "int2", "ternary", "binary", "nf4", "fp8"]  # every low-bit format the config schema allows
BOTH = ("compiled", "eager")
REPEAT = "-repeat"
TWINS = ("bf16", "int8", "int4", "ternary", "binary", "fp8")  # formats also run eagerly, to compare with compile


def rows() -> list[tuple[str, dict, int]]:
    """(name, config overrides, processes)."""
    out: list[tuple[str, dict, int]] = []
    blocks = "transformer.h.*"
    for fmt in ["bf16", *FORMATS]:
        precision = {"plan": {blocks: fmt}} if fmt != "bf16" else {}
        for mode in BOTH if fmt in TWINS else ("compiled",):
            out.append((f"{fmt}/{mode}", {"precision": precision, "train": {"compile": mode == "compiled"}}, 1))
    # The same config again: GPU kernels are not deterministic, so one trajectory's spread is the floor
    # a compiled/eager twin's gap is read against (on the H200 it has exceeded the 0.02)
    out.append((f"bf16/eager{REPEAT}", {"train": {"compile": False}}, 1))
    for scaling in ("row", "row-fused", "tile"):
        for mode in BOTH:
            out.append((f"fp8-matmul-{scaling}/{mode}", {"precision": {"plan": {blocks: "fp8"}, "fp8_matmul": True,
                                                                        "fp8_scaling": scaling},
                                                         "train": {"compile": mode == "compiled"}}, 1))
    for name in ("adamw8bit", "muon", "lion"):
        lr = {"lion": 1e-4}.get(name, 6e-4)
        out.append((f"opt-{name}/compiled", {"optimizer": {"name": name}, "train": {"compile": True, "lr": lr}}, 1))
    out.append(("bf16-weights/compiled", {"optimizer": {"weights": "bf16"}, "train": {"compile": True}}, 1))
    for name in ("adamw", "adamw8bit"):
        out.append((f"in-backward-{name}/compiled", {"optimizer": {"name": name},
                                                     "train": {"compile": True, "optimizer_in_backward": True, "grad_clip": 0.0},
                                                     "instability": {"action": "rollback"}}, 1))
    for mode in ("ffn", "selective", "full"):
        out.append((f"remat-{mode}/compiled", {"remat": {"mode": mode}, "train": {"compile": True}}, 1))
    # CUDA graphs (train.compile_mode reduce-overhead) with accumulation, the case where a replay could
    # overwrite gradients being summed: its eager twin trains the same micro-batches without graphs
    for mode in BOTH:
        out.append((f"accum2-cuda-graphs/{mode}", {"train": {"compile": mode == "compiled", "compile_mode": "reduce-overhead",
                                                             "batch_size": 4, "grad_accum": 2}}, 1))
    for strategy in ("ddp", "fsdp"):
        out.append((f"{strategy}-2gpu/compiled", {"distributed": {"strategy": strategy, "backend": "nccl"},
                                                  "train": {"compile": True, "batch_size": 4}}, 2))
    return out


def base_config(shards: Path, work: Path, name: str, steps: int, device: str, preset: str) -> dict:
    return {
        "name": name.replace("/", "-"), "out_dir": str(work), "seed": 1337,
        "model": {"arch": "gpt2", "preset": preset},
        "data": {"train": [str(shards / "*_train_*.bin")], "val": [str(shards / "*_val_*.bin")],
                 "tokenizer": str(shared_data() / "gpt2")},
        "train": {"steps": steps, "batch_size": 8, "lr": 6e-4, "warmup_steps": 5, "device": device, "log_every": 10},
        "eval": {"every": 0, "max_windows": 16, "sample_prompt": None},
        "checkpoint": {"every": 0, "keep_last": 1},
    }


def merge(base: dict, overrides: dict) -> dict:
    out = dict(base)
    for key, value in overrides.items():
        out[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return out


def launch(name: str, cfg: dict, nproc: int, gpus: list[int], work: Path) -> tuple[subprocess.Popen, Path]:
    path = work / f"{cfg['name']}.json"
    path.write_text(json.dumps(cfg))
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ",".join(map(str, gpus)), "NCCL_NVLS_ENABLE": "0"}
    if nproc > 1:
        # --standalone: torchrun takes a free port itself (a hashed port could collide between rows)
        command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--standalone",
                   "-m", "koi_train", "run", str(path)]
    else:
        command = [sys.executable, "-m", "koi_train", "run", str(path)]
    log = work / f"{cfg['name']}.log"
    return subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env), log


def result(name: str, cfg: dict, code: int, log: Path, work: Path) -> dict:
    metrics = Path(cfg["out_dir"]) / cfg["name"] / "metrics.jsonl"
    train = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
    train = [r for r in train if r.get("kind") == "train"]
    if code != 0 or not train or train[-1]["step"] != cfg["train"]["steps"]:
        tail = log.read_text(errors="replace").strip().splitlines()[-3:] if log.exists() else []
        return {"name": name, "ok": False, "error": " | ".join(tail)[-300:]}
    last = train[-1]
    finite = all(abs(r["loss"]) < float("inf") and r["loss"] == r["loss"] for r in train)
    return {"name": name, "ok": finite, "loss": last["loss"], "loss_mean": last.get("loss_mean"), "tokens_per_s": last.get("tokens_per_s"),
            "peak_gib": last.get("peak_memory_gib"), "error": "" if finite else "non-finite loss"}


def twin_note(name: str, done: dict[str, dict]) -> str:
    """How far this row's loss is from its compiled/eager twin's, and from a repeat of the same config."""
    def gap(a: str, b: str, key: str = "loss") -> float | None:
        ra, rb = done.get(a), done.get(b)
        if not (ra and rb and ra.get("ok") and rb.get("ok")) or ra.get(key) is None or rb.get(key) is None:
            return None
        return abs(ra[key] - rb[key])

    def mean_gap(a: str, b: str) -> str:
        g = gap(a, b, "loss_mean")
        return "" if g is None else f", last 10 steps' mean {g:.4f}"

    base = name.removesuffix(REPEAT)
    notes = []
    if name == base:
        twin = name.replace("/compiled", "/eager") if name.endswith("/compiled") else name.replace("/eager", "/compiled")
        if twin != name and (g := gap(name, twin)) is not None:
            notes.append(f"compiled vs eager {g:.4f} {'OK' if g <= 0.02 else 'DIFFERENT'}{mean_gap(name, twin)}")
    if (g := gap(base, base + REPEAT)) is not None:
        notes.append(f"same config twice {g:.4f} apart{mean_gap(base, base + REPEAT)} (run-to-run spread)")
    return "; ".join(notes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--per-gpu", type=int, default=4, help="rows sharing one GPU at a time")
    parser.add_argument("--only", default="", help="comma-separated substrings of row names")
    parser.add_argument("--out", default=os.environ.get("OUT", "bench/results"))
    parser.add_argument("--device", default="cuda", help="cpu: a quick check of the script itself (tiny model)")
    args = parser.parse_args()
    gpu_count = torch.cuda.device_count() if args.device == "cuda" else 1
    preset = "gpt2-124M" if args.device == "cuda" else "gpt2-tiny"
    wanted = [r for r in rows() if not args.only or any(s in r[0] for s in args.only.split(","))]
    wanted = [r for r in wanted if r[2] <= gpu_count] + [r for r in wanted if r[2] > gpu_count]
    work = Path(tempfile.mkdtemp(prefix="koi-smoke-"))
    shards = make_shards(work / "shards")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = out / "smoke_matrix.jsonl"
    print(f"{len(wanted)} rows, {gpu_count} GPUs, {args.per_gpu} rows per GPU at a time, {args.steps} steps", flush=True)
    print(f"{'row':<34} {'loss':>8} {'tok/s':>9} {'peak GiB':>9}  note", flush=True)
    slots = {g: args.per_gpu for g in range(gpu_count)}
    running: list[tuple[str, dict, subprocess.Popen, Path, list[int]]] = []
    pending = list(wanted)
    done: dict[str, dict] = {}
    while pending or running:
        for item in list(pending):
            name, overrides, nproc = item
            if nproc > gpu_count:
                pending.remove(item)
                done[name] = {"name": name, "ok": False, "error": f"needs {nproc} GPUs, {gpu_count} visible"}
                print(f"{name:<34} {'-':>8} {'-':>9} {'-':>9}  skipped: {done[name]['error']}", flush=True)
                continue
            free = sorted((g for g in slots if slots[g] > 0), key=lambda g: -slots[g])
            if nproc > 1 and any(slots[g] < args.per_gpu for g in slots):
                continue  # a multi-GPU row waits for idle cards
            if len(free) < nproc:
                continue
            gpus = free[:nproc]
            for g in gpus:
                slots[g] -= args.per_gpu if nproc > 1 else 1
            cfg = merge(base_config(shards, work, name, args.steps, args.device, preset), overrides)
            proc, log = launch(name, cfg, nproc, gpus, work)
            running.append((name, cfg, proc, log, gpus))
            pending.remove(item)
        for entry in list(running):
            name, cfg, proc, log, gpus = entry
            if proc.poll() is None:
                continue
            running.remove(entry)
            for g in gpus:
                slots[g] += args.per_gpu if len(gpus) > 1 else 1
            row = result(name, cfg, proc.returncode, log, work)
            # 31 runs of 124M leave ~45 GB of checkpoints: each row's folder goes once it is read (a failed
            # row's log is kept beside the table), which is what filled a 64 GB card's disk in the seventh session
            shutil.rmtree(Path(cfg["out_dir"]) / cfg["name"], ignore_errors=True)
            if not row["ok"] and log.exists():
                shutil.copyfile(log, out / f"smoke_{name.replace('/', '_')}.log")
            done[name] = row
            with table.open("a") as f:
                f.write(json.dumps(row) + "\n")
            if row["ok"]:
                print(f"{name:<34} {row['loss']:>8.4f} {row['tokens_per_s'] or 0:>9,.0f} {row['peak_gib'] or 0:>9.2f}  "
                      f"{twin_note(name, done)}", flush=True)
            else:
                print(f"{name:<34} FAILED: {row['error']}", flush=True)
        time.sleep(1)
    shutil.rmtree(work, ignore_errors=True)
    failed = [n for n, r in done.items() if not r["ok"]]
    print(f"{len(done) - len(failed)} rows trained, {len(failed)} failed" + (f": {', '.join(failed)}" if failed else ""))


if __name__ == "__main__":
    main()
