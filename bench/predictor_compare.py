"""Contextual activation sparsity (issue 27): does a gradient-boosted-tree neuron predictor fit, beside Koi's low-rank probe?

A small GPT-2 trains with koi-train on real text (the Python documentation, pydocs-val.txt, with
a byte-level BPE trained on it) for a few hundred CPU steps, its activation predictor on, so
Koi's low-rank probe trains alongside. Then, per MLP block, on the block input (post-LN hidden)
and its true top-k neurons by |GELU activation| (koi-train's definition: k = keep_fraction x
hidden), every predictor is scored at the same k on held-out val windows:

- ``dense-mlp``: the baseline, the whole MLP (it knows the true top-k: recall 1); every cost is held to it;
- ``static``: the k neurons most often in the top-k on the fit windows, whatever the token (no context);
- ``probe-alongside``: Koi's `LowRankPredictor` as koi-train trained it;
- ``probe-offline``: the same probe fitted on the fit windows' activations only (the trees' data);
- ``trees-per-neuron``: one sklearn HistGradientBoostingClassifier per neuron on the same target;
- ``trees-shared``: boosted multi-output regression trees, each split shared by all neurons (the
  cheapest tree form per token: a few comparisons and one leaf vector per tree).

Each row: recall of the true top-k, fit seconds, parameters and bytes, operations per token
(multiply-adds x2 for the probe and MLP; comparisons + adds for trees, which are branchy loads, not
FLOPs) against the MLP FLOPs that skipping 1 - keep of the neurons saves, and measured CPU
microseconds per token (one thread, all val tokens in one batch). Recall is on the dense model's
activations, block by block; koi-train's own figure (printed too) is lower because it measures with
every block already sparse. Last, the val loss with every block computing only its predicted
neurons (koi-eval's estimate_loss, the same windows for all). Rows print as measured and land in
--out (JSONL).

    python bench/predictor_compare.py            # full: gpt2-tiny (4 x 128, 512 neurons), about 9 minutes on 2 CPU cores
    python bench/predictor_compare.py --smoke    # under a minute: checks the script, no figures worth reading
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from koi_quant import LowRankPredictor, predictor_loss, recall, top_mask

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))  # the data helper is repository tooling, not an installed package
from koi_data import data_root  # noqa: E402

CORPUS = "corpus/pydocs-val.txt"


@dataclass(frozen=True)
class Budget:
    """How big everything is: the full run and the smoke check differ only here."""

    model: dict
    vocab_size: int
    steps: int
    batch_size: int
    fit_windows: int  # train windows whose activations the offline predictors fit on
    val_windows: int  # held-out windows for recall, cost and the sparse loss
    probe_epochs: int
    tree_iters: int  # boosting rounds per neuron
    tree_leaves: int
    shared_trees: int  # boosting rounds of the shared multi-output trees
    shared_depth: int


FULL = Budget(model={"arch": "gpt2", "preset": "gpt2-tiny"}, vocab_size=1024, steps=300, batch_size=16, fit_windows=32,
              val_windows=16, probe_epochs=60, tree_iters=20, tree_leaves=8, shared_trees=20, shared_depth=6)
SMOKE = Budget(model={"arch": "gpt2", "preset": "gpt2-tiny", "n_layer": 2, "n_embd": 64, "n_head": 4, "block_size": 64},
               vocab_size=512, steps=20, batch_size=8, fit_windows=4, val_windows=2, probe_epochs=2, tree_iters=3,
               tree_leaves=4, shared_trees=2, shared_depth=3)


def limit_threads() -> Callable[[], object]:
    """One thread for torch and for sklearn's OpenMP: another job shares this machine, and per-token costs are per core."""
    torch.set_num_threads(1)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # without sklearn there is nothing else to limit
        return nullcontext
    return lambda: threadpool_limits(1)


def cpu_name() -> str:
    """The processor's model name (Linux), for the record: per-token microseconds depend on it."""
    info = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in info.read_text().splitlines() if line.startswith("model name")] \
        if info.exists() else []
    return f"{names[0] if names else platform.machine()} x{os.cpu_count()}"


