"""Training throughput and peak memory: `koi-train run` against the plain PyTorch GPT-2, same card, same run.

Koi's sides are real `koi-train run` processes (the code path a user runs), configured by the
overrides below; the reference is TARGETS.md's plain loop (bench/reference_gpt2.py: compile, bf16
autocast, SDPA, fused AdamW, TF32). Every side runs alone in its own process, from the same
initial weights on the same batches: the reference starts from the weights a Koi run of seed 1337
draws and takes Koi's random windows from the same shards with the same seed, so the mean loss
over the timed steps compares between sides (TARGETS.md's parity: within 0.02 over 200 steps in
bf16; the last batch's loss alone varies by tenths of a nat from one part of the corpus to
another). The first ``--steps`` steps warm up (compile), the next ``--steps`` are timed. Each row
prints as soon as it is measured, a failing side is marked and the rest go on, and the rows land
in $OUT/train_throughput.jsonl (or bench/results/).

    python bench/train_throughput.py                                    # 124M: reference, koi
    python bench/train_throughput.py --side reference --side koi --side koi-fp8
    python bench/train_throughput.py --case 1558M-remat --steps 5 --side reference-remat --side koi-remat
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
from recipe_q import OPTIMIZERS  # noqa: E402

# name: (layers, width, heads, batch, seq)
CASES = {
    "124M": (12, 768, 12, 32, 1024),
    "774M": (36, 1280, 20, 16, 1024),
    "1558M-remat": (48, 1600, 25, 8, 1024),
    "tiny": (2, 128, 4, 4, 128),
}
PEAK_BF16 = {"H100": 989e12, "H200": 989e12}
BLOCKS = "transformer.h.*"
MLPS = "transformer.h.*.mlp.*"
# Koi's best recipe at recipe Q (BENCHMARKS.md): the Llama-style model at the case's size, Muon, 10x embedding LR
LLAMA = {"arch": "llama", "qk_norm": True, "tie_embeddings": True}
BEST_OPTIMIZER = {**OPTIMIZERS["muon"], "embedding_lr": 0.006}
LAYERS = "model.layers.*"
# Koi sides: run-config overrides on top of `koi_config`.
KOI_SIDES = {
    "koi": {},
    "koi-eager": {"train": {"compile": False}},
    "koi-nodetect": {"instability": {"enabled": False}},  # the cost of instability detection: koi against this
    "koi-autotune": {"train": {"compile_mode": "max-autotune-no-cudagraphs"}},
    "koi-remat": {"remat": {"mode": "full"}},
    "koi-fp8": {"precision": {"plan": {BLOCKS: "fp8"}, "fp8_matmul": True, "fp8_scaling": "row"}},
    "koi-fp8-tile": {"precision": {"plan": {BLOCKS: "fp8"}, "fp8_matmul": True, "fp8_scaling": "tile"}},
    "koi-fp8-fused": {"precision": {"plan": {BLOCKS: "fp8"}, "fp8_matmul": True, "fp8_scaling": "row-fused"}},
    "koi-int4": {"precision": {"plan": {BLOCKS: "int4"}}},
    "koi-best": {"model": LLAMA, "optimizer": BEST_OPTIMIZER},
    "koi-best-int4": {"model": LLAMA, "optimizer": BEST_OPTIMIZER, "precision": {"plan": {LAYERS: "int4"}}},
    "koi-best-ternary": {"model": LLAMA, "optimizer": BEST_OPTIMIZER, "precision": {"plan": {LAYERS: "ternary"}}},
    "koi-ternary": {"precision": {"plan": {BLOCKS: "ternary"}}},
    # issue 21's levers: bf16 weights (stochastic rounding), 8-bit moments, the step in backward (no gradients kept), remat
    "koi-lowmem": {"optimizer": {"name": "adamw8bit", "weights": "bf16"}, "train": {"optimizer_in_backward": True, "grad_clip": 0.0},
                   "remat": {"mode": "full"}},
    "koi-lowmem-noremat": {"optimizer": {"name": "adamw8bit", "weights": "bf16"},
                           "train": {"optimizer_in_backward": True, "grad_clip": 0.0}},
    "koi-lowmem-selective": {"optimizer": {"name": "adamw8bit", "weights": "bf16"},
                             "train": {"optimizer_in_backward": True, "grad_clip": 0.0}, "remat": {"mode": "selective"}},
    # 1558M (case batch 8) without the step in backward: 4 micro-batches of 2 under CUDA graphs, full remat
    # (the start-of-run estimate: 9.64 GiB; the in-backward side: 8.04 GiB, 9.21 with selective remat)
    "koi-mb2-accum4-8bit-bf16w-remat-cg": {"train": {"batch_size": 2, "grad_accum": 4, "compile_mode": "reduce-overhead"},
                                           "optimizer": {"name": "adamw8bit", "weights": "bf16"}, "remat": {"mode": "full"}},
    "koi-8bit-bf16w-remat": {"optimizer": {"name": "adamw8bit", "weights": "bf16"}, "remat": {"mode": "full"}},
    "koi-8bit-remat": {"optimizer": {"name": "adamw8bit"}, "remat": {"mode": "full"}},
    # issue 21 at 124M (<= 4 GiB at >= 1.0x the plain reference): the same 32 x 1024 tokens a step as
    # 4 micro-batches of 8 (a quarter of the activations, nothing recomputed), bf16 weights, 8-bit moments
    "koi-accum4-8bit-bf16w": {"train": {"batch_size": 8, "grad_accum": 4}, "optimizer": {"name": "adamw8bit", "weights": "bf16"}},
    "koi-accum4-8bit-bf16w-ffn": {"train": {"batch_size": 8, "grad_accum": 4}, "optimizer": {"name": "adamw8bit", "weights": "bf16"},
                                  "remat": {"mode": "ffn"}},
    "koi-accum2-8bit-bf16w-remat": {"train": {"batch_size": 16, "grad_accum": 2}, "optimizer": {"name": "adamw8bit", "weights": "bf16"},
                                    "remat": {"mode": "full"}},
    # the same with CUDA graphs (train.compile_mode reduce-overhead): at micro-batches of 8 the host, not the
    # GPU, set the pace (eighth session's profile: 39% of the step on the GPU)
    "koi-accum4-8bit-bf16w-cg": {"train": {"batch_size": 8, "grad_accum": 4, "compile_mode": "reduce-overhead"},
                                 "optimizer": {"name": "adamw8bit", "weights": "bf16"}},
    "koi-accum4-cg": {"train": {"batch_size": 8, "grad_accum": 4, "compile_mode": "reduce-overhead"}},
    "koi-cg": {"train": {"compile_mode": "reduce-overhead"}},
    "koi-accum2-8bit-bf16w-ffn-cg": {"train": {"batch_size": 16, "grad_accum": 2, "compile_mode": "reduce-overhead"},
                                     "optimizer": {"name": "adamw8bit", "weights": "bf16"}, "remat": {"mode": "ffn"}},
    "koi-accum2-8bit-bf16w-remat-cg": {"train": {"batch_size": 16, "grad_accum": 2, "compile_mode": "reduce-overhead"},
                                       "optimizer": {"name": "adamw8bit", "weights": "bf16"}, "remat": {"mode": "full"}},
    # what each of those levers costs alone at the full 32 x 1024 batch (micro-batching, the 8-bit step, stochastic rounding)
    "koi-accum4": {"train": {"batch_size": 8, "grad_accum": 4}},
    "koi-8bit": {"optimizer": {"name": "adamw8bit"}},
    "koi-bf16w": {"optimizer": {"weights": "bf16"}},
    "koi-8bit-bf16w": {"optimizer": {"name": "adamw8bit", "weights": "bf16"}},
    # issue 24: a mixture step's rate alone on the card (2 experts of 6 blocks, 4 of 3), no switch inside the timed steps
    "koi-mix2": {"mixture": {"experts": 2, "switch": 100_000, "method": "pso"}},
    "koi-mix4": {"mixture": {"experts": 4, "switch": 100_000, "method": "pso"}},
    # issue 27 (bench/sparsity.py): 2:4 MLPs from step 0 (masked dense / on the sparse kernels), with int8, and MLP predictors
    "koi-sparse24": {"sparsity": {"plan": {MLPS: "2:4"}}},  # the default kernel: masked dense
    "koi-remat-sparse24": {"remat": {"mode": "full"}, "sparsity": {"plan": {MLPS: "2:4"}}},  # 1558M: beside koi-remat
    "koi-sparse24-kernel": {"sparsity": {"plan": {MLPS: "2:4"}, "kernel": "semi_structured"}},
    "koi-sparse24-int8": {"precision": {"plan": {MLPS: "int8"}}, "sparsity": {"plan": {MLPS: "2:4"}}},
    # 2:4 MLPs on fp8 matmuls (masked dense fp8): beside koi-fp8-fused, what the mask costs an fp8 step
    "koi-fp8-fused-sparse24": {"precision": {"plan": {BLOCKS: "fp8"}, "fp8_matmul": True, "fp8_scaling": "row-fused"},
                               "sparsity": {"plan": {MLPS: "2:4"}}},
    "koi-predictor": {"sparsity": {"activation_predictor": {"enabled": True}}},
}
REFERENCE_SIDES = {"reference": False, "reference-remat": True}


SEED = 1337  # every Koi side's run seed; the reference starts from the weights it draws


def koi_model(case: str) -> dict:
    """The `model` section of a Koi side's run config (the reference is built to the same shape)."""
    layers, width, heads, _, seq = CASES[case]
    return {"arch": "gpt2", "preset": None, "n_layer": layers, "n_embd": width, "n_head": heads, "block_size": seq,
            "vocab_size": 50304}


