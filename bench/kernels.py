"""Per-op speed and memory of koi-kernels vs torch eager vs torch.compile, on the GPU, same run.

For each op and size: milliseconds for forward + backward, achieved GB/s (memory-bound ops),
peak memory above the inputs, and the copy bandwidth of this card measured in the same run as
the ceiling. The torch side runs the same references the tests use.

    python bench/kernels.py               # on a CUDA device
    python bench/kernels.py --quick       # smaller sizes
    python bench/kernels.py --smoke       # tiny sizes on the CPU (Triton interpreter): checks the script runs
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from koi_kernels import (
    AdamW8bit,
    fp8_linear,
    layer_norm,
    layer_norm_reference,
    linear_cross_entropy,
    packed_linear,
    packed_linear_reference,
    rms_norm,
    rms_norm_reference,
    rope,
    rope_reference,
    rope_tables,
)

REPO = Path(__file__).resolve().parents[1]
SMOKE = "--smoke" in sys.argv
DEVICE = "cpu" if SMOKE else "cuda"
if SMOKE:  # the kernels run in Triton's interpreter; set before any kernel is launched
    os.environ.setdefault("TRITON_INTERPRET", "1")
    os.environ.setdefault("KOI_KERNELS", "triton")


def timed(fn: Callable[[], None], repeats: int = 20) -> float:
    """Median milliseconds of fn() with CUDA events, after warm-up."""
    if SMOKE:
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1e3
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def peak_extra_gib(fn: Callable[[], None]) -> float:
    if SMOKE:
        fn()
        return 0.0
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**30


def copy_bandwidth() -> float:
    x = torch.empty((1 if SMOKE else 256) * 2**20, dtype=torch.uint8, device=DEVICE)
    y = torch.empty_like(x)
    ms = timed(lambda: y.copy_(x))
    return 2 * x.numel() / ms / 1e6  # GB/s, read + write


def fwd_bwd(op, inputs, grads):
    def run():
        for t in inputs:
            t.grad = None
        outs = op(*inputs)
        outs = outs if isinstance(outs, tuple) else (outs,)
        torch.autograd.backward([o for o in outs], [g for g in grads[: len(outs)]])
    return run


def norm_cases(quick: bool):
    shapes = [(40, 96)] if SMOKE else [(8192, 768)] if quick else [(32768, 768), (8192, 1600), (16384, 4096)]
    for rows, width in shapes:
        x = torch.randn(rows, width, device=DEVICE, dtype=torch.bfloat16, requires_grad=True)
        r = torch.randn_like(x, requires_grad=True)
        w = torch.ones(width, device=DEVICE, dtype=torch.bfloat16, requires_grad=True)
        b = torch.zeros(width, device=DEVICE, dtype=torch.bfloat16, requires_grad=True)
        dy, dh = torch.randn_like(x), torch.randn_like(x)
        moved = 2 * rows * width * 2 * 4  # fwd reads x, r, writes y, h; bwd reads dy, dh, h, writes dx: ~8 tensors of 2 bytes
        yield f"rms_norm+res {rows}x{width}", [x, r, w], (dy, dh), lambda x, r, w: rms_norm(x, w, residual=r), \
            lambda x, r, w: rms_norm_reference(x, w, residual=r), moved
        yield f"layer_norm+res {rows}x{width}", [x, r, w, b], (dy, dh), lambda x, r, w, b: layer_norm(x, w, b, residual=r), \
            lambda x, r, w, b: layer_norm_reference(x, w, b, residual=r), moved


def rope_cases(quick: bool):
    shapes = [(2, 3, 16, 16)] if SMOKE else [(8, 12, 1024, 64)] if quick else [(32, 12, 1024, 64), (8, 25, 1024, 64)]
    for shape in shapes:
        q = torch.randn(shape, device=DEVICE, dtype=torch.bfloat16, requires_grad=True)
        k = torch.randn(shape, device=DEVICE, dtype=torch.bfloat16, requires_grad=True)
        cos, sin = (t.to(DEVICE) for t in rope_tables(shape[-1], shape[2]))
        dq, dk = torch.randn_like(q), torch.randn_like(k)
        moved = 2 * q.numel() * 2 * 4
        yield f"rope {'x'.join(map(str, shape))}", [q, k], (dq, dk), lambda q, k, c=cos, s=sin: rope(q, k, c, s), \
            lambda q, k, c=cos, s=sin: (rope_reference(q, c, s), rope_reference(k, c, s)), moved


def linear_ce_case(quick: bool):
    tokens, width, vocab = (64, 32, 500) if SMOKE else (8192, 768, 50304) if quick else (32768, 768, 50304)
    h = torch.randn(tokens, width, device=DEVICE, dtype=torch.bfloat16, requires_grad=True)
    w = (torch.randn(vocab, width, device=DEVICE) * 0.02).to(torch.bfloat16).requires_grad_()
    t = torch.randint(0, vocab, (tokens,), device=DEVICE)
    one = torch.ones((), device=DEVICE)

    def reference(h, w):  # what a user writes: bf16 logits, fp32 loss
        return torch.nn.functional.cross_entropy((h @ w.T).float(), t)

    yield f"linear_ce {tokens}x{width}x{vocab}", [h, w], (one,), lambda h, w: linear_cross_entropy(h, w, t), reference, None


def matmul_cases(quick: bool):
    """Training matmuls at GPT-2 1558M shapes (tokens x 1600 -> 6400, the MLP up-projection), fwd + bwd.

    fp8: Koi's row-scaled (torch._scaled_mm; the registered op, and the traced one compiled) and tile-scaled (Triton)
    matmuls vs the bf16 matmul a user writes. Packed int4 (group
    128, frozen weights, gradient to the input): Koi's in-kernel dequantization vs dequantize-then-matmul.
    """
    from koi_quant import per_group, quantize

    tokens, k, n = (32, 320, 160) if SMOKE else (4096, 1600, 6400) if quick else (16384, 1600, 6400)
    x = torch.randn(tokens, k, device=DEVICE, dtype=torch.bfloat16, requires_grad=True)
    w = (torch.randn(n, k, device=DEVICE) * 0.02).to(torch.bfloat16).requires_grad_()
    dy = torch.randn(tokens, n, device=DEVICE, dtype=torch.bfloat16)
    for scaling in ("row", "tile"):
        yield f"fp8 linear ({scaling}) {tokens}x{k}x{n}", [x, w], (dy,), \
            lambda x, w, s=scaling: fp8_linear(x, w, scaling=s), torch.nn.functional.linear, None

    def row_fused(x, w):  # the traced row path: its casts fuse only under torch.compile, as in a compiled run
        return fp8_linear(x, w, scaling="row-fused")

    yield f"fp8 linear (row-fused, compiled) {tokens}x{k}x{n}", [x, w], (dy,), \
        row_fused if SMOKE else torch.compile(row_fused), torch.nn.functional.linear, None
    qw = quantize(w.detach().float(), "int4", per_group(128))
    qw.packed, qw.scale = qw.packed.to(DEVICE), qw.scale.to(DEVICE)
    yield f"int4 packed linear {tokens}x{k}x{n}", [x], (dy,), lambda x: packed_linear(x, qw), \
        lambda x: packed_linear_reference(x, qw), None


def optimizer_case(quick: bool):
    """``(koi_step, torch_step, bytes_moved)``: one 8-bit AdamW step over a 124M-parameter tensor, the
    Triton kernel vs the same step in torch ops, each on a parameter of its own."""
    from koi_kernels.ops import adamw8bit

    numel = 4096 if SMOKE else 16 * 2**20 if quick else 124 * 2**20

    def optimizer() -> AdamW8bit:
        p = torch.nn.Parameter(torch.randn(numel, device=DEVICE))
        p.grad = torch.randn_like(p)
        opt = AdamW8bit([p], lr=1e-4)
        opt.step()  # states exist from here on
        return opt

    koi = optimizer()
    reference = optimizer()
    p = reference.param_groups[0]["params"][0]

    @torch.no_grad()
    def torch_step():
        adamw8bit.adamw8bit_reference(p, p.grad, reference.state[p], step=2, lr=1e-4, beta1=0.9, beta2=0.999, eps=1e-8,
                                      weight_decay=0.01)

    # read p, g (4 + 4 bytes), m and v codes (1 + 1), write p, m, v (4 + 1 + 1): 16 bytes per parameter
    return koi.step, torch_step, numel * 16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU: the script runs, timings mean nothing")
    args = parser.parse_args()
    if not SMOKE and not torch.cuda.is_available():
        raise SystemExit("bench/kernels.py measures GPU kernels; no CUDA device here (tests cover CPU correctness)")
    ceiling = copy_bandwidth()
    print(f"{'CPU smoke run' if SMOKE else torch.cuda.get_device_name()}, torch {torch.__version__}; copy bandwidth {ceiling:,.0f} GB/s",
          flush=True)
    print(f"{'op':<34}{'koi ms':>8}{'eager':>8}{'compile':>8}{'vs compile':>11}{'GB/s':>8}{'% copy':>8}{'peak GiB koi/eager':>20}",
          flush=True)
    rows = []
    cases = [*norm_cases(args.quick), *rope_cases(args.quick), *linear_ce_case(args.quick), *matmul_cases(args.quick)]
    for case in [*cases, None]:
        try:  # a failing case is printed as failed; the others still run and print
            row = measure_case(case, ceiling) if case is not None else measure_optimizer(args.quick)
        except Exception as exc:
            name = case[0] if case is not None else "adamw8bit step 124M"
            print(f"{name:<34} FAILED: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}", flush=True)
            continue
        rows.append(row)
        gbps = row.get("koi_gbps")
        print(f"{row['op']:<34}{row['koi_ms']:>8.3f}{row['eager_ms']:>8.3f}{row['compile_ms']:>8.3f}"
              f"{row['compile_ms'] / row['koi_ms']:>10.2f}x{gbps or 0:>8.0f}{(gbps or 0) / ceiling:>8.0%}"
              f"{row['koi_peak_gib']:>10.2f}/{row['eager_peak_gib']:.2f}", flush=True)
    if not SMOKE:
        (REPO / "bench" / "results" / "kernels.json").write_text(json.dumps({"copy_gbps": ceiling, "rows": rows}, indent=1))


def measure_case(case, ceiling: float) -> dict:
    name, inputs, grads, koi, reference, moved = case
    compiled = reference if SMOKE else torch.compile(reference)
    row = {"op": name}
    for side, fn in (("koi", koi), ("eager", reference), ("compile", compiled)):
        run = fwd_bwd(fn, inputs, grads)
        row[f"{side}_ms"] = timed(run)
        row[f"{side}_peak_gib"] = peak_extra_gib(run)
    if moved:
        row["koi_gbps"] = moved / row["koi_ms"] / 1e6
    return row


def measure_optimizer(quick: bool) -> dict:
    """No compiled side: the eager torch step stands in the compile column."""
    koi_step, torch_step, moved = optimizer_case(quick)
    row = {"op": "adamw8bit step 124M", "koi_ms": timed(koi_step), "eager_ms": timed(torch_step)}
    row.update(compile_ms=row["eager_ms"], koi_gbps=moved / row["koi_ms"] / 1e6, koi_peak_gib=peak_extra_gib(koi_step),
               eager_peak_gib=peak_extra_gib(torch_step))
    return row

if __name__ == "__main__":
    main()
