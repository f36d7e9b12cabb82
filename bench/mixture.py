"""Does training N shallow experts beat training the full-depth model on the same budget? (issue 24)

Recipe Q's corpus and GPT-2 124M (`bench/recipe_q.py`): the full-depth model against expert
mixtures of the same total size (2 experts of 6 layers, 4 of 3; methods pso and pso_ga), every
other setting at its default (instability detection on). Two budgets:

- equal tokens: every run sees recipe Q's 700 x 16 x 1024 tokens;
- equal wall time: a mixture step trains 1/N of the blocks, so it is cheaper; each mixture run gets
  as many steps as the full-depth run's training time buys at the mixture's own measured rate
  (from its equal-tokens run).

At 1558M total (`--size 1558M`) the question is memory as much as loss: every run gets Koi's memory
levers (8-bit AdamW, bf16 weights, full remat; full depth also steps its optimizer in backward), a
short calibration run of each measures its rate and peak while all share the card, and each then
trains for `--minutes` at that rate (equal wall time only: recipe Q's tokens would take an hour).

Scored per val file on every non-overlapping 1024-token window: the full model; each expert (the
best one is reported) and the ensemble that averages all experts' logits. Also peak GiB and
tokens/s from the runs' metrics, and tokens/s per trained parameter. Each run is a `koi-train run`
process; runs share the card (time speed with train_throughput.py, not here: the equal-time
phase uses rates measured while sharing, which favours nobody). Rows print as runs finish and land
in $OUT/mixture.jsonl.

    python bench/mixture.py                       # both budgets, seed 1
    python bench/mixture.py --budget tokens       # one call's worth: the equal-tokens runs
    python bench/mixture.py --budget time --rates-from bench/results/mixture.jsonl   # then the rest
    python bench/mixture.py --budget time --speedups 2=1.60,4=2.30   # rates measured alone (train_throughput.py)
    python bench/mixture.py --smoke               # a tiny GPT-2 on the CPU: checks the script, no figures worth reading
    python bench/mixture.py --size 1558M --methods pso --minutes 3    # 1558M total, equal wall time, memory levers on
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

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from recipe_q import VAL_FILES, config, prepare, val_losses  # noqa: E402

SMOKE = {"model": {"arch": "gpt2", "preset": "gpt2-tiny"}, "train": {"device": "cpu", "compile": False, "batch_size": 8},
         "switch": 10}  # 4 layers of 128: 2 experts of 2 layers, a switch every 10 steps
# 1558M total on one card: every run gets Koi's memory levers (8-bit AdamW, bf16 weights, full remat); full depth
# also steps its optimizer in backward, the lever that leaves no whole-model gradients (BENCHMARKS.md, issue 21)
LARGE = {"model": {"arch": "gpt2", "preset": "gpt2-1558M"}, "train": {"batch_size": 8, "log_every": 5},
         "optimizer": {"name": "adamw8bit", "betas": [0.9, 0.95], "weight_decay": 0.1, "weights": "bf16"},
         "remat": {"mode": "full"}, "full_depth_train": {"optimizer_in_backward": True, "grad_clip": 0.0}}
LAYERS = {"smoke": 4, "124M": 12, "1558M": 48}


def run_config(name: str, experts: int, method: str, steps: int, seed: int, optimizer: str, shards: Path, work: Path,
               size: str = "124M") -> dict:
    cfg = config(name, "bf16", seed, optimizer, steps, shards, work)
    if size == "smoke":
        cfg["model"] = SMOKE["model"]
        cfg["train"].update(SMOKE["train"])
    if size == "1558M":
        cfg["model"], cfg["optimizer"], cfg["remat"] = LARGE["model"], LARGE["optimizer"], LARGE["remat"]
        cfg["train"].update(LARGE["train"], **(LARGE["full_depth_train"] if experts <= 1 else {}))
    if experts > 1:
        cfg["mixture"] = {"experts": experts, "switch": SMOKE["switch"] if size == "smoke" else 50, "method": method}
    return cfg


def score(run_dir: Path, experts: int, shards: Path, device: str) -> dict:
    from koi_train.load_model import load_trained_model

    models = [load_trained_model(str(run_dir), expert=k if experts > 1 else None).to(device).eval()
              for k in range(max(experts, 1))]
    window = min(1024, models[0].spec.block_size)
    result = {}
    for name in VAL_FILES:
        losses = val_losses(models, shards / name, window, max_windows=32 if device == "cpu" else None)
        if experts > 1:
            best = min(range(experts), key=losses.__getitem__)
            result[name] = {"best": losses[best], "best_expert": best, "experts": losses[:experts], "ensemble": losses[-1]}
        else:
            result[name] = {"best": losses[0]}
    return result


def run_stats(run_dir: Path) -> dict:
    """Training rate (median over progress records after the first, which holds compilation) and peak memory."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    summary = next(r for r in records if r["kind"] == "summary")
    rates = [r["tokens_per_s"] for r in train[1:]] or [r["tokens_per_s"] for r in train]
    return {"tokens_per_s": float(np.median(rates)), "peak_gib": max((r.get("peak_memory_gib", 0.0) for r in train), default=0.0),
            "trained_parameters": summary["parameters_trained"], "parameters": summary["parameters"],
            "tokens_per_step": summary["tokens"] / summary["step"]}


