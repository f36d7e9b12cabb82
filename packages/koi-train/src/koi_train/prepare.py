"""Turn `data.prepare` text into token shards (and a tokenizer) inside the run folder, once.

The result is cached by a fingerprint of the prepare settings and the input sizes, so a second
run or a resume does not tokenize again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from koi_tokenizer import (
    Tokenizer,
    atomic_write_bytes,
    expand_inputs,
    is_val_document,
    read_text,
    shard_documents,
    split_documents,
    train_bpe,
)

from .config import ConfigError, PrepareConfig

BUILTIN_PREFIX = "builtin:"


@dataclass(frozen=True)
class PreparedData:
    train: tuple[str, ...]
    val: tuple[str, ...]
    tokenizer: str


def builtin_documents(name: str) -> list[str]:
    """Real English text every Python install carries: the interactive help topics of CPython."""
    if name != "python-topics":
        raise ConfigError("", "data.prepare.text", f"expected builtin:python-topics, got builtin:{name}")
    from pydoc_data.topics import topics

    return [topics[key] for key in sorted(topics)]


def _documents(sources: tuple[str, ...]) -> Iterator[str]:
    for source in sources:
        if source.startswith(BUILTIN_PREFIX):
            yield from builtin_documents(source[len(BUILTIN_PREFIX) :])
        else:
            for path in expand_inputs([source]):
                yield from split_documents(read_text(path), "<|endoftext|>")


def _fingerprint(cfg: PrepareConfig) -> str:
    sizes = [s if s.startswith(BUILTIN_PREFIX) else [(p, Path(p).stat().st_size) for p in expand_inputs([s])] for s in cfg.text]
    return hashlib.sha256(json.dumps([asdict(cfg), sizes], sort_keys=True).encode()).hexdigest()[:16]


def prepare_data(cfg: PrepareConfig, data_dir: Path, *, log=print) -> PreparedData:
    manifest_path = data_dir / "manifest.json"
    fingerprint = _fingerprint(cfg)
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("fingerprint") == fingerprint and all(Path(p).exists() for p in manifest["train"] + manifest["val"]):
            log(f"data: reusing {len(manifest['train'])} train / {len(manifest['val'])} val shards in {data_dir}")
            return PreparedData(tuple(manifest["train"]), tuple(manifest["val"]), manifest["tokenizer"])
    documents = list(_documents(cfg.text))
    if cfg.tokenizer is None:
        train_docs = [d for i, d in enumerate(documents) if not is_val_document(i, cfg.val_fraction)]
        log(f"data: training a {cfg.vocab_size}-token byte-level BPE on {len(train_docs)} documents")
        tokenizer = train_bpe(train_docs, vocab_size=cfg.vocab_size)
        tokenizer_path = str(data_dir / "tokenizer.json")
        tokenizer.save(tokenizer_path)
    else:
        tokenizer_path = cfg.tokenizer
        tokenizer = Tokenizer.load(tokenizer_path)
    result = shard_documents(documents, tokenizer, data_dir, val_fraction=cfg.val_fraction, shard_tokens=50_000_000)
    log(f"data: {result.documents} documents -> {result.train_tokens:,} train / {result.val_tokens:,} val tokens")
    manifest = {"fingerprint": fingerprint, "tokenizer": tokenizer_path,
                "train": [str(p) for p in result.train], "val": [str(p) for p in result.val]}
    atomic_write_bytes(manifest_path, json.dumps(manifest, indent=1).encode())
    return PreparedData(tuple(manifest["train"]), tuple(manifest["val"]), tokenizer_path)
