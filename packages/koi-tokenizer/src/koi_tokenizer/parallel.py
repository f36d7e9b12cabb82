"""Encode many documents on several cores: forked worker processes, each with its own piece cache.

Python's regex engine holds the GIL, so threads would not help; forked workers inherit the
tokenizer without pickling it and send back compact numpy arrays, in order.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Sequence

import numpy as np

_worker_tokenizer = None


def _encode_chunk(texts: list[str]) -> list[np.ndarray]:
    return [_worker_tokenizer.encode_ordinary_array(t) for t in texts]


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def encode_ordinary_parallel(tokenizer, texts: Sequence[str], workers: int, chunk_size: int = 64) -> list[np.ndarray]:
    """``[tokenizer.encode_ordinary_array(t) for t in texts]`` spread over ``workers`` processes."""
    global _worker_tokenizer
    if workers <= 1 or len(texts) < 2 or "fork" not in multiprocessing.get_all_start_methods():
        return [tokenizer.encode_ordinary_array(t) for t in texts]
    _worker_tokenizer = tokenizer
    chunks = [list(texts[i : i + chunk_size]) for i in range(0, len(texts), chunk_size)]
    try:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            return [ids for chunk in pool.imap(_encode_chunk, chunks) for ids in chunk]
    finally:
        _worker_tokenizer = None
