"""Recipe Q of TARGETS.md through `koi-train run`: val loss per format and seed, the low-bit quality table.

GPT-2 124M from scratch on the three train corpora (random windows of 1024, batch 16, 700 steps),
then the mean loss over every non-overlapping 1024-token window of linuxdocs-val and pydocs-val,
each file on its own. Each run is its own `koi-train run` process; several share a card at once
(loss does not care; time speed with bench/train_throughput.py). The evaluation loads each run
back the way `koi-eval` does, so a low-bit run is scored as the quantized model it trained.
Rows print as runs finish and land in $OUT/recipe_q.jsonl; the summary gives mean +- sd over
seeds and each format's ratio to bf16 under the same optimizer.

    python bench/recipe_q.py --formats bf16,int4,ternary --seeds 1,2,3 --optimizer muon
    python bench/recipe_q.py --formats bf16,ternary,ternary+wu0.5/0.2 --seeds 1,2   # +wu: quantization warm-up
    python bench/recipe_q.py --formats bf16,binary+wu0.3/0.4+g128 --seeds 1,2      # +g: scales per 128 inputs
    python bench/recipe_q.py --formats bf16 --variant wsd:train.schedule=wsd --variant emb:optimizer.embedding_lr=0.006
    python bench/recipe_q.py --formats bf16 --seeds 1 --steps 50          # a quick check of the script

Sparse training (issue 27) is a variant beside the dense one; its bf16 against the base variant's
bf16 is the sparse loss ratio, its int8 against its bf16 the quantized-sparse one; a predictor
run also reports the last evaluation's predictor figures (an `eval.every` makes the run evaluate):

    python bench/recipe_q.py --formats bf16,int8 --variant base: \
        --variant 'sp24:sparsity.plan={"transformer.h.*.mlp.*":"2:4"},sparsity.dense_steps=70' \
        --variant 'pred:sparsity.activation_predictor.enabled=true,eval.every=700'
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from data_tokens import make_shards, shared_data  # noqa: E402

TRAIN_FILES = ("pydocs-train.txt", "linuxdocs-train.txt", "perldocs-train.txt")
VAL_FILES = ("linuxdocs-val.txt", "pydocs-val.txt")
OPTIMIZERS = {  # recipe Q's AdamW, and the Muon row of TARGETS.md (Muon 0.02 on block matrices, AdamW 6e-4 elsewhere)
    "adamw": {"name": "adamw", "betas": [0.9, 0.95], "weight_decay": 0.1},
    "muon": {"name": "muon", "betas": [0.9, 0.95], "weight_decay": 0.1, "muon_lr": 0.02, "muon_momentum": 0.95},
}


MODELS = {  # GPT-2 124M as in recipe Q, and a candidate for Koi's best recipe at the same size (~124M parameters)
    "gpt2": {"arch": "gpt2", "preset": "gpt2-124M"},
    "llama": {"arch": "llama", "preset": "llama-124M", "n_kv_head": 12, "qk_norm": True, "tie_embeddings": True},
}
BLOCK_PATTERN = {"gpt2": "transformer.h.*", "llama": "model.layers.*"}


def parse_format(spec: str) -> tuple[str, dict]:
    """``ternary``, ``ternary+wu0.5/0.2`` or ``binary+wu0.3/0.4+g128``: a format, optionally with a
    quantization warm-up (full precision for the first 50% of steps, then a ramp to fully quantized
    over 20%) and scales per group of 128 inputs. Both are per format, so one call can set a lever on
    the low-bit rows only and keep a single bf16 baseline beside them."""
    fmt, *levers = spec.split("+")
    precision: dict = {}
    for lever in levers:
        if lever.startswith("wu"):
            after, _, ramp = lever[2:].partition("/")
            precision.update(quantize_after=float(after), quantize_ramp=float(ramp or 0))
        elif lever.startswith("g") and lever[1:].isdigit():
            precision["group_size"] = int(lever[1:])
        else:
            raise SystemExit(f"--formats: {spec!r}: unknown lever {lever!r} (expected wuAFTER/RAMP or gSIZE)")
    return fmt, precision


def config(name: str, spec: str, seed: int, optimizer: str, steps: int, shards: Path, out: Path, model: str = "gpt2") -> dict:
    fmt, levers = parse_format(spec)
    plan = {BLOCK_PATTERN[model]: fmt} if fmt != "bf16" else {}
    return {
        "name": name, "out_dir": str(out), "seed": seed,
        "model": MODELS[model],
        "data": {"train": [str(shards / "train" / "*_train_*.bin")], "val": [str(shards / "pydocs-val.txt" / "*_train_*.bin")]},
        "train": {"steps": steps, "batch_size": 16, "lr": 6e-4, "warmup_steps": steps // 10, "schedule": "cosine",
                  "min_lr_ratio": 0.1, "grad_clip": 1.0, "device": "cuda", "compile": True, "log_every": 50},
        "optimizer": OPTIMIZERS[optimizer],
        "precision": {"plan": plan, **levers},
        "eval": {"every": 0, "max_windows": 8, "sample_prompt": None},
        "checkpoint": {"every": 0, "keep_last": 1},
    }


def val_loss(run_dir: Path, shard: Path) -> float:
    """Mean CE over all non-overlapping 1024-token windows of one val file, bf16 autocast, as trained."""
    from koi_train.load_model import load_trained_model

    return val_losses([load_trained_model(str(run_dir)).cuda().eval()], shard)[0]


def predictor_figures(run_dir: Path) -> dict:
    """The last evaluation's activation-predictor figures (loss with only the predicted MLP neurons, its
    change, recall of the true top neurons, fraction skipped), when the run trained predictors."""
    metrics = run_dir / "metrics.jsonl"
    evals = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
    evals = [r for r in evals if r.get("kind") == "eval" and "predictor_recall" in r]
    keys = ("sparse_mlp_val_loss", "sparse_mlp_loss_change", "predictor_recall", "mlp_neurons_skipped")
    return {k: evals[-1][k] for k in keys} if evals else {}


@torch.no_grad()
def val_losses(models: list[torch.nn.Module], shard: Path, window: int = 1024, max_windows: int | None = None) -> list[float]:
    """Mean CE of each model on every non-overlapping ``window``-token window of one val file (the
    first ``max_windows`` of them when given) and, with several models, of the average of their
    logits (the ensemble) last; on the models' device."""
    from koi_tokenizer import read_shard

    device = next(models[0].parameters()).device
    tokens = np.concatenate([read_shard(p) for p in sorted(shard.glob("*_train_*.bin"))]).astype(np.int64)
    windows = min((len(tokens) - 1) // window, max_windows or len(tokens))
    totals, count = [0.0] * (len(models) + (len(models) > 1)), 0
    for start in range(0, windows, 16):
        rows = range(start, min(windows, start + 16))
        x = torch.stack([torch.from_numpy(tokens[r * window : (r + 1) * window]) for r in rows]).to(device)
        y = torch.stack([torch.from_numpy(tokens[r * window + 1 : (r + 1) * window + 1]) for r in rows]).to(device).flatten()
        mean = None
        for k, model in enumerate(models):
            with torch.autocast(device.type, dtype=torch.bfloat16):
                logits = model(x).float().flatten(0, 1)
            totals[k] += float(torch.nn.functional.cross_entropy(logits, y, reduction="sum"))
            if len(models) > 1:
                mean = logits / len(models) if mean is None else mean + logits / len(models)
        if mean is not None:
            totals[-1] += float(torch.nn.functional.cross_entropy(mean, y, reduction="sum"))
        count += y.numel()
    return [t / count for t in totals]


def prepare(work: Path) -> Path:
    shards = work / "shards"
    make_shards(shards / "train", TRAIN_FILES, val_fraction=0.0)
    for name in VAL_FILES:
        make_shards(shards / name, (name,), val_fraction=0.0)
    return shards


def parse_variant(text: str) -> tuple[str, list[str]]:
    """``name:key=value,key=value`` -> (name, the `koi-train run --set` overrides)."""
    name, _, overrides = text.partition(":")
    return name, [o for o in overrides.split(",") if o]


def summarize(rows: list[dict]) -> None:
    print(f"\n{'variant':<12}{'format':<20}{'optimizer':<10}{'seeds':>6}{'linuxdocs-val':>22}{'pydocs-val':>22}{'ratio to bf16':>18}")
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row.get("variant", "base"), row["format"], row["optimizer"]), []).append(row)
    means = {key: [float(np.mean([r[f] for r in group])) for f in VAL_FILES] for key, group in groups.items()}
    for (variant, fmt, opt), group in groups.items():
        cells = []
        for f in VAL_FILES:
            values = [r[f] for r in group]
            sd = float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")
            cells.append(f"{np.mean(values):.3f} +- {sd:.3f}" if not math.isnan(sd) else f"{values[0]:.3f}")
        bf16 = means.get((variant, "bf16", opt))
        ratio = " / ".join(f"{m / b:.3f}x" for m, b in zip(means[(variant, fmt, opt)], bf16)) if bf16 else "-"
        print(f"{variant:<12}{fmt:<20}{opt:<10}{len(group):>6}{cells[0]:>22}{cells[1]:>22}{ratio:>18}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--formats", default="bf16,int8,int4,ternary,binary")
    parser.add_argument("--seeds", default="1")
    parser.add_argument("--optimizer", choices=list(OPTIMIZERS), default="adamw")
    parser.add_argument("--steps", type=int, default=700)
    parser.add_argument("--parallel", type=int, default=5, help="runs sharing each card at once")
    parser.add_argument("--gpus", default="0", help="cards to spread runs over, e.g. 2,3")
    parser.add_argument("--model", choices=list(MODELS), default="gpt2")
    parser.add_argument("--variant", action="append", default=[],
                        help="name:key=value,... run every format and seed again with these config overrides (repeatable)")
    args = parser.parse_args()
    variants = [parse_variant(v) for v in args.variant] or [("base", [])]
    out = Path(os.environ.get("OUT", REPO / "bench" / "results"))
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="koi-recipe-q-"))
    shards = prepare(work)
    print(f"recipe Q: {args.model}, {args.steps} steps of 16x1024, optimizer {args.optimizer}, data {shared_data()}", flush=True)
    gpus = args.gpus.split(",")
    queue = [(fmt, int(seed), variant) for seed in args.seeds.split(",") for variant in variants for fmt in args.formats.split(",")]
    running: list[tuple[str, int, subprocess.Popen, Path, str, str]] = []
    rows = []
    while queue or running:
        while queue and len(running) < args.parallel * len(gpus):
            fmt, seed, (variant, overrides) = queue.pop(0)
            name = f"{args.model}-{variant}-{fmt.replace('+', '-').replace('/', '-')}-{args.optimizer}-s{seed}"
            path = work / f"{name}.json"
            path.write_text(json.dumps(config(name, fmt, seed, args.optimizer, args.steps, shards, work, args.model)))
            log = (work / f"{name}.log").open("w")
            busy = [entry[4] for entry in running]
            gpu = min(gpus, key=busy.count)  # the card with the fewest runs
            sets = [arg for override in overrides for arg in ("--set", override)]
            proc = subprocess.Popen([sys.executable, "-m", "koi_train", "run", str(path), *sets], stdout=log,
                                    stderr=subprocess.STDOUT, env={**os.environ, "CUDA_VISIBLE_DEVICES": gpu})
            running.append((fmt, seed, proc, work / name, gpu, variant))
        for entry in list(running):
            fmt, seed, proc, run_dir, _, variant = entry
            if proc.poll() is None:
                continue
            running.remove(entry)
            row = {"model": args.model, "variant": variant, "format": fmt, "seed": seed, "optimizer": args.optimizer,
                   "steps": args.steps}
            try:
                if proc.returncode != 0:
                    raise RuntimeError(f"koi-train run exited {proc.returncode}; log {run_dir}.log")
                row.update({f: val_loss(run_dir, shards / f) for f in VAL_FILES}, **predictor_figures(run_dir))
                rows.append(row)
                print(f"{args.model:<6}{variant:<12}{fmt:<20} seed {seed}: " + "  ".join(f"{f} {row[f]:.4f}" for f in VAL_FILES),
                      flush=True)
            except Exception as exc:  # a failed run is reported; the others go on
                row["error"] = f"{type(exc).__name__}: {exc}"[:300]
                print(f"{fmt:<10} seed {seed}: FAILED {row['error']}", flush=True)
                log_file = Path(f"{run_dir}.log")
                if log_file.exists():  # the run's own last words, since its folder is a temporary one
                    print("    " + "\n    ".join(log_file.read_text().splitlines()[-6:]), flush=True)
            with (out / "recipe_q.jsonl").open("a") as f:
                f.write(json.dumps({**row, "date": time.strftime("%Y-%m-%d")}) + "\n")
            shutil.rmtree(run_dir, ignore_errors=True)  # scored: its checkpoints would only fill the disk
        time.sleep(2)
    summarize(rows)


if __name__ == "__main__":
    main()
