"""`koi-tokenizer`: train, encode, decode, info and shard from the command line.

Bad input (a missing or corrupt tokenizer file, a glob that matches nothing) prints one line on
stderr and exits 2, so scripts can tell a user error from a crash.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from .errors import DisallowedSpecialTokenError, ShardError, TokenizerFileError
from .sharding import shard_files
from .shards import read_shard
from .sources import expand_inputs, read_text, split_documents
from .tokenizer import EOT_TOKEN, Tokenizer
from .training import train_bpe

USER_ERRORS = (TokenizerFileError, ShardError, DisallowedSpecialTokenError, ValueError, OSError)


def _cmd_train(args: argparse.Namespace) -> None:
    files = expand_inputs(args.inputs)
    texts = (doc for f in files for doc in split_documents(read_text(f), args.separator))
    tokenizer = train_bpe(texts, vocab_size=args.vocab_size, special_tokens=args.special or [EOT_TOKEN])
    tokenizer.save(args.output)
    print(f"wrote {args.output}: {tokenizer.vocab_size} tokens, {len(tokenizer.bpe_data.merges)} merges")


def _cmd_encode(args: argparse.Namespace) -> None:
    tokenizer = Tokenizer.load(args.tokenizer)
    text = read_text(args.input) if args.input else sys.stdin.read()
    allowed = "all" if args.allow_special else ()
    print(json.dumps(tokenizer.encode(text, allowed_special=allowed)))


def _cmd_decode(args: argparse.Namespace) -> None:
    tokenizer = Tokenizer.load(args.tokenizer)
    raw = args.ids if args.ids else sys.stdin.read()
    try:
        ids = json.loads(raw) if raw.strip().startswith("[") else [int(x) for x in raw.split()]
    except ValueError:
        raise ValueError(f"ids: expected a JSON list or whitespace-separated integers, got {raw[:40]!r}") from None
    sys.stdout.write(tokenizer.decode(ids))


def _cmd_info(args: argparse.Namespace) -> None:
    if args.path.endswith(".bin"):
        tokens = read_shard(args.path)
        print(json.dumps({"shard": args.path, "tokens": int(len(tokens)), "dtype": str(tokens.dtype)}))
        return
    tokenizer = Tokenizer.load(args.path)
    print(json.dumps({
        "tokenizer": args.path,
        "vocab_size": tokenizer.vocab_size,
        "merges": len(tokenizer.bpe_data.merges),
        "special_tokens": tokenizer.special_tokens,
    }))


def _cmd_shard(args: argparse.Namespace) -> None:
    tokenizer = Tokenizer.load(args.tokenizer)
    result = shard_files(
        args.inputs, tokenizer, args.output, prefix=args.prefix, shard_tokens=args.shard_tokens,
        val_fraction=args.val_fraction, separator=args.separator or None, show_progress=not args.quiet, workers=args.workers,
    )
    print(json.dumps({
        "documents": result.documents, "train_tokens": result.train_tokens, "val_tokens": result.val_tokens,
        "train_shards": [str(p) for p in result.train], "val_shards": [str(p) for p in result.val],
    }))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="koi-tokenizer", description="Byte-level BPE tokenizer and shard writer.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="learn a BPE vocabulary from text files")
    p.add_argument("inputs", nargs="+", help="text files, globs or fsspec URLs")
    p.add_argument("--vocab-size", type=int, required=True)
    p.add_argument("--output", "-o", required=True, help="Koi tokenizer file to write (.json)")
    p.add_argument("--special", action="append", help=f"special token (repeatable; default {EOT_TOKEN})")
    p.add_argument("--separator", default=EOT_TOKEN, help="document separator inside files")
    p.set_defaults(run=_cmd_train)

    p = sub.add_parser("encode", help="print token ids of a file (or stdin) as JSON")
    p.add_argument("--tokenizer", "-t", required=True, help="tokenizer file or GPT-2 folder")
    p.add_argument("input", nargs="?", help="text file (default: stdin)")
    p.add_argument("--allow-special", action="store_true", help="encode special-token text as special tokens")
    p.set_defaults(run=_cmd_encode)

    p = sub.add_parser("decode", help="turn token ids back into text")
    p.add_argument("--tokenizer", "-t", required=True)
    p.add_argument("ids", nargs="?", help="JSON list or whitespace-separated ids (default: stdin)")
    p.set_defaults(run=_cmd_decode)

    p = sub.add_parser("info", help="describe a tokenizer file or a .bin shard")
    p.add_argument("path")
    p.set_defaults(run=_cmd_info)

    p = sub.add_parser("shard", help="tokenize text files into llm.c .bin shards")
    p.add_argument("inputs", nargs="+", help="text files, globs or fsspec URLs")
    p.add_argument("--tokenizer", "-t", required=True)
    p.add_argument("--output", "-o", required=True, help="output folder")
    p.add_argument("--prefix", default="data")
    p.add_argument("--shard-tokens", type=int, default=10_000_000)
    p.add_argument("--val-fraction", type=float, default=0.0, help="fraction of documents for the val split")
    p.add_argument("--separator", default=EOT_TOKEN, help="document separator ('' = one document per file)")
    p.add_argument("--workers", type=int, help="processes to encode with (default: all cores)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(run=_cmd_shard)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except USER_ERRORS as exc:
        print(f"koi-tokenizer {args.command}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
