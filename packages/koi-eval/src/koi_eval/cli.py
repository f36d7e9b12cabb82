"""`koi-eval`: perplexity, HellaSwag and generation from the command line.

Every command prints a readable table (or text) and, with --json, writes the JSON report.
Bad input prints one line on stderr and exits 2. `-m` is a Hugging Face folder; `main` takes
another loader, which is how `koi-train eval` runs the same commands on Koi checkpoints.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from koi_tokenizer import ShardError, Tokenizer, TokenizerFileError, read_shard

from .generate import generate
from .hellaswag import EvalFileError, evaluate_hellaswag, read_eval_bin, read_jsonl
from .models import ModelLoader, load_hf_model
from .perplexity import perplexity

USER_ERRORS = (ShardError, TokenizerFileError, EvalFileError, FileNotFoundError, ValueError)


def _device(name: str) -> str:
    return ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name


def _report(report: dict, json_path: str | None) -> None:
    width = max(len(k) for k in report)
    for key, value in report.items():
        print(f"{key:<{width}}  {value:.4f}" if isinstance(value, float) else f"{key:<{width}}  {value}")
    if json_path:
        Path(json_path).write_text(json.dumps(report, indent=2))


def cmd_perplexity(args) -> None:
    device = _device(args.device)
    model, block_size = args.load_model(args.model, device)
    if args.input.endswith(".bin"):
        tokens = read_shard(args.input)
    else:
        tokens = Tokenizer.load(args.tokenizer).encode(Path(args.input).read_text(encoding="utf-8"), disallowed_special=())
    block = args.block_size or block_size
    with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
        result = perplexity(model, tokens, block_size=block, stride=args.stride, device=device)
    _report({"input": args.input, "tokens": result.tokens, "nll": result.nll, "perplexity": result.perplexity}, args.json)


def cmd_hellaswag(args) -> None:
    device = _device(args.device)
    model, block_size = args.load_model(args.model, device)
    if args.data.endswith(".bin"):
        examples = read_eval_bin(args.data)
    else:
        tokenizer = Tokenizer.load(args.tokenizer)
        examples = read_jsonl(args.data, lambda s: tokenizer.encode(s, disallowed_special=()))
    with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
        result = evaluate_hellaswag(model, examples, block_size=block_size, device=device, limit=args.limit)
    _report({"data": args.data, **result.as_record()}, args.json)


def cmd_generate(args) -> None:
    device = _device(args.device)
    model, block_size = args.load_model(args.model, device)
    tokenizer = Tokenizer.load(args.tokenizer)
    gen = torch.Generator().manual_seed(args.seed)
    ids = generate(model, tokenizer.encode(args.prompt) or [tokenizer.eot_id], max_new_tokens=args.max_tokens,
                   block_size=block_size, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                   eot_id=tokenizer.eot_id, vocab_limit=tokenizer.vocab_size, generator=gen, device=device)
    print(args.prompt + tokenizer.decode(ids))


def build_parser(prog: str = "koi-eval") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Evaluate language models: perplexity, HellaSwag, generation.")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p):
        p.add_argument("--model", "-m", required=True, help="Hugging Face folder (config.json + model.safetensors)"
                       if prog == "koi-eval" else "Koi run folder, step_*.pt checkpoint, or Hugging Face folder")
        p.add_argument("--device", default="auto")
        p.add_argument("--json", help="also write the report as JSON here")

    p = sub.add_parser("perplexity", help="perplexity of a text file or .bin shard")
    common(p)
    p.add_argument("input")
    p.add_argument("--tokenizer", "-t", help="needed for text input")
    p.add_argument("--block-size", type=int)
    p.add_argument("--stride", type=int, help="window step (default: block size)")
    p.set_defaults(run=cmd_perplexity)

    p = sub.add_parser("hellaswag", help="HellaSwag accuracy from JSONL or llm.c .bin")
    common(p)
    p.add_argument("data")
    p.add_argument("--tokenizer", "-t", help="needed for JSONL input")
    p.add_argument("--limit", type=int)
    p.set_defaults(run=cmd_hellaswag)

    p = sub.add_parser("generate", help="sample text")
    common(p)
    p.add_argument("--tokenizer", "-t", required=True)
    p.add_argument("--prompt", default="\n")
    p.add_argument("--max-tokens", type=int, default=100)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=cmd_generate)
    return parser


def main(argv: Sequence[str] | None = None, *, load_model: ModelLoader = load_hf_model, prog: str = "koi-eval",
         user_errors: tuple[type[Exception], ...] = ()) -> int:
    """Run one command; ``load_model`` and ``user_errors`` let a caller (koi-train) bring its own model format."""
    args = build_parser(prog).parse_args(argv)
    args.load_model = load_model
    try:
        if getattr(args, "tokenizer", None) is None and args.command in ("perplexity", "hellaswag"):
            source = getattr(args, "input", None) or getattr(args, "data", "")
            if not source.endswith(".bin"):
                raise ValueError(f"{source}: --tokenizer is required for text input")
        args.run(args)
    except (*USER_ERRORS, *user_errors) as exc:
        print(f"{prog} {args.command}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
