"""Encode many documents on several cores: forked worker processes that live as long as the job.

Documents travel in chunks (`chunks`) that the encoder handles as one joined text, so its fixed
per-call cost is paid once per chunk rather than once per document.

The encoder holds the GIL, so threads would not help. Forked workers inherit the tokenizer
without pickling it, keep their piece caches warm for the whole job (a pool per batch would
start every batch cold), and send back compact numpy arrays, in order. At most a few chunks
per worker are in flight, so a corpus larger than memory streams through.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Iterable, Iterator

import numpy as np

_worker_tokenizer = None
CHUNK_DOCUMENTS = 64
CHUNK_CHARS = 1 << 20
WARM_UP_CHARS = 1 << 21
CHUNKS_IN_FLIGHT_PER_WORKER = 3


def _encode_chunk(texts: list[str]) -> list[np.ndarray]:
    # The narrowest dtype that holds every id: a quarter of the bytes to send back for GPT-2.
    dtype = np.uint16 if _worker_tokenizer.vocab_size <= 1 << 16 else np.uint32
    return [ids.astype(dtype) for ids in _worker_tokenizer.encode_ordinary_many(texts)]


def chunks(texts: Iterable[str]) -> Iterator[list[str]]:
    """Groups of up to CHUNK_DOCUMENTS texts and CHUNK_CHARS characters (a longer text goes alone)."""
    chunk: list[str] = []
    chars = 0
    for text in texts:
        if chunk and (len(chunk) == CHUNK_DOCUMENTS or chars + len(text) > CHUNK_CHARS):
            yield chunk
            chunk, chars = [], 0
        chunk.append(text)
        chars += len(text)
    if chunk:
        yield chunk


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class EncodePool:
    """``with EncodePool(tokenizer, workers) as pool: for ids in pool.encode(texts): ...``"""

    def __init__(self, tokenizer, workers: int) -> None:
        self.tokenizer = tokenizer
        self.workers = workers if "fork" in multiprocessing.get_all_start_methods() else 1
        self._pool = None  # forked on first need, after the warm-up

    def __enter__(self) -> EncodePool:
        return self

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool = None

    def _start_workers(self) -> None:
        global _worker_tokenizer
        _worker_tokenizer = self.tokenizer
        try:
            self._pool = multiprocessing.get_context("fork").Pool(self.workers)
        finally:
            _worker_tokenizer = None

    def encode(self, texts: Iterable[str]) -> Iterator[np.ndarray]:
        """Ids of each text as an integer array (int64 here, narrower from workers), in the order of ``texts``."""
        warmed = 0
        in_flight: deque = deque()
        for chunk in chunks(texts):
            if self.workers == 1 or warmed < WARM_UP_CHARS:
                # The start is encoded here: the workers then fork with its (most common) pieces
                # cached, instead of each computing them again.
                yield from self.tokenizer.encode_ordinary_many(chunk)
                warmed += sum(map(len, chunk))
                continue
            if self._pool is None:
                self._start_workers()
            in_flight.append(self._pool.apply_async(_encode_chunk, (chunk,)))
            if len(in_flight) >= CHUNKS_IN_FLIGHT_PER_WORKER * self.workers:
                yield from in_flight.popleft().get()
        while in_flight:
            yield from in_flight.popleft().get()


def encode_ordinary_parallel(tokenizer, texts: Iterable[str], workers: int) -> list[np.ndarray]:
    """``[tokenizer.encode_ordinary_array(t) for t in texts]`` spread over ``workers`` processes."""
    texts = list(texts)
    with EncodePool(tokenizer, workers if len(texts) > 1 else 1) as pool:
        return list(pool.encode(texts))
