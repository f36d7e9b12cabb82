"""Does summing the head's weight gradient straight into fp32 (cuBLAS beta = 1) pay? One fused loss, two ways.

The fused linear-CE sums each chunk's dW into an fp32 buffer. Before: a bf16 product, a cast to
fp32, then an add (three passes over a 768 x 50304 matrix per chunk). Now: `addmm` with
`out_dtype=float32` into the buffer itself. This times forward + backward of the fused loss at
GPT-2 124M's head (batch 32 x 1024, bf16 autocast), eager and compiled, both ways, in one process.

    python bench/probes/linear_ce_accumulate_probe.py
"""

from __future__ import annotations

import torch

from koi_kernels import linear_cross_entropy
from koi_kernels.ops import linear_ce


def summed_after_rounding(total: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    total += (a @ b).float()  # the previous way: a bf16 product, an fp32 copy, an add


def time_ms(fn, steps: int = 20) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(steps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / steps


def main() -> None:
    torch.manual_seed(0)
    tokens, width, vocab = 32 * 1024, 768, 50304
    h = torch.randn(tokens, width, device="cuda", requires_grad=True)
    w = (torch.randn(vocab, width, device="cuda") * 0.02).requires_grad_()
    t = torch.randint(0, vocab, (tokens,), device="cuda")
    kept = linear_ce.accumulate_product
    for way, accumulate in (("rounded then summed", summed_after_rounding), ("fp32 sum in cuBLAS", kept)):
        linear_ce.accumulate_product = accumulate
        for compiled in (False, True):
            fn = torch.compile(linear_cross_entropy) if compiled else linear_cross_entropy

            def step(fn=fn):
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    loss = fn(h, w, t)
                loss.backward()

            ms = time_ms(step)
            h.grad = w.grad = None
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = fn(h, w, t)
            loss.backward()
            print(f"{way:<22} {'compiled' if compiled else 'eager':<9} {ms:7.2f} ms  loss {loss.item():.5f}  "
                  f"|dW| {w.grad.norm().item():.6f}", flush=True)
            h.grad = w.grad = None
            torch._dynamo.reset()
    linear_ce.accumulate_product = kept


if __name__ == "__main__":
    main()
