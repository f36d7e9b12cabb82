"""A CPU stand-in for recipe Q's low-bit ratios: a 2.6M-parameter Llama-style model on the Python docs.

Why: on the card one recipe Q round (six runs) costs six minutes of a thirty-minute session, so a
lever is worth a card run only once it helps here. The proxy tracks the card: binary with the
0.5/0.2 warm-up gives 1.0546x bf16 here and 1.0546x on pydocs-val at recipe Q (H200, 3 seeds).
A 4096-token BPE trained on pydocs-train, 4 layers x 192, QK-norm, tied, Muon as in Koi's best
recipe, 600 steps of 16 x 128 (one pass over the 2.5M tokens), the same 1500 val windows of
pydocs-val for every variant. Two runs at a time, one thread each: about 12 minutes a pair on 2 cores.

    python bench/sweeps/lowbit_cpu_proxy.py bf16 "bin:binary+wu0.5/0.2" "bin-g32:binary+wu0.3/0.4,precision.group_size=32"
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from data_tokens import shared_data  # noqa: E402
from recipe_q import parse_format  # noqa: E402

MODEL = {"arch": "llama", "preset": "llama-tiny", "n_layer": 4, "n_head": 4, "n_kv_head": 4, "n_embd": 192,
         "block_size": 128, "vocab_size": 4096, "qk_norm": True, "tie_embeddings": True}


def base_config(work: Path, name: str, steps: int) -> dict:
    return {
        "name": name, "out_dir": str(work / "runs"), "seed": 1, "model": MODEL,
        "data": {"train": [str(work / "shards" / "train" / "*.bin")], "val": [str(work / "shards" / "val" / "*.bin")]},
        "train": {"steps": steps, "batch_size": 16, "lr": 2e-3, "warmup_steps": steps // 10, "schedule": "cosine",
                  "min_lr_ratio": 0.1, "grad_clip": 1.0, "device": "cpu", "log_every": steps // 2},
        "optimizer": {"name": "muon", "betas": [0.9, 0.95], "weight_decay": 0.1, "muon_lr": 0.02, "muon_momentum": 0.95,
                      "embedding_lr": 0.02},
        "eval": {"every": 0, "sample_fraction": 1.0, "max_windows": 1500, "sample_prompt": None},
        "checkpoint": {"every": 0},
    }


def prepare(work: Path) -> None:
    corpus = shared_data() / "corpus"
    cli = [sys.executable, "-c", "from koi_tokenizer.cli import main; main()"]
    subprocess.run([*cli, "train", "--vocab-size", "4096", "-o", str(work / "tok.json"), str(corpus / "pydocs-train.txt")], check=True)
    for split, name in (("train", "pydocs-train.txt"), ("val", "pydocs-val.txt")):
        subprocess.run([*cli, "shard", "-t", str(work / "tok.json"), "-o", str(work / "shards" / split), "--val-fraction", "0",
                        "--quiet", str(corpus / name)], check=True)


def variant(spec: str) -> tuple[str, str, list[str]]:
    """``name:format,key=value,...`` (format as recipe_q.py spells it) -> (name, format, --set overrides)."""
    name, _, rest = spec.partition(":")
    fmt, *overrides = (rest or name).split(",")
    return name, fmt, overrides


def launch(work: Path, spec: str, steps: int) -> tuple[str, subprocess.Popen]:
    """Start one variant's `koi-train run` (its output in ``work/<name>.log``); the caller waits."""
    name, fmt_spec, overrides = variant(spec)
    fmt, warmup = parse_format(fmt_spec)
    cfg = base_config(work, name, steps)
    cfg["precision"] = {"plan": {"model.layers.*": fmt} if fmt != "bf16" else {}, **warmup}
    path = work / f"{name}.json"
    path.write_text(json.dumps(cfg))
    sets = [a for o in overrides for a in ("--set", o)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cli = [sys.executable, "-m", "koi_train", "run", str(path), *sets]
    with open(work / f"{name}.log", "w") as log:  # the child keeps its own handle
        return name, subprocess.Popen(cli, stdout=log, stderr=subprocess.STDOUT, env=env)


def final_val(work: Path, name: str) -> float:
    for line in (work / f"{name}.log").read_text().splitlines():
        if line.startswith("final") and "val loss" in line:
            return float(line.split("val loss")[1].split()[0])
    raise RuntimeError(f"{name}: no final val loss in {work / (name + '.log')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="+", help="name:format[,key=value...]; the first is the baseline (bf16)")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--work", type=Path, default=None, help="folder for tokenizer, shards and runs (default: a temp dir)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="koi-lowbit-proxy-"))
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "shards" / "val").exists():
        prepare(work)
    results: dict[str, float] = {}
    for i in range(0, len(args.variants), args.parallel):
        running = [launch(work, spec, args.steps) for spec in args.variants[i : i + args.parallel]]
        for name, proc in running:
            if proc.wait() != 0:
                print(f"{name}: failed, see {work / (name + '.log')}", flush=True)
                continue
            results[name] = final_val(work, name)
            baseline = next(iter(results))
            print(f"{name:<24} val {results[name]:.4f}  ratio to {baseline} {results[name] / results[baseline]:.4f}x", flush=True)


if __name__ == "__main__":
    main()
