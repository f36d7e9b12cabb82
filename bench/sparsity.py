"""Sparse training on the card (issue 27): 2:4 matmuls, gathered MLPs and whole steps, each against dense bf16 in the same run.

Three tables, every row printed as soon as it is measured, a failing row marked and the rest
carried on; rows also land in $OUT/sparsity.jsonl (or bench/results/):

1. ``matmul``: the MLP Linears of GPT-2 124M (768 <-> 3072) and 1558M (1600 <-> 6400) at
   training token counts. Forward of a 2:4 weight on the semi-structured kernels (cuSPARSELt and
   CUTLASS; weight compressed once, as at inference, and compressed in every call, as in training,
   where the weight changes each step), and forward + backward of koi-quant's `SparseLinear` (fp32
   master weight under bf16 autocast, as koi-train trains) on the kernel and masked dense, all as
   a ratio to the dense bf16 layer.
2. ``gather``: the MLP computed on a kept fraction of its hidden neurons (koi-quant's
   `gathered_mlp`): one neuron set shared by a batch of tokens, and one set per token for a few
   decoding tokens, against the dense MLP. For per-token sets also koi-kernels' fused
   `gathered_mlp_per_token` (Triton, two kernels), and the whole decoding block as koi-train runs
   it (the rank-64 predictor, top-k, the fused gather) against the dense MLP, eager and replayed
   from a CUDA graph (where launches cost little, as in a graphed decoder).
3. ``step``: whole `koi-train run` steps through bench/train_throughput.py: koi, koi-sparse24
   (2:4 MLPs, masked dense: the default), koi-sparse24-kernel (on the sparse kernels), koi-sparse24-int8, koi-predictor.

    python bench/sparsity.py                       # all three (about 6 minutes on an H200)
    python bench/sparsity.py --only matmul gather  # no whole-step runs
    python bench/sparsity.py --smoke               # tiny shapes on the CPU: checks the script, no speeds worth reading
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from koi_kernels import gathered_mlp_per_token
from koi_quant import LowRankPredictor, SparseLinear, gathered_mlp, nm_mask, update_masks_
from koi_quant.sparsity import semi_structured_matmul

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from kernels import timed  # noqa: E402  (reads --smoke from the command line, as this script does)

# name: (width, hidden, tokens per step): GPT-2 MLP shapes at 32 x 1024 and 8 x 1024 tokens (train_throughput's batches)
SHAPES = {"124M": (768, 3072, 32 * 1024), "1558M": (1600, 6400, 8 * 1024)}
SMOKE_SHAPES = {"smoke": (64, 256, 128)}
KEEP_FRACTIONS = (0.5, 0.25, 0.1, 0.05)
PREDICTOR_RANK = 64  # koi-train's default sparsity.activation_predictor.rank
STEP_SIDES = ("koi", "koi-sparse24", "koi-sparse24-kernel", "koi-sparse24-int8", "koi-predictor")


def timed_ms(fn: Callable[[], object], device: torch.device, iters: int) -> float:
    """Median milliseconds per call after warm-up: bench/kernels.py's CUDA-event timer (one wall-clock call with --smoke)."""
    return timed(fn, iters)


class Table:
    def __init__(self, out: Path, kind: str, header: str) -> None:
        self.out, self.kind = out, kind
        print(f"\n== {kind} ==\n{header}", flush=True)

    def row(self, text: str, record: dict) -> None:
        print(text, flush=True)
        with (self.out / "sparsity.jsonl").open("a") as f:
            f.write(json.dumps({"kind": self.kind, "date": time.strftime("%Y-%m-%d"), **record}) + "\n")


def attempt(table: Table, label: str, record: dict, measure: Callable[..., tuple[str, float]], *args) -> None:
    """Measure one row (``measure(*args)`` returns its text and milliseconds); a failure prints as that row and the table goes on."""
    try:
        text, ms = measure(*args)
        table.row(text, {**record, "ms": ms})
    except Exception as exc:  # noqa: BLE001 - a bench row reports any failure and the rest still run
        message = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
        table.row(f"{label} FAILED: {message}", {**record, "error": message})