def koi_config(case: str, steps: int, shards: Path, out_dir: Path, side: str) -> dict:
    batch = CASES[case][3]
    config = {
        "name": side, "out_dir": str(out_dir), "seed": SEED,
        "model": koi_model(case),
        "data": {"train": [str(shards / "*_train_*.bin")], "val": [str(shards / "*_val_*.bin")]},
        # The reference's schedule (constant 6e-4 from the first step, clipping at 1.0), so the losses
        # after the same steps compare; a warm-up and a cosine over 2 x steps left Koi's 1558M behind
        # the reference after 10 steps (7.90 vs 6.84) on its schedule alone.
        "train": {"steps": 2 * steps, "batch_size": batch, "lr": 6e-4, "warmup_steps": 0, "schedule": "constant",
                  "grad_clip": 1.0, "device": "cuda", "compile": True, "log_every": steps},
        "optimizer": {"name": "adamw", "betas": [0.9, 0.95], "weight_decay": 0.1},
        "eval": {"every": 0, "max_windows": 1, "sample_prompt": None},
        "checkpoint": {"every": 0, "keep_last": 1},
    }
    for key, value in KOI_SIDES[side].items():
        config[key] = {**config.get(key, {}), **value}
    return config


def run_koi_config(config: dict, run_root: Path, launch: list[str], steps: int, env: dict[str, str]) -> tuple[dict, list[dict]]:
    """`koi-train run` of ``config`` in ``run_root``, started by ``launch`` (python, or torchrun's command): the
    record of the last timed step (log_every is ``steps``: its loss_mean is the timed steps' mean) and every record."""
    path = run_root / f"{config['name']}.json"
    path.write_text(json.dumps(config))
    log = run_root / f"{config['name']}.log"
    with log.open("w") as out:
        code = subprocess.run([*launch, "-m", "koi_train", "run", str(path)], stdout=out, stderr=subprocess.STDOUT,
                              env={**os.environ, **env}).returncode
    metrics = run_root / config["name"] / "metrics.jsonl"
    records = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
    timed = [r for r in records if r.get("kind") == "train" and r["step"] == 2 * steps]
    if code != 0 or not timed:
        raise RuntimeError(" | ".join(log.read_text(errors="replace").strip().splitlines()[-3:])[-400:])
    return timed[0], records


