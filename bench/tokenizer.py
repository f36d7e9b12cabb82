"""Tokenizer throughput on real text: Koi vs tiktoken vs HF tokenizers, same text, same run.

Each measurement runs in its own process so the thread count is really fixed (the Rust engines
size their thread pools at start-up), and every process starts with a fresh tokenizer, so the
first pass is cold. Prints a table and writes bench/results/tokenizer[-LABEL].json.

    python bench/tokenizer.py [--data ../shared/data] [--files pydocs-val.txt ...] [--repeats 2] [--rounds 3]

Held-out text (not in ../shared/data, so no cache was tuned on it): build the sets once from
Debian documentation packages, then time them split into paragraphs (short documents, ~200
bytes: one `encode` call each) or whole (one call per file):

    apt-get download git-doc nodejs-doc && for f in *.deb; do dpkg -x $f ex; done
    python bench/tokenizer.py --make-held-out ex held-out/
    python bench/tokenizer.py --files held-out/*.txt --split paragraphs --label paragraphs
    python bench/tokenizer.py --files held-out/*.txt --split whole --label whole --skip-hf
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# (engine, threads (0 = all cores), api): "each" calls encode per document, "batch" the batch API.
CASES = [("koi", 1, "each"), ("tiktoken", 1, "each"), ("hf-tokenizers", 1, "each"),
         ("koi", 1, "batch"), ("tiktoken", 1, "batch"),
         ("koi", 0, "batch"), ("tiktoken", 0, "batch"), ("hf-tokenizers", 0, "batch")]


SPLITS = ("documents", "paragraphs", "whole")


def _documents(files: list[Path], split: str = "documents") -> list[str]:
    """The texts one `encode` call each gets: corpus documents, paragraphs (short) or whole files."""
    docs = []
    for f in files:
        text = f.read_text(encoding="utf-8")
        if split == "whole":
            docs.append(text.replace("<|endoftext|>", ""))
        elif split == "paragraphs":
            docs += [d for d in text.replace("<|endoftext|>", "").split("\n\n") if d.strip()]
        else:
            docs += [d for d in text.split("<|endoftext|>") if d]
    return docs


def make_held_out(extracted: Path, out: Path) -> None:
    """Held-out sets from `dpkg -x` folders: git's AsciiDoc manual and Node.js's Markdown API docs."""
    import gzip

    out.mkdir(parents=True, exist_ok=True)
    sources = {"gitdocs.txt": "usr/share/doc/git-doc/*.txt", "nodedocs.txt": "usr/share/doc/nodejs/api/*.md*"}
    for name, pattern in sources.items():
        pages = []
        for path in sorted(extracted.glob(pattern)):
            opener = gzip.open if path.suffix == ".gz" else open
            with opener(path, "rt", encoding="utf-8") as f:
                pages.append(f.read())
        text = "\n<|endoftext|>\n".join(p for p in pages if len(p) > 200)
        (out / name).write_text(text, encoding="utf-8")
        print(f"{out / name}: {len(pages)} pages, {len(text.encode('utf-8')) / 1e6:.1f} MB")


def _encoder(engine: str, gpt2: Path, threads: int):
    """Return (encode_one, encode_many) for one engine; both produce GPT-2 ids of ordinary text."""
    if engine == "koi":
        from koi_tokenizer import Tokenizer

        tok = Tokenizer.from_gpt2_files(gpt2 / "vocab.json", gpt2 / "merges.txt")
        return (lambda d: tok.encode(d, disallowed_special=())), (lambda ds: tok.encode_batch(ds, disallowed_special=(), workers=threads))
    if engine == "tiktoken":
        import tiktoken
        from tiktoken.load import data_gym_to_mergeable_bpe_ranks

        ranks = data_gym_to_mergeable_bpe_ranks(str(gpt2 / "merges.txt"), str(gpt2 / "vocab.json"))
        enc = tiktoken.Encoding("gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={"<|endoftext|>": 50256})
        return enc.encode_ordinary, (lambda ds: enc.encode_ordinary_batch(ds, num_threads=threads))
    from tokenizers import Tokenizer as HF
    from tokenizers import decoders, models, pre_tokenizers

    hf = HF(models.BPE.from_file(str(gpt2 / "vocab.json"), str(gpt2 / "merges.txt")))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    return (lambda d: hf.encode(d).ids), (lambda ds: [e.ids for e in hf.encode_batch(ds)])


def measure(engine: str, threads: int, api: str, files: list[Path], gpt2: Path, repeats: int, split: str) -> dict:
    docs = _documents(files, split)
    nbytes = sum(len(d.encode("utf-8")) for d in docs)
    start = time.perf_counter()
    one, many = _encoder(engine, gpt2, threads)  # built from the two GPT-2 files, as a fresh process would
    build_seconds = time.perf_counter() - start
    times, tokens = [], 0
    for _ in range(repeats):
        start = time.perf_counter()
        if api == "each":
            tokens = sum(len(one(d)) for d in docs)
        else:
            tokens = sum(len(ids) for ids in many(docs))
        times.append(time.perf_counter() - start)
    # First pass: nothing cached (Koi caches pieces it has seen). Best pass: the steady state.
    return {"engine": engine, "threads": threads, "api": api, "calls": len(docs), "bytes": nbytes, "tokens": tokens,
            "first_seconds": times[0], "build_seconds": build_seconds,
            "best_seconds": min(times), "MB_per_s": nbytes / times[0] / 1e6, "MB_per_s_warm": nbytes / min(times) / 1e6,
            "tokens_per_s": tokens / times[0]}


def _summarise(results: list[dict]) -> dict:
    """One row from several runs of a case: the median first pass and the best pass."""
    first = sorted(r["first_seconds"] for r in results)[len(results) // 2]
    best = min(r["best_seconds"] for r in results)
    build = sorted(r["build_seconds"] for r in results)[len(results) // 2]
    row = dict(results[0], first_seconds=first, best_seconds=best, build_seconds=build, rounds=len(results))
    row.update(MB_per_s=row["bytes"] / first / 1e6, MB_per_s_warm=row["bytes"] / best / 1e6, tokens_per_s=row["tokens"] / first)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--files", nargs="*", default=["pydocs-train.txt", "linuxdocs-train.txt", "perldocs-train.txt"])
    parser.add_argument("--repeats", type=int, default=2, help="passes per process (the first is cold)")
    parser.add_argument("--rounds", type=int, default=3, help="processes per case, interleaved with the other cases")
    parser.add_argument("--split", choices=SPLITS, default="documents", help="what one encode call gets")
    parser.add_argument("--label", default="", help="suffix of the results file")
    parser.add_argument("--skip-hf", action="store_true", help="leave HF tokenizers out (slow on long texts)")
    parser.add_argument("--make-held-out", nargs=2, metavar=("EXTRACTED", "OUT"), help="build held-out sets and exit")
    parser.add_argument("--one", nargs=3, metavar=("ENGINE", "THREADS", "API"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.make_held_out:
        make_held_out(Path(args.make_held_out[0]), Path(args.make_held_out[1]))
        return
    data = Path(args.data)
    files = [Path(f) if Path(f).exists() else data / "corpus" / f for f in args.files]
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]), args.one[2], files, data / "gpt2", args.repeats, args.split)))
        return
    cores = os.cpu_count() or 1
    # The machine's speed drifts: every case runs once per round, rounds interleave, and each case
    # reports its median first pass and its best pass over the rounds.
    runs: dict[tuple, list[dict]] = {}
    for _ in range(args.rounds):
        for engine, threads, api in CASES:
            if args.skip_hf and engine == "hf-tokenizers":
                continue
            threads = threads or cores
            env = {**os.environ, "RAYON_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "true"}
            repeats = 1 if engine == "hf-tokenizers" else args.repeats  # no cache to warm
            out = subprocess.run([sys.executable, __file__, "--data", args.data, "--files", *args.files, "--repeats", str(repeats),
                                  "--split", args.split, "--one", engine, str(threads), api], env=env, capture_output=True, text=True,
                                 check=True)
            runs.setdefault((engine, threads, api), []).append(json.loads(out.stdout))
    rows = [_summarise(results) for results in runs.values()]
    # `shard` splits files into documents itself: measured once, with the documents split.
    shard_runs = [shard_scaling(files, data / "gpt2", workers) for _ in range(args.rounds) for workers in sorted({1, cores})
                  if args.split == "documents"]
    shard = [min((r for r in shard_runs if r["workers"] == w), key=lambda r: r["seconds"]) for w in sorted({1, cores}) if shard_runs]
    base = {(r["threads"], r["api"]): r["MB_per_s"] for r in rows if r["engine"] == "tiktoken"}
    calls = rows[0]["calls"]
    print(f"{sum(f.stat().st_size for f in files) / 1e6:.1f} MB of real text ({', '.join(f.name for f in files)}), split: {args.split} "
          f"({calls} calls, {rows[0]['bytes'] / calls:,.0f} bytes each), {cores} cores")
    warm = {(r["threads"], r["api"]): r["MB_per_s_warm"] for r in rows if r["engine"] == "tiktoken"}
    print(f"{'engine':<15}{'threads':>8}{'api':>6}{'build s':>9}{'MB/s 1st':>10}{'Mtok/s':>9}{'vs tiktoken':>13}{'MB/s best':>11}"
          f"{'vs tiktoken':>13}")
    for r in rows:
        first, best = r["MB_per_s"] / base[r["threads"], r["api"]], r["MB_per_s_warm"] / warm[r["threads"], r["api"]]
        print(f"{r['engine']:<15}{r['threads']:>8}{r['api']:>6}{r['build_seconds']:>9.2f}{r['MB_per_s']:>10.2f}"
              f"{r['tokens_per_s'] / 1e6:>9.2f}{first:>12.2f}x{r['MB_per_s_warm']:>11.2f}{best:>12.2f}x")
    if shard:
        print(f"\n{'koi-tokenizer shard':<20}{'workers':>8}{'MB/s':>9}{'speed-up':>10}")
    for r in shard:
        print(f"{'':<20}{r['workers']:>8}{r['MB_per_s']:>9.2f}{r['MB_per_s'] / shard[0]['MB_per_s']:>9.2f}x")
    out_path = REPO / "bench" / "results" / f"tokenizer{'-' + args.label if args.label else ''}.json"
    out_path.write_text(json.dumps({"files": args.files, "split": args.split, "cores": cores, "encode": rows, "shard": shard}, indent=1))


def shard_scaling(files: list[Path], gpt2: Path, workers: int) -> dict:
    """Wall time of `shard_files` (read, encode, write) with a fresh tokenizer, at ``workers`` processes."""
    import tempfile

    from koi_tokenizer import Tokenizer, shard_files

    tokenizer = Tokenizer.from_gpt2_files(gpt2 / "vocab.json", gpt2 / "merges.txt")
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        shard_files([str(f) for f in files], tokenizer, out, workers=workers, show_progress=False)
        seconds = time.perf_counter() - start
    nbytes = sum(f.stat().st_size for f in files)
    return {"workers": workers, "seconds": seconds, "MB_per_s": nbytes / seconds / 1e6}


if __name__ == "__main__":
    main()
