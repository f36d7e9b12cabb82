"""llm.c-compatible token shards: a 256 x int32 header, then the tokens.

Header: magic, version, token count, then zeros. uint16 tokens use llm.c's magic 20240520; a
vocabulary above 65535 needs uint32 tokens and gets its own magic so no reader mistakes one for
the other. Readers check magic, version and the file size before trusting a byte.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .atomic import atomic_write_bytes
from .errors import ShardError

MAGIC_UINT16 = 20240520
MAGIC_UINT32 = 20240521
VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
DTYPE_BY_MAGIC = {MAGIC_UINT16: np.uint16, MAGIC_UINT32: np.uint32}


def token_dtype(vocab_size: int) -> type[np.unsignedinteger]:
    return np.uint16 if vocab_size <= 65536 else np.uint32


def encode_shard(tokens: np.ndarray) -> bytes:
    """The bytes of a shard holding ``tokens`` (uint16 or uint32)."""
    magic = {np.dtype(np.uint16): MAGIC_UINT16, np.dtype(np.uint32): MAGIC_UINT32}.get(tokens.dtype)
    if magic is None:
        raise TypeError(f"shard tokens must be uint16 or uint32, got {tokens.dtype}")
    header = np.zeros(HEADER_INTS, dtype=np.int32)
    header[:3] = (magic, VERSION, len(tokens))
    return header.tobytes() + np.ascontiguousarray(tokens).tobytes()


def write_shard(path: str | os.PathLike, tokens: np.ndarray) -> None:
    atomic_write_bytes(path, encode_shard(tokens))


def read_header(path: str | os.PathLike, header_bytes: bytes, file_size: int) -> tuple[type, int]:
    """Validate a shard header against the file size; return (token dtype, token count)."""
    if len(header_bytes) < HEADER_BYTES:
        raise ShardError(path, "header", f"expected {HEADER_BYTES} header bytes, file has {len(header_bytes)}")
    header = np.frombuffer(header_bytes[:HEADER_BYTES], dtype=np.int32)
    magic, version, count = int(header[0]), int(header[1]), int(header[2])
    if magic not in DTYPE_BY_MAGIC:
        raise ShardError(path, "header.magic", f"expected {MAGIC_UINT16} (uint16) or {MAGIC_UINT32} (uint32), got {magic}")
    if version != VERSION:
        raise ShardError(path, "header.version", f"expected {VERSION}, got {version}")
    dtype = DTYPE_BY_MAGIC[magic]
    expected = HEADER_BYTES + count * np.dtype(dtype).itemsize
    if count < 0 or file_size != expected:
        raise ShardError(
            path, "header.token_count", f"{count} tokens means {expected} bytes, but the file has {file_size}"
        )
    return dtype, count


def local_copy(url: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Download a shard named by an fsspec URL once into a local cache (atomically) and return its path."""
    import hashlib

    from .sources import _fsspec

    cache = Path(cache_dir or os.environ.get("KOI_CACHE", Path.home() / ".cache" / "koi")) / "shards"
    target = cache / f"{hashlib.sha256(url.encode()).hexdigest()[:16]}-{url.rstrip('/').rsplit('/', 1)[-1]}"
    if not target.exists():
        try:
            with _fsspec().open(url, "rb") as f:
                atomic_write_bytes(target, f.read())
        except FileNotFoundError:
            raise ShardError(url, "file", "not found") from None
    return target


def read_shard(path: str | os.PathLike, *, mmap: bool = True) -> np.ndarray:
    """Return the shard's tokens, memory-mapped by default so large shards cost no RAM.

    An fsspec URL (s3://, gs://, https://, ...) is fetched once into ~/.cache/koi/shards (or $KOI_CACHE).
    """
    if "://" in str(path):
        local = local_copy(str(path))
        try:
            return read_shard(local, mmap=mmap)
        except ShardError as exc:
            raise ShardError(path, exc.field, str(exc).split(": ", 2)[-1]) from None
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(HEADER_BYTES)
    except FileNotFoundError:
        raise ShardError(path, "file", "not found") from None
    dtype, count = read_header(path, head, size)
    if mmap:
        if count == 0:
            return np.zeros(0, dtype=dtype)
        return np.memmap(path, dtype=dtype, mode="r", offset=HEADER_BYTES, shape=(count,))
    with open(path, "rb") as f:
        f.seek(HEADER_BYTES)
        return np.frombuffer(f.read(), dtype=dtype)
