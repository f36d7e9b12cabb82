"""Does torch.compile train the same model as eager? Gradients and a short loss curve, per precision plan.

For each format, two copies of one Koi GPT-2 (same init, same plan) take the same real batches:
one eager, one through `torch.compile`, both under the run's autocast. The table shows the
largest relative gradient difference over the quantized weights after one step, and the loss of
each copy after ``--steps`` AdamW steps. A compiled copy whose weights' gradients differ by more
than bf16 rounding trains another model.

    python bench/compile_parity.py                      # CUDA, bf16 autocast, every integer format
    python bench/compile_parity.py --device cpu --steps 5 --formats int4
    TORCHINDUCTOR_MIX_ORDER_REDUCTION=0 python bench/compile_parity.py   # one Inductor pass off
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
from contextlib import nullcontext
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from data_tokens import real_tokens  # noqa: E402


def build(fmt: str, device: torch.device, layers: int, width: int) -> torch.nn.Module:
    from koi_train.config import ModelConfig, PrecisionConfig
    from koi_train.models import build_model
    from koi_train.quantize import apply_precision_plan

    torch.manual_seed(0)
    model = build_model(ModelConfig(preset=None, n_layer=layers, n_embd=width, n_head=width // 64, block_size=256,
                                    vocab_size=50304))
    if fmt != "bf16":
        apply_precision_plan(model, PrecisionConfig(plan={"transformer.h.*": fmt}))
    return model.to(device)


def gradient_gap(eager: torch.nn.Module, compiled: torch.nn.Module) -> tuple[float, str]:
    """Largest ||g_compiled - g_eager|| / ||g_eager|| over the block weights, and whose it is."""
    worst, where = 0.0, ""
    for (name, a), b in zip(eager.named_parameters(), compiled.parameters()):
        if a.grad is None or ".h." not in name or a.grad.ndim != 2:
            continue
        gap = float((b.grad.double() - a.grad.double()).norm() / a.grad.double().norm().clamp_min(1e-30))
        if gap > worst:
            worst, where = gap, name
    return worst, where


def run(fmt: str, args, tokens: torch.Tensor, device: torch.device) -> dict:
    from koi_train.objective import NextTokenLoss

    eager = build(fmt, device, args.layers, args.width)
    twin = copy.deepcopy(eager)
    objectives = {"eager": NextTokenLoss(eager), "compiled": torch.compile(NextTokenLoss(twin))}
    models = {"eager": eager, "compiled": twin}
    optimizers = {k: torch.optim.AdamW(m.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1) for k, m in models.items()}
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    batch, seq = args.batch, 256
    losses: dict[str, float] = {}
    gap = (0.0, "")
    for step in range(args.steps):
        start = step * batch * seq
        window = tokens[start : start + batch * seq + 1].to(device)
        x, y = window[:-1].view(batch, seq), window[1:].view(batch, seq)
        for kind, objective in objectives.items():
            with autocast:
                loss = objective(x, y)
            loss.backward()
            losses[kind] = loss.item()
        if step == 0:
            gap = gradient_gap(eager, twin)
        for kind, opt in optimizers.items():
            torch.nn.utils.clip_grad_norm_(models[kind].parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
    return {"format": fmt, "grad_gap": gap[0], "worst": gap[1], "eager": losses["eager"], "compiled": losses["compiled"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--formats", default="bf16,int8,int4,ternary,binary")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    tokens = real_tokens(args.steps * args.batch * 256 + 1)
    flags = {k: v for k, v in os.environ.items() if k.startswith("TORCHINDUCTOR_")}
    print(f"device {device}, {args.steps} steps, inductor flags {flags or 'default'}", flush=True)
    print(f"{'format':<8} {'grad gap':>9} {'eager loss':>11} {'compiled':>9}  worst weight", flush=True)
    for fmt in args.formats.split(","):
        try:
            row = run(fmt, args, tokens, device)
            print(f"{fmt:<8} {row['grad_gap']:>9.2e} {row['eager']:>11.4f} {row['compiled']:>9.4f}  {row['worst']}", flush=True)
        except Exception as exc:  # a failing format must not hide the others
            print(f"{fmt:<8} FAILED: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}", flush=True)


if __name__ == "__main__":
    main()
