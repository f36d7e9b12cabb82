"""Real GPT-2 tokens for benchmarks: the Python documentation from the shared data folder.

The folder is $KOI_SHARED_DATA, else ../shared/data beside the repository, else the repo's
git-ignored .carry/shared/data (what travels to a lent GPU machine).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def shared_data() -> Path:
    candidates = [os.environ.get("KOI_SHARED_DATA"), REPO.parent / "shared" / "data", REPO / ".carry" / "shared" / "data"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "gpt2" / "vocab.json").exists():
            return Path(candidate)
    raise FileNotFoundError(f"no shared data folder with gpt2/vocab.json among {[str(c) for c in candidates if c]}")


def real_tokens(count: int, corpus: str = "pydocs-train.txt") -> torch.Tensor:
    """``count`` GPT-2 tokens of a corpus file (cycled if the run needs more)."""
    from koi_tokenizer import Tokenizer

    data = shared_data()
    tok = Tokenizer.from_gpt2_files(data / "gpt2" / "vocab.json", data / "gpt2" / "merges.txt")
    text = (data / "corpus" / corpus).read_text(encoding="utf-8")[: max(6 * count, 1_000_000)]
    ids = torch.tensor(tok.encode(text, disallowed_special=()), dtype=torch.long)
    return ids.repeat(count // len(ids) + 1)[:count]


def make_shards(folder: Path, files: tuple[str, ...] = ("pydocs-train.txt",), val_fraction: float = 0.02) -> Path:
    """GPT-2 .bin shards of corpus files in ``folder`` (train and val splits), through koi-tokenizer's CLI."""
    corpus = shared_data() / "corpus"
    cli = "import sys; from koi_tokenizer.cli import main; sys.exit(main())"
    subprocess.run([sys.executable, "-c", cli, "shard", "-t", str(shared_data() / "gpt2"), "-o", str(folder),
                    "--separator", "<|endoftext|>", "--val-fraction", str(val_fraction), "--quiet",
                    *[str(corpus / f) for f in files]], check=True, stdout=subprocess.DEVNULL)
    return folder
