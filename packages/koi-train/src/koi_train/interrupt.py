"""Ctrl-C stops training at a step boundary, so the checkpoint it leaves resumes bit for bit.

A SIGINT can land anywhere in a step: after the data iterator advanced, after backward, before
the step count moved. A checkpoint taken there mixes two steps, and the resumed run drifts from
the uninterrupted one. So the first Ctrl-C only raises a flag; the trainer looks at it between
steps, saves and stops there. A second Ctrl-C interrupts at once without saving: the last
checkpoint on disk is still whole, so resuming from it stays exact.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported late: the CLI defers Ctrl-C before its start-up imports torch and Triton
    import torch

    from .distributed import DistInfo


class StoppedAtBoundary(KeyboardInterrupt):
    """Raised by the trainer after it saved at a step boundary; callers treat it as any Ctrl-C (exit 130)."""


class DeferredInterrupt:
    """Context manager: while inside, SIGINT sets ``requested`` instead of raising KeyboardInterrupt.

    Nested uses share one flag, so a Ctrl-C during the CLI's start-up (imports, data preparation,
    loading a checkpoint: a KeyboardInterrupt inside Triton's native code aborts the process) is
    honoured at the trainer's first step boundary. It takes over only Python's default handler in
    the main thread; a handler someone else installed (a notebook, a caller) is left alone.
    """

    _depth = 0
    _requested = False

    def __init__(self) -> None:
        self._previous = None

    @property
    def requested(self) -> bool:
        return DeferredInterrupt._requested

    def __enter__(self) -> DeferredInterrupt:
        if DeferredInterrupt._depth == 0:
            DeferredInterrupt._requested = False
        DeferredInterrupt._depth += 1
        in_main_thread = threading.current_thread() is threading.main_thread()
        if in_main_thread and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        # No printing here: a handler that writes to a stream the loop is writing to can fail with "reentrant call".
        DeferredInterrupt._requested = True
        signal.signal(signal.SIGINT, self._previous)  # a second Ctrl-C stops at once

    def __exit__(self, *exc) -> None:
        DeferredInterrupt._depth -= 1
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    @staticmethod
    @contextmanager
    def immediate() -> Iterator[None]:
        """Inside, Ctrl-C raises KeyboardInterrupt at once, and one that came while deferred raises on entry.

        For the work after a run's last checkpoint (final evaluation, sample, plot): cutting it short
        loses nothing, and left deferred a Ctrl-C there was never looked at again (the run ended
        "done", exit 0). Only a deferral of ours is lifted; someone else's handler stays.
        """
        if DeferredInterrupt._requested:
            DeferredInterrupt._requested = False
            raise KeyboardInterrupt
        current = signal.getsignal(signal.SIGINT)
        ours = isinstance(getattr(current, "__self__", None), DeferredInterrupt)
        if not ours or threading.current_thread() is not threading.main_thread():
            yield
            return
        signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, current)

    def requested_on_any_rank(self, dist: DistInfo, device: torch.device) -> bool:
        """Every rank must stop at the same step, or the checkpoint's collectives would wait forever."""
        if not dist.active:
            return self.requested
        from .distributed import mean_across_ranks

        return mean_across_ranks(float(self.requested), dist, device) > 0
