"""Encode many documents on several cores: forked worker processes that live as long as the job.

Documents travel in chunks (`chunks`) that the encoder handles as one joined text, so its fixed
per-call cost is paid once per chunk rather than once per document.

The encoder holds the GIL, so threads would not help. Forked workers inherit the tokenizer
without pickling it, keep their piece caches warm for the whole job (a pool per batch would
start every batch cold), and send back compact numpy arrays, in order. At most a few chunks
per worker are in flight, so a corpus larger than memory streams through. The calling process
is one of the ``workers``: it encodes its share of the chunks while the forked ones do theirs,
rather than waiting on them.

A text longer than a chunk is cut into chunk-sized segments first, so two long texts (or one)
still spread over every worker. The cuts are at a space followed by a non-space character:
GPT-2's pattern always starts a piece there and has no look-behind, and the text before such
a space ends the same way alone as in context (the only look-ahead, ``\\s+(?!\\S)``, gives up
the space either way), so the segments' ids joined are the text's ids.
"""

from __future__ import annotations

import multiprocessing
import os
import re
from collections import deque
from collections.abc import Iterable, Iterator

import numpy as np

from .pretokenize import WHITE_SPACE

_worker_tokenizer = None
CHUNK_DOCUMENTS = 64
CHUNK_CHARS = 1 << 20
WARM_UP_CHARS = 1 << 21
CHUNKS_IN_FLIGHT_PER_WORKER = 3
_SAFE_CUT = re.compile("[ ](?=[^" + re.escape("".join(sorted(WHITE_SPACE))) + "])")


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


def cut_at_piece_boundaries(text: str, size: int) -> list[str]:
    """``text`` in segments of about ``size`` characters whose ids, joined, are the text's (module docstring)."""
    segments, start = [], 0
    while len(text) - start > size:
        cut = _SAFE_CUT.search(text, start + size)
        if cut is None:
            break
        segments.append(text[start : cut.start()])
        start = cut.start()
    segments.append(text[start:])
    return segments


class _Encoded:
    """A chunk the calling process encoded itself, in the queue beside the workers' pending results."""

    def __init__(self, ids: list[np.ndarray]) -> None:
        self.ids = ids

    def ready(self) -> bool:
        return True

    def get(self) -> list[np.ndarray]:
        return self.ids


class EncodePool:
    """``with EncodePool(tokenizer, workers) as pool: for ids in pool.encode(texts): ...``

    ``total_chars``, when known, shortens the warm-up the calling process does alone before it
    forks, so a small job still spreads: at most a ``2 * workers``-th of the total.
    """

    def __init__(self, tokenizer, workers: int, total_chars: int | None = None) -> None:
        self.tokenizer = tokenizer
        self.workers = workers if "fork" in multiprocessing.get_all_start_methods() else 1
        self.warm_up_chars = WARM_UP_CHARS if total_chars is None else min(WARM_UP_CHARS, total_chars // (2 * self.workers))
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
            self._pool = multiprocessing.get_context("fork").Pool(self.workers - 1)  # this process is the last one
        finally:
            _worker_tokenizer = None

    def encode(self, texts: Iterable[str]) -> Iterator[np.ndarray]:
        """Ids of each text as an integer array (int64 here, narrower from workers), in the order of ``texts``."""
        warmed = 0
        in_flight: deque = deque()
        for turn, chunk in enumerate(chunks(texts)):
            if self.workers == 1 or warmed < self.warm_up_chars:
                # The start is encoded here: the workers then fork with its (most common) pieces
                # cached, instead of each computing them again.
                yield from self.tokenizer.encode_ordinary_many(chunk)
                warmed += sum(map(len, chunk))
                continue
            if self._pool is None:
                self._start_workers()
            if turn % self.workers == 0:  # this process's share, while the forked ones work on theirs
                in_flight.append(_Encoded(self.tokenizer.encode_ordinary_many(chunk)))
            else:
                in_flight.append(self._pool.apply_async(_encode_chunk, (chunk,)))
            while in_flight and (len(in_flight) >= CHUNKS_IN_FLIGHT_PER_WORKER * self.workers or in_flight[0].ready()):
                yield from in_flight.popleft().get()
        while in_flight:
            yield from in_flight.popleft().get()


def encode_ordinary_parallel(tokenizer, texts: Iterable[str], workers: int) -> list[np.ndarray]:
    """``[tokenizer.encode_ordinary_array(t) for t in texts]`` spread over ``workers`` processes."""
    texts = list(texts)
    total = sum(map(len, texts))
    if workers <= 1 or total <= CHUNK_CHARS:  # not worth a fork
        with EncodePool(tokenizer, 1) as pool:
            return list(pool.encode(texts))
    segments = [cut_at_piece_boundaries(text, CHUNK_CHARS // 2) for text in texts]
    with EncodePool(tokenizer, workers, total_chars=total) as pool:
        encoded = iter(pool.encode(segment for parts in segments for segment in parts))
        return [next(encoded) if len(parts) == 1 else np.concatenate([next(encoded) for _ in parts]) for parts in segments]
