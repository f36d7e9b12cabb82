"""Why did compiled low-bit layers get wrong weight gradients on the card? One Linear, STE variants.

koi-quant's old straight-through estimator (an `autograd.Function`, kept verbatim in
old_ste_autograd_function.py) against variants of it and against today's plain-op STE: the
weight gradient eager and through torch.compile (Inductor), with and without bf16 autocast.
On the H200 (torch 2.11, 2026-11-28) every Function whose forward output is built from the
rounding ops got a compiled weight gradient of exactly zero; see BENCHMARKS.md.

    python bench/probes/ste_autograd_function_probe.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from old_ste_autograd_function import FakeQuantizeSTE, clip_range_mask  # noqa: E402

from koi_quant import fake_quantize, fake_quantize_ste, get_format, learned_scale_quantize  # noqa: E402
from koi_quant.granularity import PER_ROW  # noqa: E402
from koi_quant.learned_scale import initial_scale  # noqa: E402

FORMAT = get_format("int4")


class QuantizeNoMask(torch.autograd.Function):
    """Quantized forward, identity backward: is the mask to blame? (No.)"""

    @staticmethod
    def forward(ctx, w):
        return fake_quantize(w, FORMAT, PER_ROW)

    @staticmethod
    def backward(ctx, grad):
        return grad


class MaskNoQuantize(torch.autograd.Function):
    """Identity forward, masked backward: is the quantized forward to blame? (Yes.)"""

    @staticmethod
    def forward(ctx, w):
        ctx.save_for_backward(clip_range_mask(w, FORMAT, PER_ROW))
        return w.clone()

    @staticmethod
    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        return grad * mask


VARIANTS = {
    "old_function": lambda w, s: FakeQuantizeSTE.apply(w, FORMAT, PER_ROW),
    "no_mask_fn": lambda w, s: QuantizeNoMask.apply(w),
    "mask_only_fn": lambda w, s: MaskNoQuantize.apply(w),
    "new_ste": lambda w, s: fake_quantize_ste(w, FORMAT, PER_ROW),
    "new_lsq": lambda w, s: learned_scale_quantize(w, s, FORMAT.qmax),
}


def main() -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    w0 = torch.randn(384, 256, device=device) * 0.02
    x = torch.randn(8, 64, 256, device=device)
    upstream = torch.randn(8, 64, 384, device=device)
    for autocast in (True, False):
        for name, quantize in VARIANTS.items():

            def loss_fn(w, s, x, quantize=quantize, autocast=autocast):
                with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
                    y = F.linear(x, quantize(w, s).to(x.dtype))
                return (y.float() * upstream).sum()

            grads = []
            for compiled in (False, True):
                torch._dynamo.reset()
                w = w0.clone().requires_grad_()
                s = initial_scale(w0, FORMAT.qmax).requires_grad_()
                (torch.compile(loss_fn) if compiled else loss_fn)(w, s, x).backward()
                grads.append(w.grad.clone())
            eager, compiled = grads
            gap = float((compiled - eager).norm() / eager.norm())
            print(f"autocast={autocast!s:<5} {name:<13} eager |g| {eager.norm():.4e} compiled |g| {compiled.norm():.4e} "
                  f"gap {gap:.2e}", flush=True)


if __name__ == "__main__":
    main()