def run_koi(case: str, side: str, steps: int, work: Path) -> dict:
    """One `koi-train run`; tok/s and peak memory from its metrics record over the timed steps."""
    shards = work / "shards"
    if not shards.exists():
        make_shards(shards)
    # A fresh folder per run: a side named twice trains twice (one folder would resume the finished
    # run and read its old metrics), and removing it after keeps a long session's disk free.
    run_root = Path(tempfile.mkdtemp(dir=work, prefix=f"{side}-"))
    try:
        row, records = run_koi_config(koi_config(case, steps, shards, run_root, side), run_root, [sys.executable], steps,
                                      {"NCCL_NVLS_ENABLE": "0"})
    finally:
        shutil.rmtree(run_root, ignore_errors=True)
    estimate = next((r["total_gib"] for r in records if r.get("kind") == "memory_estimate"), None)
    # what the instability guard did (a rollback stepped in backward loses the steps since the newest snapshot)
    events = [f"{r['action']} at {r['step']} ({r['signal']})" for r in records if r.get("kind") == "instability"]
    return {"tokens_per_s": row["tokens_per_s"], "peak_gib": row.get("peak_memory_gib"), "loss": row["loss"],
            "loss_mean": row["loss_mean"], "estimate_gib": estimate, "instability_events": events}