def matmul_text(label: str, side: str, ms: float, flops: float, base_ms: float) -> str:
    return f"{label}{side:<34}{ms:>9.3f}{flops / ms / 1e9:>9.1f}{base_ms / ms:>8.2f}x"


def set_backend(name: str) -> None:
    from torch.sparse import SparseSemiStructuredTensor

    SparseSemiStructuredTensor._FORCE_CUTLASS = name == "cutlass"


def sparse_forward(label: str, x: torch.Tensor, w24: torch.Tensor, backend: str, per_call: bool, flops: float, dense_ms: float,
                   device: torch.device, iters: int) -> tuple[str, float]:
    """2:4 forward on one backend: the weight compressed once (inference) or in every call (training: it changes each step)."""
    from torch.sparse import to_sparse_semi_structured

    set_backend(backend)
    if per_call:
        ms = timed_ms(lambda: semi_structured_matmul(x, w24), device, iters)
    else:
        compressed = to_sparse_semi_structured(w24)
        ms = timed_ms(lambda: F.linear(x, compressed), device, iters)
    side = f"2:4 {backend} fwd, " + ("compress each call" if per_call else "compressed once")
    return matmul_text(label, side, ms, flops, dense_ms), ms


def matmul_rows(table: Table, shapes: dict, device: torch.device, iters: int) -> None:
    bf16 = torch.bfloat16
    for model, (width, hidden, tokens) in shapes.items():
        for layer_name, (n_out, n_in) in (("c_fc", (hidden, width)), ("c_proj", (width, hidden))):
            x = torch.randn(tokens, n_in, device=device, dtype=bf16)
            w = torch.randn(n_out, n_in, device=device, dtype=bf16)
            w24 = w * nm_mask(w)
            flops = 2 * tokens * n_in * n_out
            dense_ms = timed_ms(partial(F.linear, x, w), device, iters)
            label = f"{model:<7}{layer_name:<8}{tokens:>7}  "
            record = {"model": model, "layer": layer_name, "tokens": tokens}
            table.row(matmul_text(label, "dense bf16 forward", dense_ms, flops, dense_ms), {**record, "side": "dense-fwd", "ms": dense_ms})
            if device.type == "cuda":
                for backend in ("cusparselt", "cutlass"):
                    for per_call in (False, True):
                        attempt(table, label, {**record, "side": f"sparse-fwd-{backend}-{'per-call' if per_call else 'once'}"},
                                sparse_forward, label, x, w24, backend, per_call, flops, dense_ms, device, iters)
                set_backend("cusparselt")
            layer_rows(table, label, record, x, n_in, n_out, flops, device, iters)