def train_run(work: Path, budget: Budget, keep: float, rank: int):
    """koi-train on pydocs with the activation predictor on; returns the trainer (model inside) and the prepared data."""
    from koi_train import Trainer, load_dict
    from koi_train.config import PrepareConfig
    from koi_train.prepare import prepare_data

    text = data_root([CORPUS]) / CORPUS
    prepared = prepare_data(PrepareConfig(text=(str(text),), vocab_size=budget.vocab_size, val_fraction=0.1), work / "data",
                            log=lambda *_: None)
    cfg = {"name": "predictor-compare", "out_dir": str(work), "seed": 7, "model": budget.model,
           "data": {"train": list(prepared.train), "val": list(prepared.val), "tokenizer": prepared.tokenizer},
           "train": {"steps": budget.steps, "batch_size": budget.batch_size, "lr": 3e-3, "warmup_steps": budget.steps // 10,
                     "schedule": "cosine", "device": "cpu", "compile": False, "log_every": max(1, budget.steps // 5)},
           "sparsity": {"activation_predictor": {"enabled": True, "keep_fraction": keep, "rank": rank}},
           "eval": {"every": 0, "max_windows": 16, "sample_prompt": None},
           "checkpoint": {"every": 0, "keep_last": 1}}
    trainer = Trainer(load_dict(cfg), work / "run", log=lambda line: print(f"  koi-train: {line}", flush=True))
    trainer.fit()
    return trainer, prepared


def windows(tokens: np.ndarray, count: int, block: int, *, seed: int | None) -> torch.Tensor:
    """``count`` windows of ``block`` tokens: random starts (seed) for fitting, the first non-overlapping ones (None) for val."""
    if seed is None:
        starts = np.arange(count) * block
    else:
        starts = np.random.default_rng(seed).integers(0, len(tokens) - block, size=count)
    return torch.from_numpy(np.stack([tokens[s : s + block] for s in starts]).astype(np.int64))  # (count, block)


@torch.no_grad()
def collect(model: nn.Module, mlps: list[nn.Module], batch: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per MLP block: its inputs (N, C) and hidden activations (N, H) over every token of ``batch``, from one dense forward."""
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def grab(module: nn.Module, args: tuple) -> None:
        x = args[0].reshape(-1, args[0].shape[-1])
        seen.append((x.clone(), module.dense_hidden(x)))  # (N, C), (N, H)

    handles = [m.register_forward_pre_hook(grab) for m in mlps]
    try:
        model.eval()
        for rows in batch.split(8):
            model(rows)
    finally:
        for h in handles:
            h.remove()
    return [(torch.cat([s[0] for s in seen[b :: len(mlps)]]), torch.cat([s[1] for s in seen[b :: len(mlps)]]))
            for b in range(len(mlps))]


@dataclass
class Run:
    """The trained model and what the predictors fit on and are scored on."""

    model: nn.Module
    mlps: list  # koi-train's PredictedMLP per block, in order
    keep: int
    block: int
    val: list[np.ndarray]  # the val shards' tokens
    fit_acts: list[tuple[torch.Tensor, torch.Tensor]]  # per block: inputs (N, C), activations (N, H)
    val_acts: list[tuple[torch.Tensor, torch.Tensor]]
    train_seconds: float
    koi_eval: str  # koi-train's own predictor figures at its final evaluation, for a cross-check


def prepare_run(budget: Budget, keep: float, rank: int) -> Run:
    """Train (probe alongside), then take every block's activations on random train windows and the first val windows."""
    from koi_tokenizer import read_shard
    from koi_train.sparsity import PredictedMLP

    with tempfile.TemporaryDirectory(prefix="koi-predictor-compare-") as work:
        started = time.perf_counter()
        trainer, prepared = train_run(Path(work), budget, keep, rank)
        seconds = time.perf_counter() - started
        records = [json.loads(line) for line in (Path(work) / "run" / "metrics.jsonl").read_text().splitlines()]
        last = [r for r in records if "predictor_recall" in r][-1]
        train_tokens = np.concatenate([read_shard(p) for p in prepared.train])
        val = [np.array(read_shard(p)) for p in prepared.val]  # copies: the folder goes away
    model = trainer.parts.model
    mlps = [m for m in model.modules() if isinstance(m, PredictedMLP)]
    block = trainer.parts.block_size
    fit_acts = collect(model, mlps, windows(train_tokens, budget.fit_windows, block, seed=1))
    val_acts = collect(model, mlps, windows(np.concatenate(val), budget.val_windows, block, seed=None))
    koi_eval = (f"recall {last['predictor_recall']:.3f}, val loss {last['val_loss']:.4f} -> {last['sparse_mlp_val_loss']:.4f} "
                f"with predicted neurons only")
    return Run(model, mlps, mlps[0].keep, block, val, fit_acts, val_acts, seconds, koi_eval)


class Probe:
    """Koi's `LowRankPredictor` (two small matmuls per token): as koi-train trained it alongside (``epochs`` 0, nothing to
    fit here: its cost is a share of every training step), or fresh, fitted with Adam on the fit windows, the trees' data."""

    def __init__(self, probe: LowRankPredictor, keep: int, epochs: int = 0) -> None:
        self.probe, self.keep, self.epochs = probe, keep, epochs
        self.name, self.fitted_alongside = ("probe-offline", False) if epochs else ("probe-alongside", True)

    def fit(self, x: torch.Tensor, target: torch.Tensor) -> None:
        optimizer = torch.optim.Adam(self.probe.parameters(), lr=3e-3)
        labels = target.float()  # predictor_loss takes the top-k of any |values|: the 0/1 mask gives back itself
        generator = torch.Generator().manual_seed(0)
        for _ in range(self.epochs):
            for rows in torch.randperm(len(x), generator=generator).split(256):
                loss = predictor_loss(self.probe(x[rows]), labels[rows], self.keep)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()

    @torch.no_grad()
    def scores(self, x: torch.Tensor) -> torch.Tensor:
        return self.probe(x)  # (N, H)

    def size(self) -> tuple[int, int, float]:
        """(parameters, bytes in fp32, operations per token: two matmuls and a bias)."""
        params = sum(p.numel() for p in self.probe.parameters())
        return params, 4 * params, 2 * self.probe.down.weight.numel() + 2 * self.probe.up.weight.numel() + self.probe.up.out_features


class StaticFrequency:
    """No context: the neurons most often in the top-k on the fit windows, the same for every token (free to evaluate)."""

    name, fitted_alongside = "static", False

    def fit(self, x: torch.Tensor, target: torch.Tensor) -> None:
        self.frequency = target.float().mean(0)  # (H,)

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        return self.frequency.expand(len(x), -1)

    def size(self) -> tuple[int, int, float]:
        return self.frequency.numel(), 4 * self.frequency.numel(), 0.0


class NeuronTrees:
    """One HistGradientBoostingClassifier per neuron on the probe's target (is this neuron in the token's top-k?)."""

    name, fitted_alongside = "trees-per-neuron", False

    def __init__(self, iters: int, leaves: int) -> None:
        self.iters, self.leaves = iters, leaves

    def fit(self, x: torch.Tensor, target: torch.Tensor) -> None:
        from sklearn.ensemble import HistGradientBoostingClassifier

        features, labels = x.numpy(), target.numpy()
        self.models: list = []
        for j in range(labels.shape[1]):
            y = labels[:, j]
            if y.min() == y.max():  # never (or always) fires on the fit windows: a constant, no trees
                self.models.append(1e9 if y[0] else -1e9)
                continue
            model = HistGradientBoostingClassifier(max_iter=self.iters, max_leaf_nodes=self.leaves, learning_rate=0.3,
                                                   early_stopping=False, random_state=0)
            self.models.append(model.fit(features, y))

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        features = x.numpy()
        columns = [np.full(len(features), m) if isinstance(m, float) else m.decision_function(features) for m in self.models]
        return torch.from_numpy(np.stack(columns, axis=1)).float()

    def size(self) -> tuple[int, int, float]:
        """Parameters: feature + threshold per split, one value per leaf; bytes: sklearn's node records; ops: the
        expected root-to-leaf comparisons (weighted by fit samples) plus one add, per tree."""
        params = nbytes = 0
        ops = 0.0
        for model in self.models:
            if isinstance(model, float):
                params, nbytes = params + 1, nbytes + 4
                continue
            for tree in (t for per_class in model._predictors for t in per_class):  # sklearn has no public accessor
                nodes = tree.nodes
                leaves = nodes["is_leaf"].astype(bool)
                params += 2 * int((~leaves).sum()) + int(leaves.sum())
                nbytes += nodes.nbytes
                ops += float((nodes["count"][leaves] * nodes["depth"][leaves]).sum() / nodes["count"][leaves].sum()) + 1
        return params, nbytes, ops


class SharedTrees:
    """Gradient boosting (squared error on the 0/1 top-k mask) with multi-output regression trees: every split is shared
    by all neurons and each leaf holds a score per neuron, so a token pays a few comparisons and one vector add per tree."""

    name, fitted_alongside = "trees-shared", False

    def __init__(self, rounds: int, depth: int) -> None:
        self.rounds, self.depth, self.learning_rate = rounds, depth, 0.3

    def fit(self, x: torch.Tensor, target: torch.Tensor) -> None:
        from sklearn.tree import DecisionTreeRegressor

        features, labels = x.numpy(), target.numpy().astype(np.float32)
        self.base = labels.mean(0)
        residual = labels - self.base
        self.trees = []
        for k in range(self.rounds):  # max_features: a third of the inputs per split keeps a 512-output fit to seconds
            tree = DecisionTreeRegressor(max_depth=self.depth, max_features=0.33, random_state=k).fit(features, residual)
            residual -= self.learning_rate * tree.predict(features).astype(np.float32)
            self.trees.append(tree)

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        features = x.numpy()
        total = np.broadcast_to(self.base, (len(features), len(self.base))).copy()
        for tree in self.trees:
            total += self.learning_rate * tree.predict(features)
        return torch.from_numpy(total).float()

    def size(self) -> tuple[int, int, float]:
        hidden = len(self.base)
        params, nbytes, ops = hidden, 4 * hidden, 0.0
        for tree in self.trees:
            t = tree.tree_
            leaves = t.children_left == -1
            params += 2 * int((~leaves).sum()) + hidden * int(leaves.sum())
            nbytes += t.value.nbytes + 24 * t.node_count  # leaf vectors (float64 in sklearn) + split records
            ops += self.depth + hidden  # comparisons to a leaf, then one add per neuron
        return params, nbytes, ops


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    """Best wall-clock seconds of ``repeats`` calls, and the last result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def mlp_cost(mlp: nn.Module, x: torch.Tensor, keep: int) -> dict:
    """The dense MLP's FLOPs and measured microseconds per token, and the FLOPs that computing only ``keep`` neurons saves."""
    width, hidden = mlp.c_fc.in_features, mlp.c_fc.out_features
    with torch.no_grad():
        seconds, _ = timed(lambda: mlp.c_proj(mlp.dense_hidden(x)), 5)
    return {"mlp_flops": 4 * width * hidden, "saved_flops": 4 * width * (hidden - keep), "mlp_us": 1e6 * seconds / len(x)}


def score_row(block: int, predictor, fit_data: tuple[torch.Tensor, torch.Tensor], val_data: tuple[torch.Tensor, torch.Tensor],
              keep: int, cost: dict, pool) -> dict:
    """Fit one predictor on one block and measure it on the val tokens: one row of the table."""
    with pool():
        fit_seconds, _ = timed(lambda: predictor.fit(*fit_data), 1)
        repeats = 1 if predictor.name.startswith("trees") else 5  # trees take seconds per call already
        predict_seconds, scores = timed(lambda: predictor.scores(val_data[0]), repeats)
    params, nbytes, ops = predictor.size()
    us = 1e6 * predict_seconds / len(val_data[0])
    return {"block": block, "predictor": predictor.name, "recall": recall(top_mask(scores, keep), val_data[1]),
            "fit_s": None if predictor.fitted_alongside else fit_seconds, "params": params, "bytes": nbytes,
            "ops_per_token": ops, "ops_vs_saved": ops / cost["saved_flops"], "us_per_token": us, "us_vs_mlp": us / cost["mlp_us"],
            "mlp_us_per_token": cost["mlp_us"], "mlp_flops": cost["mlp_flops"], "saved_flops": cost["saved_flops"],
            "val_tokens": len(val_data[0])}


def dense_row(block: int, cost: dict) -> dict:
    """The baseline: the whole MLP, which knows its true top-k; every predictor's cost is held to it."""
    return {"block": block, "predictor": "dense-mlp", "recall": 1.0, "fit_s": 0.0, "params": 0, "bytes": 0,
            "ops_per_token": cost["mlp_flops"], "ops_vs_saved": cost["mlp_flops"] / cost["saved_flops"], "us_per_token": cost["mlp_us"],
            "us_vs_mlp": 1.0, "mlp_us_per_token": cost["mlp_us"], "mlp_flops": cost["mlp_flops"], "saved_flops": cost["saved_flops"]}


def overall(rows: list[dict], name: str) -> dict:
    """One predictor over all blocks: mean recall; fit time, size and per-token cost summed."""
    mine = [r for r in rows if r["predictor"] == name]
    total = {k: sum(r[k] for r in mine) for k in ("params", "bytes", "ops_per_token", "us_per_token", "mlp_us_per_token", "saved_flops")}
    fit = None if any(r["fit_s"] is None for r in mine) else sum(r["fit_s"] for r in mine)
    return {"block": "all", "predictor": name, "recall": float(np.mean([r["recall"] for r in mine])), "fit_s": fit, **total,
            "ops_vs_saved": total["ops_per_token"] / total["saved_flops"], "us_vs_mlp": total["us_per_token"] / total["mlp_us_per_token"]}


class Scores(nn.Module):
    """A fitted predictor in the probe's place inside koi-train's PredictedMLP, so the model runs on its picks."""

    def __init__(self, predictor) -> None:
        super().__init__()
        self.predictor = predictor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predictor.scores(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:-1], -1)  # (B, T, H)


def sparse_loss(run: Run, predictors: list | None, windows_: int) -> float:
    """Val loss with every block computing only its predicted neurons (``None``: the dense model); the same windows for all."""
    from koi_eval import estimate_loss

    originals = [m.predictor for m in run.mlps]
    try:
        for m, p in zip(run.mlps, predictors or []):
            m.predictor, m.use_predictor = Scores(p), True
        with torch.no_grad():
            return estimate_loss(run.model.eval(), run.val, block_size=run.block, batch_size=8, max_windows=windows_, seed=0).loss
    finally:
        for m, original in zip(run.mlps, originals):
            m.predictor, m.use_predictor = original, False


class Table:
    """Rows printed as measured and appended to the JSONL."""

    HEADER = (f"{'block':>5}  {'predictor':<17}{'recall':>7}{'fit s':>8}{'params':>10}{'KiB':>9}{'ops/token':>11}"
              f"{'/saved':>8}{'us/token':>10}{'/MLP':>8}")

    def __init__(self, out: Path, setup: dict) -> None:
        self.out, self.setup = out, setup
        print(f"\n{self.HEADER}", flush=True)

    def row(self, r: dict) -> None:
        fit = "-" if r["fit_s"] is None else f"{r['fit_s']:.1f}"
        loss = f"  {r['val_loss']:.4f} ({r['loss_change']:+.4f})" if "val_loss" in r else ""
        print(f"{r['block']:>5}  {r['predictor']:<17}{r['recall']:>7.3f}{fit:>8}{r['params']:>10,}{r['bytes'] / 1024:>9.1f}"
              f"{r['ops_per_token']:>11,.0f}{r['ops_vs_saved']:>8.2f}{r['us_per_token']:>10.2f}{r['us_vs_mlp']:>8.2f}{loss}", flush=True)
        with self.out.open("a") as f:
            f.write(json.dumps({**r, **self.setup, "date": time.strftime("%Y-%m-%d")}) + "\n")


def make_predictors(mlp: nn.Module, rank: int, budget: Budget, keep: int, trees: bool) -> list:
    width, hidden = mlp.c_fc.in_features, mlp.c_fc.out_features
    found = [StaticFrequency(), Probe(mlp.predictor, keep), Probe(LowRankPredictor(width, hidden, rank), keep, budget.probe_epochs)]
    if trees:
        found += [NeuronTrees(budget.tree_iters, budget.tree_leaves), SharedTrees(budget.shared_trees, budget.shared_depth)]
    return found


def block_rows(run: Run, args, budget: Budget, table: Table, pool, trees: bool) -> tuple[list[dict], list[list]]:
    """Every predictor fitted and scored on every block, rows printed as they come; also the fitted predictors per block."""
    rows, fitted = [], []
    for b, (mlp, (fit_x, fit_h), (val_x, val_h)) in enumerate(zip(run.mlps, run.fit_acts, run.val_acts)):
        fit_data, val_data = (fit_x, top_mask(fit_h.abs(), run.keep)), (val_x, top_mask(val_h.abs(), run.keep))
        cost = mlp_cost(mlp, val_x, run.keep)
        table.row(dense_row(b, cost))
        predictors = make_predictors(mlp, args.rank, budget, run.keep, trees)
        for predictor in predictors:
            rows.append(score_row(b, predictor, fit_data, val_data, run.keep, cost, pool))
            table.row(rows[-1])
        fitted.append(predictors)
    return rows, fitted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a 2-layer model of 64 and tiny budgets: checks the script")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "predictor_compare.jsonl")
    parser.add_argument("--keep", type=float, default=0.25, help="fraction of the neurons kept per token (koi-train's default)")
    parser.add_argument("--rank", type=int, default=64, help="the probe's bottleneck (koi-train's default)")
    parser.add_argument("--steps", type=int, help="koi-train steps (default: 300, smoke 20)")
    args = parser.parse_args()
    budget = SMOKE if args.smoke else FULL
    if args.steps:
        budget = Budget(**{**asdict(budget), "steps": args.steps})
    pool = limit_threads()
    try:
        import sklearn
    except ImportError:
        sklearn = None
        print("scikit-learn is not installed: the tree rows are skipped (pip install scikit-learn to compare them)", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    run = prepare_run(budget, args.keep, args.rank)
    setup = {"smoke": args.smoke, "keep_fraction": args.keep, "keep": run.keep, "hidden": run.mlps[0].hidden_size, "rank": args.rank,
             "steps": budget.steps, "fit_tokens": len(run.fit_acts[0][0]), "val_tokens": len(run.val_acts[0][0]), "threads": 1,
             "cpu": cpu_name(), "torch": torch.__version__,
             "sklearn": getattr(sklearn, "__version__", None)}
    print(f"\nmodel {budget.model}: {len(run.mlps)} MLPs of {run.mlps[0].hidden_size} neurons, keep {run.keep} ({args.keep:.0%}); "
          f"koi-train: {budget.steps} steps in {run.train_seconds:.0f}s, its last eval: {run.koi_eval}\nfit on "
          f"{setup['fit_tokens']:,} train tokens, scored on {setup['val_tokens']:,} held-out val tokens, 1 thread on {setup['cpu']}\n"
          "/saved: predictor ops per token over the MLP FLOPs that skipping the other neurons saves (above 1: no gain possible); "
          "/MLP: measured predictor time over the dense MLP's", flush=True)
    table = Table(args.out, setup)
    rows, fitted = block_rows(run, args, budget, table, pool, trees=sklearn is not None)
    dense = sparse_loss(run, None, budget.val_windows)
    print(f"\nall blocks: recall averaged, the rest summed; val loss with every block on its predicted neurons only "
          f"(dense: {dense:.4f}, {budget.val_windows} windows)", flush=True)
    for k, predictor in enumerate(fitted[0]):
        with pool():
            loss = sparse_loss(run, [per_block[k] for per_block in fitted], budget.val_windows)
        table.row({**overall(rows, predictor.name), "val_loss": loss, "loss_change": loss - dense, "dense_val_loss": dense})
    print(f"\nrows appended to {args.out}", flush=True)


if __name__ == "__main__":
    main()