def koi_initial_weights(case: str) -> dict[str, torch.Tensor]:
    """The weights a `koi-train run` of `koi_config` (no tokenizer) starts from: koi_train.setup seeds
    torch with the run's seed, then builds the model, before anything else draws from the generator."""
    from koi_train.config import ModelConfig
    from koi_train.models import build_model

    torch.manual_seed(SEED)
    return build_model(ModelConfig(**koi_model(case))).state_dict()


class ReferenceRun:
    """TARGETS.md's plain reference, set up once: each ``step()`` trains on the next batch of real tokens.

    On CUDA: compiled, bf16 autocast, fused AdamW, TF32. ``distributed``: one rank of a torchrun
    job, the model wrapped in DDP before compiling (what a user writes), its own windows per rank.
    Off CUDA (a check of a bench script) eager fp32.
    """

    def __init__(self, case: str, remat: bool, shards: Path, *, device: torch.device | None = None, rank: int = 0,
                 distributed: bool = False) -> None:
        from reference_gpt2 import ReferenceGPT2
        from torch.nn.parallel import DistributedDataParallel

        from koi_train.data import RandomWindows, open_shards

        self.device = device if device is not None else torch.device("cuda")
        cuda = self.device.type == "cuda"
        layers, width, heads, self.batch, self.seq = CASES[case]
        if cuda:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        torch.manual_seed(SEED)
        self.model = ReferenceGPT2(layers, width, heads, block=self.seq, remat=remat)
        self.model.load_koi_weights(koi_initial_weights(case))
        self.model.to(self.device)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=cuda)
        wrapped = DistributedDataParallel(self.model, device_ids=[self.device.index] if cuda else None) if distributed else self.model
        self.forward = torch.compile(wrapped) if cuda else wrapped
        # the windows a Koi side trains on (koi_config), batch for batch (rank 0; each other rank its own)
        train = open_shards([str(shards / "*_train_*.bin")], field="data.train", min_tokens=self.seq + 1)
        self.batches = RandomWindows(train, block_size=self.seq, batch_size=self.batch, seed=SEED + rank, pin_memory=cuda)

    def step(self) -> torch.Tensor:
        x, y = (t.to(self.device, non_blocking=True) for t in self.batches.next_batch())
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            loss = self.forward(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss


def run_reference(case: str, remat: bool, steps: int, work: Path) -> dict:
    shards = work / "shards"
    if not shards.exists():
        make_shards(shards)
    reference = ReferenceRun(case, remat, shards)
    torch.cuda.reset_peak_memory_stats()
    timed_sum = torch.zeros((), device="cuda")
    for i in range(2 * steps):
        if i == steps:
            torch.cuda.synchronize()
            start = time.perf_counter()
        loss = reference.step()
        if i >= steps:
            timed_sum += loss.detach().float()  # on the device: no host read inside the timed steps
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"tokens_per_s": steps * reference.batch * reference.seq / seconds,
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30, "loss": loss.item(), "loss_mean": timed_sum.item() / steps}


