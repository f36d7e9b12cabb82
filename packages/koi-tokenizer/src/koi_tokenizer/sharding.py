"""Tokenize text files into fixed-size train/val shards, using every core.

Documents go to val or train by their index (every k-th for a 1/k fraction), so the split is
the same on every machine and for every thread count. Each document is preceded by EOT, as in
llm.c, and shards are filled to exactly ``shard_tokens`` except the last one of each split.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .parallel import EncodePool, default_workers
from .progress import Progress
from .shards import token_dtype, write_shard
from .sources import expand_inputs, file_size, read_text, split_documents
from .tokenizer import Tokenizer


@dataclass
class _SplitWriter:
    out_dir: Path
    prefix: str
    split: str
    shard_tokens: int
    dtype: type
    buffer: list[np.ndarray] = field(default_factory=list)
    buffered: int = 0
    written: list[Path] = field(default_factory=list)
    tokens: int = 0

    def add(self, tokens: np.ndarray) -> None:
        self.buffer.append(tokens)
        self.buffered += len(tokens)
        self.tokens += len(tokens)
        while self.buffered >= self.shard_tokens:
            joined = np.concatenate(self.buffer)
            self._write(joined[: self.shard_tokens])
            rest = joined[self.shard_tokens :]
            self.buffer, self.buffered = [rest], len(rest)

    def close(self) -> None:
        if self.buffered:
            self._write(np.concatenate(self.buffer))
        self.buffer, self.buffered = [], 0

    def _write(self, tokens: np.ndarray) -> None:
        path = self.out_dir / f"{self.prefix}_{self.split}_{len(self.written):06d}.bin"
        write_shard(path, tokens.astype(self.dtype, copy=False))
        self.written.append(path)


@dataclass
class ShardResult:
    train: list[Path]
    val: list[Path]
    train_tokens: int
    val_tokens: int
    documents: int


def is_val_document(index: int, val_fraction: float) -> bool:
    return int((index + 1) * val_fraction) > int(index * val_fraction)


def shard_files(
    inputs: Sequence[str],
    tokenizer: Tokenizer,
    out_dir: str | Path,
    *,
    separator: str | None = "<|endoftext|>",
    show_progress: bool = True,
    **options,
) -> ShardResult:
    """Tokenize text files, globs or URLs into shards; see `shard_documents` for the options."""
    files = expand_inputs(inputs)
    total = sum(file_size(f) for f in files)
    progress = Progress(total, label="shard") if show_progress else None
    with ThreadPoolExecutor(1) as reader:
        return shard_documents(_documents(files, separator, reader), tokenizer, out_dir, progress=progress,
                               total_chars=total or None, **options)  # 0: a size the source did not tell


def _documents(files: Sequence[str], separator: str | None, reader: ThreadPoolExecutor) -> Iterator[str]:
    """The files' documents in order; the next file is read (I/O, off the GIL) while this one is encoded."""
    upcoming = reader.submit(read_text, files[0]) if files else None
    for index in range(len(files)):
        text = upcoming.result()
        upcoming = reader.submit(read_text, files[index + 1]) if index + 1 < len(files) else None
        yield from split_documents(text, separator)


def shard_documents(
    documents: Iterable[str],
    tokenizer: Tokenizer,
    out_dir: str | Path,
    *,
    prefix: str = "data",
    shard_tokens: int = 10_000_000,
    val_fraction: float = 0.0,
    workers: int | None = None,
    progress: Progress | None = None,
    total_chars: int | None = None,
) -> ShardResult:
    """Write documents as EOT-prefixed token runs into ``{prefix}_{train,val}_NNNNNN.bin``, on ``workers`` cores.

    ``total_chars`` (about the input's size; bytes will do) lets a small input fork its workers sooner.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction: expected a number in [0, 1), got {val_fraction}")
    if shard_tokens <= 0:
        raise ValueError(f"shard_tokens: expected a positive integer, got {shard_tokens}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    workers = workers or default_workers()
    dtype = token_dtype(tokenizer.vocab_size)
    writers = {s: _SplitWriter(out_dir, prefix, s, shard_tokens, dtype) for s in ("train", "val")}
    eot = np.array([tokenizer.eot_id], dtype=dtype)
    splits: deque[tuple[str, int]] = deque()  # split and length of each document sent to encode
    count = 0

    def texts() -> Iterator[str]:
        nonlocal count
        for doc in documents:
            splits.append(("val" if val_fraction and is_val_document(count, val_fraction) else "train", len(doc)))
            count += 1
            yield doc

    with EncodePool(tokenizer, workers, total_chars=total_chars) as pool:
        for doc_ids in pool.encode(texts()):
            split, chars = splits.popleft()
            writers[split].add(np.concatenate([eot, doc_ids.astype(dtype)]))
            if progress:  # characters stand in for bytes: close enough for a rate and an ETA
                progress.advance(chars, extra=f"{writers['train'].tokens + writers['val'].tokens:,} tokens")
    for writer in writers.values():
        writer.close()
    if progress:
        progress.close()
    return ShardResult(
        writers["train"].written, writers["val"].written, writers["train"].tokens, writers["val"].tokens, count
    )