def launch(cases: list[dict], shards: Path, work: Path, parallel: int, out: Path, size: str = "124M",
           scored: bool = True) -> list[dict]:
    """Run every case as its own `koi-train run`, ``parallel`` at a time; score each as it ends (unless
    ``scored`` is false: a calibration run is kept for its rate and peak memory only)."""
    queue, running, rows = list(cases), [], []
    while queue or running:
        while queue and len(running) < parallel:
            case = queue.pop(0)
            path = work / f"{case['name']}.json"
            path.write_text(json.dumps(run_config(case["name"], case["experts"], case["method"], case["steps"], case["seed"],
                                                  case["optimizer"], shards, work, size)))
            log = (work / f"{case['name']}.log").open("w")
            running.append((case, subprocess.Popen([sys.executable, "-m", "koi_train", "run", str(path)], stdout=log,
                                                   stderr=subprocess.STDOUT)))
        for entry in list(running):
            case, proc = entry
            if proc.poll() is None:
                continue
            running.remove(entry)
            row = dict(case)
            try:
                if proc.returncode != 0:
                    tail = "\n    ".join((work / f"{case['name']}.log").read_text().splitlines()[-6:])
                    raise RuntimeError(f"koi-train run exited {proc.returncode}:\n    {tail}")
                run_dir = work / case["name"]
                row.update(run_stats(run_dir))
                row["tokens_per_s_per_trained_million"] = row["tokens_per_s"] / (row["trained_parameters"] / 1e6)
                if scored:
                    row["val"] = score(run_dir, case["experts"], shards, "cpu" if size == "smoke" else "cuda")
                rows.append(row)
                print(line(row), flush=True)
            except Exception as exc:  # a failed run is reported; the others go on
                row["error"] = f"{type(exc).__name__}: {exc}"[:800]
                print(f"{case['name']}: FAILED {row['error']}", flush=True)
            with (out / "mixture.jsonl").open("a") as f:
                f.write(json.dumps({**row, "date": time.strftime("%Y-%m-%d")}) + "\n")
            shutil.rmtree(work / case["name"], ignore_errors=True)  # read and scored: its checkpoints would fill the disk
        time.sleep(2)
    return rows


def line(row: dict) -> str:
    cells = []
    for name in VAL_FILES:
        v = row.get("val", {}).get(name)
        cells.append("-" if v is None else f"{v['best']:.4f}" + (f" (ens {v['ensemble']:.4f})" if "ensemble" in v else ""))
    return (f"{row['budget']:<7}{row['label']:<16}{row['steps']:>6}  " + "  ".join(f"{c:<22}" for c in cells)
            + f"{row['tokens_per_s']:>11,.0f}{row['peak_gib']:>9.2f}{row['tokens_per_s_per_trained_million']:>10,.0f}")


def parse_speedups(text: str) -> dict[int, float]:
    """``2=1.60,4=2.30`` -> {2: 1.6, 4: 2.3}: the step-rate ratio of each expert count to full depth."""
    try:
        pairs = [item.split("=") for item in text.split(",")]
        speedups = {int(experts): float(ratio) for experts, ratio in pairs}
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected EXPERTS=RATIO[,EXPERTS=RATIO...], got {text!r}") from None
    if any(e < 2 or r <= 0 for e, r in speedups.items()):
        raise argparse.ArgumentTypeError(f"expected expert counts >= 2 and positive ratios, got {text!r}")
    return speedups


def earlier_rates(path: Path, seed: int, steps: int) -> list[dict]:
    """The newest equal-tokens row of each run (same seed and steps) in an earlier call's mixture.jsonl."""
    if not path.exists():
        raise SystemExit(f"--rates-from {path}: no such file (run --budget tokens first; it writes $OUT/mixture.jsonl)")
    rows = {}
    for line_text in path.read_text().splitlines():
        row = json.loads(line_text)
        if row.get("budget") == "tokens" and row.get("seed") == seed and row.get("steps") == steps and "error" not in row:
            rows[row["name"]] = row
    if not rows:
        raise SystemExit(f"--rates-from {path}: no finished equal-tokens run with seed {seed} and {steps} steps")
    return list(rows.values())


