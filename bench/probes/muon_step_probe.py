"""What does stepping Muon's same-shape matrices together buy? One optimizer step, two ways, one process.

GPT-2 124M's (or 1558M's) 2-D block matrices with random gradients: Koi's Muon (one stacked
Newton-Schulz per shape, `optim.Muon`) against the matrix-by-matrix loop it replaced (kept here),
each timed over 20 steps after 3 of warm-up, GPU time and host time per step.

    python bench/probes/muon_step_probe.py            # 124M
    python bench/probes/muon_step_probe.py --size 1558M
"""

from __future__ import annotations

import argparse
import time

import torch

from koi_train.optim import Muon

SIZES = {"124M": (12, 768), "1558M": (48, 1600)}  # layers, width


class MatrixByMatrixMuon(torch.optim.Optimizer):
    """Muon as it was: each matrix orthogonalised on its own (the Newton-Schulz of optim.py before batching)."""

    def __init__(self, params, lr=0.02, momentum=0.95, ns_steps=5):
        super().__init__(params, dict(lr=lr, momentum=momentum, ns_steps=ns_steps))

    @torch.no_grad()
    def step(self):
        a, b, c = 3.4445, -4.7750, 2.0315
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state[p]
                buf = state.setdefault("momentum_buffer", torch.zeros_like(p))
                buf.mul_(group["momentum"]).add_(p.grad)
                x = p.grad.add(buf, alpha=group["momentum"]).bfloat16()
                transposed = x.size(0) > x.size(1)
                x = x.T if transposed else x
                x = x / (x.norm() + 1e-7)
                for _ in range(group["ns_steps"]):
                    gram = x @ x.T
                    x = a * x + (b * gram + c * gram @ gram) @ x
                update = (x.T if transposed else x).to(p.dtype)
                p.add_(update, alpha=-group["lr"] * max(1.0, p.size(0) / p.size(1)) ** 0.5)


def matrices(layers: int, width: int) -> list[torch.nn.Parameter]:
    shapes = [(3 * width, width), (width, width), (4 * width, width), (width, 4 * width)]  # qkv, proj, fc, fc proj
    params = [torch.nn.Parameter(torch.randn(*shape, device="cuda") * 0.02) for _ in range(layers) for shape in shapes]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    return params


def time_steps(optimizer: torch.optim.Optimizer, steps: int = 20) -> tuple[float, float]:
    for _ in range(3):
        optimizer.step()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    host = time.perf_counter()
    start.record()
    for _ in range(steps):
        optimizer.step()
    host = (time.perf_counter() - host) / steps * 1e3
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / steps, host


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=list(SIZES), default="124M")
    args = parser.parse_args()
    layers, width = SIZES[args.size]
    for name, make in (("matrix by matrix", MatrixByMatrixMuon), ("same shapes stacked (Koi)", Muon)):
        torch.manual_seed(0)
        params = matrices(layers, width)
        wall, host = time_steps(make(params))
        print(f"{args.size} {name:<28} {wall:7.2f} ms a step on the GPU clock, host {host:6.2f} ms to launch", flush=True)
        del params
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