def worker(case: str, side: str, steps: int, work: Path) -> None:
    try:
        if side in REFERENCE_SIDES:
            row = run_reference(case, REFERENCE_SIDES[side], steps, work)
        else:
            row = run_koi(case, side, steps, work)
    except Exception as exc:  # reported as a failed row; the parent goes on with the next side
        row = {"error": f"{type(exc).__name__}: {exc}"[-500:]}
    print("ROW " + json.dumps(row), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", action="append", choices=list(CASES), help="default: 124M")
    parser.add_argument("--side", action="append", choices=[*REFERENCE_SIDES, *KOI_SIDES], help="default: reference, koi")
    parser.add_argument("--steps", type=int, default=30, help="warm-up steps, then as many timed")
    parser.add_argument("--worker", nargs=2, metavar=("CASE", "SIDE"), help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker, args.steps, Path(args.work))
        return
    out = Path(os.environ.get("OUT", REPO / "bench" / "results"))
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="koi-throughput-"))
    print(f"device {torch.cuda.get_device_name()}, torch {torch.__version__}, data {shared_data()}, "
          f"{args.steps} warm-up + {args.steps} timed steps per side", flush=True)
    print(f"{'case':<13}{'side':<22}{'tok/s':>11}{'MFU':>7}{'peak GiB':>10}{'estimate':>10}{'loss':>8}{'vs ref':>8}", flush=True)
    print("(loss: the mean over the timed steps, the same batches on every side)", flush=True)
    for case in args.case or ["124M"]:
        layers, width, _, _, seq = CASES[case]
        params = 12 * layers * width * width + 50304 * width + seq * width
        flops = 6 * params + 12 * layers * width * seq
        peak = next((v for k, v in PEAK_BF16.items() if k in torch.cuda.get_device_name()), None)
        reference = None
        for side in args.side or ["reference", "koi"]:
            command = [sys.executable, __file__, "--worker", case, side, "--steps", str(args.steps), "--work", str(work)]
            done = subprocess.run(command, capture_output=True, text=True)
            line = next((ln for ln in done.stdout.splitlines() if ln.startswith("ROW ")), None)
            row = json.loads(line[4:]) if line else {"error": (done.stderr or done.stdout)[-400:]}
            row.update(case=case, side=side, date=time.strftime("%Y-%m-%d"))
            with (out / "train_throughput.jsonl").open("a") as f:
                f.write(json.dumps(row) + "\n")
            if "error" in row:
                print(f"{case:<13}{side:<22} FAILED: {row['error']}", flush=True)
                continue
            if side.startswith("reference") and reference is None:
                reference = row["tokens_per_s"]
            mfu = f"{row['tokens_per_s'] * flops / peak:.2f}" if peak else "-"
            ratio = f"{row['tokens_per_s'] / reference:.2f}x" if reference else "-"
            estimate = f"{row['estimate_gib']:.2f}" if row.get("estimate_gib") else "-"
            print(f"{case:<13}{side:<22}{row['tokens_per_s']:>11,.0f}{mfu:>7}{row['peak_gib']:>10.2f}{estimate:>10}{row['loss_mean']:>8.3f}"
                  f"{ratio:>8}", flush=True)
            if row.get("instability_events"):
                print(f"{'':<13}{'':<22}instability: {'; '.join(row['instability_events'])}", flush=True)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