def train_step(layer: nn.Module, x: torch.Tensor) -> None:
    """One forward + backward as koi-train trains: fp32 master weights under bf16 autocast."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16):
        out = layer(x)
    out.backward(torch.ones_like(out))
    x.grad = None
    layer.zero_grad(set_to_none=True)


def sparse_layer_step(label: str, n_in: int, n_out: int, kernel: str, x: torch.Tensor, flops: float, dense_ms: float,
                      device: torch.device, iters: int) -> tuple[str, float]:
    holder = nn.Sequential(SparseLinear.from_linear(nn.Linear(n_in, n_out, device=device), kernel=kernel))
    update_masks_(holder)
    ms = timed_ms(partial(train_step, holder, x), device, iters)
    return matmul_text(label, f"2:4 fwd+bwd ({'kernel' if holder[0].sparse_kernel else 'masked dense'})", ms, 3 * flops, dense_ms), ms


def layer_rows(table: Table, label: str, record: dict, x: torch.Tensor, n_in: int, n_out: int, flops: int,
               device: torch.device, iters: int) -> None:
    x = x.float().requires_grad_(True)
    dense_ms = timed_ms(partial(train_step, nn.Linear(n_in, n_out, device=device), x), device, iters)
    table.row(matmul_text(label, "dense fwd+bwd (autocast)", dense_ms, 3 * flops, dense_ms),
              {**record, "side": "dense-fwd-bwd", "ms": dense_ms})
    for kernel in ("semi_structured", "masked"):
        attempt(table, label, {**record, "side": f"sparse-fwd-bwd-{kernel}"}, sparse_layer_step, label, n_in, n_out, kernel, x, flops,
                dense_ms, device, iters)


def gelu(h: torch.Tensor) -> torch.Tensor:
    return F.gelu(h, approximate="tanh")


def dense_mlp(x: torch.Tensor, up: torch.Tensor, up_b: torch.Tensor, down: torch.Tensor, down_b: torch.Tensor) -> torch.Tensor:
    return F.linear(gelu(F.linear(x, up, up_b)), down, down_b)


def gathered(label: str, keep: float, args: tuple, index: torch.Tensor, dense_ms: float, device: torch.device,
             iters: int) -> tuple[str, float]:
    x, up, up_b, down, down_b = args
    ms = timed_ms(partial(gathered_mlp, x, [up], [up_b], down, down_b, index, gelu), device, iters)
    return f"{label}{keep:>8.2f}{ms:>10.4f}{dense_ms / ms:>8.2f}x", ms


def fused(label: str, keep: float, args: tuple, down_rows: torch.Tensor, index: torch.Tensor, dense_ms: float,
          device: torch.device, iters: int) -> tuple[str, float]:
    x, up, up_b, _, down_b = args
    ms = timed_ms(partial(gathered_mlp_per_token, x, [up], [up_b], down_rows, down_b, index), device, iters)
    return f"{label}{keep:>8.2f}{ms:>10.4f}{dense_ms / ms:>8.2f}x", ms


def graphed(fn: Callable[[], object], device: torch.device) -> Callable[[], object]:
    """fn captured once in a CUDA graph and replayed (each replay is one launch); fn itself off CUDA."""
    if device.type != "cuda":
        return fn
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):  # warm-up: Triton compiles and cuBLAS picks its kernels outside the capture
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def decode_block(x: torch.Tensor, predictor: LowRankPredictor, keep: int, up: torch.Tensor, up_b: torch.Tensor,
                 down_rows: torch.Tensor, down_b: torch.Tensor) -> torch.Tensor:
    """What koi-train's PredictedMLP does per decoding call: score, pick each token's top neurons, compute only those."""
    index = predictor(x).topk(keep, dim=-1).indices
    return gathered_mlp_per_token(x, [up], [up_b], down_rows, down_b, index)


def decode_row(label: str, keep: float, block: Callable[[], torch.Tensor], graph: bool, dense_ms: float, device: torch.device,
               iters: int) -> tuple[str, float]:
    with torch.no_grad():
        ms = timed_ms(graphed(block, device) if graph else block, device, iters)
    return f"{label}{keep:>8.2f}{ms:>10.4f}{dense_ms / ms:>8.2f}x", ms


def decode_rows(table: Table, label: str, record: dict, args: tuple, down_rows: torch.Tensor, device: torch.device,
                iters: int) -> None:
    x, up, up_b, _, down_b = args
    hidden = down_rows.shape[0]
    predictor = LowRankPredictor(x.shape[1], hidden, PREDICTOR_RANK, device=device, dtype=x.dtype)
    for mode in ("eager", "cuda graph"):
        row_label = f"{label}{'decode block, ' + mode:<28}"
        dense = partial(dense_mlp, *args)
        dense_ms = timed_ms(graphed(dense, device) if mode == "cuda graph" else dense, device, iters)
        table.row(f"{row_label}{'dense':>8}{dense_ms:>10.4f}{1:>8.2f}x", {**record, "side": f"decode-{mode}", "keep": 1.0, "ms": dense_ms})
        for keep in (0.25, 0.1):
            block = partial(decode_block, x, predictor, max(1, round(keep * hidden)), up, up_b, down_rows, down_b)
            attempt(table, row_label, {**record, "side": f"decode-{mode}", "keep": keep}, decode_row, row_label, keep, block,
                    mode == "cuda graph", dense_ms, device, iters)


def gather_rows(table: Table, shapes: dict, device: torch.device, iters: int) -> None:
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    for model, (width, hidden, tokens) in shapes.items():
        up, up_b = torch.randn(hidden, width, device=device, dtype=dtype), torch.zeros(hidden, device=device, dtype=dtype)
        down, down_b = torch.randn(width, hidden, device=device, dtype=dtype), torch.zeros(width, device=device, dtype=dtype)
        down_rows = down.t().contiguous()  # what koi-train keeps for the fused kernel
        for count, per_token in ((tokens, False), (1, True), (16, True)):
            args = (torch.randn(count, width, device=device, dtype=dtype), up, up_b, down, down_b)
            dense_ms = timed_ms(partial(dense_mlp, *args), device, iters)
            mode = "per-token sets" if per_token else "one shared set"
            label = f"{model:<7}{count:>7}  {mode:<16}{'torch gather':<28}"
            record = {"model": model, "tokens": count, "mode": mode}
            table.row(f"{label}{'dense':>8}{dense_ms:>10.4f}{1:>8.2f}x", {**record, "keep": 1.0, "ms": dense_ms})
            indices = {}
            for keep in KEEP_FRACTIONS:
                k = max(1, round(keep * hidden))
                indices[keep] = (torch.rand(count, hidden, device=device).topk(k, -1).indices if per_token
                                 else torch.randperm(hidden, device=device)[:k])
                attempt(table, label, {**record, "keep": keep}, gathered, label, keep, args, indices[keep], dense_ms, device, iters)
            if not per_token:
                continue
            label = f"{model:<7}{count:>7}  {mode:<16}{'fused (koi-kernels)':<28}"
            for keep in KEEP_FRACTIONS:
                attempt(table, label, {**record, "side": "fused", "keep": keep}, fused, label, keep, args, down_rows, indices[keep],
                        dense_ms, device, iters)
            decode_rows(table, f"{model:<7}{count:>7}  {mode:<16}", record, args, down_rows, device, iters)


def step_rows(steps: int) -> None:
    """Whole training steps: train_throughput.py's koi-train runs with the sparse sides (its own table)."""
    command = [sys.executable, str(REPO / "bench" / "train_throughput.py"), "--steps", str(steps)]
    for side in STEP_SIDES:
        command += ["--side", side]
    print("\n== step ==", flush=True)
    subprocess.run(command, check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=["matmul", "gather", "step"], default=["matmul", "gather", "step"])
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--steps", type=int, default=20, help="warm-up and timed steps per whole-step side")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, on the CPU if there is no GPU")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    shapes = SMOKE_SHAPES if args.smoke else SHAPES
    # a smoke check's rows are no results: they go to a temporary folder unless $OUT says otherwise
    out = Path(os.environ.get("OUT") or (tempfile.mkdtemp(prefix="koi-sparsity-smoke-") if args.smoke else REPO / "bench" / "results"))
    out.mkdir(parents=True, exist_ok=True)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"device {name}, torch {torch.__version__}, {args.iters} timed calls per row (median)", flush=True)
    if "matmul" in args.only:
        table = Table(out, "matmul", f"{'model':<7}{'layer':<8}{'tokens':>7}  {'side':<34}{'ms':>9}{'TFLOP/s':>9}{'vs dense':>9}")
        matmul_rows(table, shapes, device, args.iters)
    if "gather" in args.only:
        table = Table(out, "gather", f"{'model':<7}{'tokens':>7}  {'neurons':<16}{'path':<28}{'kept':>8}{'ms':>10}{'vs dense':>9}")
        gather_rows(table, shapes, device, args.iters)
    if "step" in args.only:
        if device.type != "cuda":
            print("\n== step ==\nskipped: koi-train run throughput needs CUDA", flush=True)
        else:
            step_rows(args.steps)


if __name__ == "__main__":
    main()