def equal_time_large(case, mixtures: list[tuple[int, str]], args, shards: Path, work: Path, out: Path, size: str) -> None:
    """1558M: a short run of each to measure its rate and peak (all sharing the card), then each run
    for ``args.minutes`` of training at that rate, cosine schedule over the steps that buys."""
    everyone = [(1, "-")] + mixtures
    calibration = launch([case("calib", e, m, args.calibration_steps) for e, m in everyone], shards, work,
                         len(everyone), out, size, scored=False)
    cases = [case("time", r["experts"], r["method"], max(10, round(r["tokens_per_s"] * args.minutes * 60 / r["tokens_per_step"])))
             for r in calibration]
    launch(cases, shards, work, len(cases), out, size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", choices=["tokens", "time", "both"], default="both")
    parser.add_argument("--experts", default="2,4")
    parser.add_argument("--methods", default="pso,pso_ga")
    parser.add_argument("--steps", type=int, default=700, help="the full-depth run's steps (recipe Q: 700)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--optimizer", default="muon", help="Koi's best for full depth (bench/recipe_q.py's OPTIMIZERS)")
    parser.add_argument("--parallel", type=int, default=5, help="runs sharing the card at once")
    parser.add_argument("--rates-from", type=Path, help="--budget time: take the equal-tokens runs' rates from this "
                        "mixture.jsonl (an earlier call) instead of running them again")
    parser.add_argument("--speedups", type=parse_speedups, help="--budget time: each mixture's step rate over full "
                        "depth's, measured alone on the card (train_throughput.py's koi-mix2 / koi-mix4 against koi), "
                        "as EXPERTS=RATIO,...; replaces the equal-tokens runs' rates, which were measured sharing the card")
    parser.add_argument("--smoke", action="store_true", help="a tiny GPT-2 on the CPU, 2 experts, few steps")
    parser.add_argument("--size", choices=["124M", "1558M"], default="124M",
                        help="1558M: equal wall time only (--minutes), every run with Koi's memory levers")
    parser.add_argument("--minutes", type=float, default=5.0, help="--size 1558M: each run's training time, sharing the card")
    parser.add_argument("--calibration-steps", type=int, default=20, help="--size 1558M: steps that measure each run's rate")
    args = parser.parse_args()
    large = args.size == "1558M"  # with --smoke: the same phases on the tiny model (a check of the script)
    size = "smoke" if args.smoke else args.size
    if args.smoke:
        args.experts, args.steps, args.parallel = "2", min(args.steps, 40), min(args.parallel, 2)
    earlier = earlier_rates(args.rates_from, args.seed, args.steps) if args.budget == "time" and args.rates_from else None
    out = Path(os.environ.get("OUT", REPO / "bench" / "results"))
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="koi-mixture-"))
    shards = prepare(work)
    mixtures = [(int(e), m) for e in args.experts.split(",") for m in args.methods.split(",")]

    def case(budget: str, experts: int, method: str, steps: int) -> dict:
        layers = LAYERS[size]
        label = "full depth" if experts <= 1 else f"{experts} x {layers // experts} {method}"
        name = f"{budget}-{'full' if experts <= 1 else f'e{experts}-{method}'}-s{args.seed}"
        return {"name": name, "budget": budget, "label": label, "experts": experts, "method": method, "steps": steps,
                "seed": args.seed, "optimizer": args.optimizer}

    print(f"{'budget':<7}{'run':<16}{'steps':>6}  " + "  ".join(f"{f + ' (best)':<22}" for f in VAL_FILES)
          + f"{'tok/s':>11}{'peak GiB':>9}{'tok/s/M':>10}", flush=True)
    if large:
        equal_time_large(case, mixtures, args, shards, work, out, size)
        return
    if args.budget == "time" and args.speedups:
        launch([case("time", e, m, round(args.steps * args.speedups[e])) for e, m in mixtures if e in args.speedups],
               shards, work, args.parallel, out, size)
        return
    if earlier is not None:
        equal_tokens = earlier
    else:
        equal_tokens = launch([case("tokens", 1, "-", args.steps)] + [case("tokens", e, m, args.steps) for e, m in mixtures],
                              shards, work, args.parallel, out, size)
    if args.budget in ("time", "both"):
        full = next((r for r in equal_tokens if r["experts"] <= 1), None)
        if full is None:
            print("equal wall time: needs the full-depth run's rate, which failed", flush=True)
            return
        cases = [case("time", r["experts"], r["method"], round(args.steps * r["tokens_per_s"] / full["tokens_per_s"]))
                 for r in equal_tokens if r["experts"] > 1]
        launch(cases, shards, work, args.parallel, out, size)


if __name__ == "__main__":
    main()
