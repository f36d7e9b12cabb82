"""A dependency-free progress line for long jobs: done/total, rate and ETA, at most once a second."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(self, total: float, *, label: str, unit: str = "MB", scale: float = 1e6, stream: TextIO | None = None) -> None:
        self.total, self.label, self.unit, self.scale = total, label, unit, scale
        self.stream = stream or sys.stderr
        self.done = 0.0
        self.start = self._last = time.perf_counter()
        self.extra = ""

    def advance(self, amount: float, extra: str = "") -> None:
        self.done += amount
        self.extra = extra
        now = time.perf_counter()
        if now - self._last >= 1.0:
            self._last = now
            self._print(final=False)

    def close(self) -> None:
        self._print(final=True)

    def _print(self, *, final: bool) -> None:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        rate = self.done / elapsed
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        tail = f"done in {elapsed:.1f}s" if final else f"ETA {eta:.0f}s"
        line = (
            f"{self.label}: {self.done / self.scale:.1f}/{self.total / self.scale:.1f} {self.unit} "
            f"({rate / self.scale:.1f} {self.unit}/s) {self.extra} {tail}"
        )
        self.stream.write(("\r" if self.stream.isatty() and not final else "") + line + ("\n" if final or not self.stream.isatty() else ""))
        self.stream.flush()
