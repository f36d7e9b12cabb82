"""Training throughput and peak memory: Koi against the plain PyTorch GPT-2, same card, same run.

Both sides train the same sizes on the same real tokens for the same steps; the table reports
tokens/s, MFU, peak GiB and Koi's ratio to the reference measured in this run.

    python bench/train_throughput.py                              # GPU: TARGETS.md's 124M rows
    python bench/train_throughput.py --case 1558M-remat --steps 10 --side reference --side koi-lowmem
    python bench/train_throughput.py --side reference --side koi --side koi-fp8 --side koi-lowmem
    python bench/train_throughput.py --device cpu --case tiny     # a quick check that it runs
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from reference_gpt2 import ReferenceGPT2  # noqa: E402

# name: (layers, width, heads, batch, seq, remat)
CASES = {
    "124M": (12, 768, 12, 32, 1024, False),
    "124M-remat": (12, 768, 12, 32, 1024, True),
    "774M": (36, 1280, 20, 16, 1024, False),
    "1558M-remat": (48, 1600, 25, 8, 1024, True),
    "tiny": (2, 128, 4, 4, 128, False),
}
PEAK_BF16 = {"H100": 989e12, "H200": 989e12}


def real_tokens(count: int) -> torch.Tensor:
    """GPT-2 tokens of the Python docs from ../shared/data (cycled if the run needs more)."""
    from koi_tokenizer import Tokenizer

    data = REPO.parent / "shared" / "data"
    tok = Tokenizer.from_gpt2_files(data / "gpt2" / "vocab.json", data / "gpt2" / "merges.txt")
    text = (data / "corpus" / "pydocs-train.txt").read_text(encoding="utf-8")[: max(4 * count, 1_000_000)]
    ids = torch.tensor(tok.encode(text, disallowed_special=()), dtype=torch.long)
    return ids.repeat(count // len(ids) + 1)[:count]


def reference_step_fn(layers, width, heads, seq, remat, device, compile_model):
    model = ReferenceGPT2(layers, width, heads, block=seq, remat=remat).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=device.type == "cuda")
    run = torch.compile(model) if compile_model else model

    def step(x, y):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = run(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return step, sum(p.numel() for p in model.parameters())


def koi_step_fn(layers, width, heads, seq, remat, device, compile_model, *, fp8=False, low_memory=False):
    """Koi's model and objective; fp8: block Linears on fp8 matmuls; low_memory: 8-bit states stepped in backward."""
    from koi_train.config import ModelConfig, OptimizerConfig
    from koi_train.models import build_model
    from koi_train.objective import NextTokenLoss
    from koi_train.optim import build_optimizer
    from koi_train.remat import apply_remat

    model = build_model(ModelConfig(preset=None, n_layer=layers, n_embd=width, n_head=heads, block_size=seq, vocab_size=50304))
    if fp8:
        from koi_quant import quantize_
        from koi_train.quantize import swap_in_fp8_matmuls

        quantize_(model, {"transformer.h.*": "fp8"})
        swap_in_fp8_matmuls(model)
    apply_remat(model, "full" if remat else "none")
    model.to(device)
    objective = NextTokenLoss(model)
    run = torch.compile(objective) if compile_model else objective
    opt = build_optimizer(model, OptimizerConfig(name="adamw8bit" if low_memory else "adamw"), 6e-4, device, in_backward=low_memory)

    def step(x, y):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = run(x, y)
        loss.backward()
        if not low_memory:  # in-backward updates cannot clip globally
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        return loss

    return step, sum(p.numel() for p in model.parameters())


SIDES = {
    "reference": reference_step_fn,
    "koi": koi_step_fn,
    "koi-fp8": lambda *a: koi_step_fn(*a, fp8=True),
    "koi-lowmem": lambda *a: koi_step_fn(*a, low_memory=True),
}


def measure(make, case, device, steps, warmup, compile_model, tokens):
    layers, width, heads, batch, seq, remat = CASES[case]
    torch.manual_seed(0)
    step, params = make(layers, width, heads, seq, remat, device, compile_model)
    per_step = batch * seq
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    losses = []
    for i in range(warmup + steps):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        chunk = torch.stack([tokens[(i * per_step + b * seq) % (len(tokens) - seq - 1):][: seq + 1] for b in range(batch)])
        losses.append(step(chunk[:, :-1].to(device), chunk[:, 1:].to(device)))
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    tokens_per_s = steps * per_step / seconds
    flops = 6 * params + 12 * layers * width * seq
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
    return {"tokens_per_s": tokens_per_s, "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
            "mfu": tokens_per_s * flops / peak if peak else None, "final_loss": losses[-1].item(), "params": params}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", action="append", choices=list(CASES), help="default: 124M and 124M-remat")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--side", action="append", choices=list(SIDES), help="default: reference and koi")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    cases = args.case or ["124M", "124M-remat"]
    biggest = max(CASES[c][3] * CASES[c][4] for c in cases)
    tokens = real_tokens((args.steps + args.warmup + 1) * biggest + 1)
    rows = []
    for case in cases:
        for side in args.side or ["reference", "koi"]:
            make = SIDES[side]
            result = measure(make, case, device, args.steps, args.warmup, not args.no_compile, tokens)
            rows.append({"case": case, "side": side, **result})
            torch.cuda.empty_cache() if device.type == "cuda" else None
    print(f"device {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}, torch {torch.__version__}")
    print(f"{'case':<13}{'side':<11}{'tok/s':>11}{'MFU':>7}{'peak GiB':>10}{'loss':>8}{'vs ref':>8}")
    for row in rows:
        ref = next(r for r in rows if r["case"] == row["case"] and r["side"] == "reference")
        mfu = f"{row['mfu']:.2f}" if row["mfu"] else "-"
        peak = f"{row['peak_gib']:.1f}" if row["peak_gib"] is not None else "-"
        print(f"{row['case']:<13}{row['side']:<11}{row['tokens_per_s']:>11,.0f}{mfu:>7}{peak:>10}{row['final_loss']:>8.3f}"
              f"{row['tokens_per_s'] / ref['tokens_per_s']:>7.2f}x")
    out = REPO / "bench" / "results" / "train_throughput.json"
    out.write_text(json.dumps({"device": str(device), "torch": torch.__version__, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
