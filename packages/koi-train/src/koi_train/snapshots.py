"""Copies of the weights and optimizer state in host memory, to roll a bad update back.

A snapshot is taken at the start of a step, before the step's forward pass, and stays *pending*
until that forward pass has been judged: the step's loss is the first measurement of those
weights, so only then is the snapshot known to be good. The store keeps the last two good
snapshots (the newer one can still turn out to be bad, when damage shows only a few steps late)
and at most one pending one, so three host copies of the model and its optimizer state at most.

Cost on a GPU: one device-to-host copy of weights and optimizer state per snapshot, into pinned
buffers reused from snapshot to snapshot, plus a NaN/Inf test (a few fused kernels per device and
dtype) whose result is read only after the trainer's own sync at the end of the step. The copy
(1.5 GB at 124M with AdamW, about 30 ms) runs on a side stream, so the copy engine works while the
step's forward and backward compute; on the compute stream it cost 1.7% tok/s on an H200
(BENCHMARKS.md, fifth session).
Whatever writes weights or optimizer state next (the optimizer step, a restore, an expert switch)
calls `fence` first, so the copy always sees the weights as they were at the capture.
Pinning host memory is slow (about a second per GB), so the three buffer sets are allocated by a
background thread once the optimizer state exists, not inside a training step.
Restoring copies back in place, so DDP, the optimizers and the mixture keep their references.
"""

from __future__ import annotations

import threading
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from torch import nn

from .optim import OptimizerSet


def _local(t: torch.Tensor) -> torch.Tensor:
    """This rank's data: the local shard of an FSDP DTensor, the tensor itself otherwise."""
    return t.to_local() if hasattr(t, "to_local") else t


def _host_copy(t: torch.Tensor, reuse: torch.Tensor | None, stream: torch.cuda.Stream | None = None) -> torch.Tensor:
    """``t`` copied to host memory, into ``reuse`` when it fits (no new pinned allocation); on
    ``stream`` when given, where ``t`` is marked in use so its memory is not handed out meanwhile."""
    t = _local(t).detach()
    if reuse is None or reuse.shape != t.shape or reuse.dtype != t.dtype:
        reuse = torch.empty(t.shape, dtype=t.dtype, pin_memory=t.is_cuda)
    if stream is not None and t.is_cuda:
        t.record_stream(stream)
    return reuse.copy_(t, non_blocking=True)


NON_FINITE_BITS = {torch.float8_e4m3fn: 0x7F, torch.float8_e5m2: 0x7C}  # exponent (and mantissa) bits set: NaN or inf


def _finite(t: torch.Tensor) -> torch.Tensor:
    """isfinite for every float dtype; fp8 (8-bit optimizer moments) has no isfinite kernel, so read its bits."""
    bits = NON_FINITE_BITS.get(t.dtype)
    if bits is None:
        return torch.isfinite(t).all()
    return ((t.view(torch.uint8) & bits) != bits).all()


def _pinned_like(t: torch.Tensor) -> torch.Tensor:
    return torch.empty(t.shape, dtype=t.dtype, pin_memory=t.is_cuda)


def _group_finite(group: list[torch.Tensor]) -> torch.Tensor:
    """One bool for tensors of one device and dtype: a few fused kernels, not two launches per tensor.

    The 1-norm carries any NaN or inf through its sum (a max-abs reduction need not propagate NaN);
    its fp32 sum overflows only past 3e38, where a run is broken anyway, much later than the 2-norm's squares.
    """
    if group[0].dtype in NON_FINITE_BITS:
        return torch.stack([_finite(t) for t in group]).all()
    return torch.stack(torch._foreach_norm(group, 1)).isfinite().all()


def all_finite(tensors: list[torch.Tensor]) -> torch.Tensor:
    """A bool on the tensors' accelerator (no host sync): every floating-point element of ``tensors`` is finite.

    Optimizer state can sit on the host beside weights on the GPU (AdamW's foreach ``step``, an
    8-bit optimizer's counters): host tensors are judged on the host at once, the rest where they
    live, since one stack across devices is refused.
    """
    groups: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    for t in tensors:
        t = _local(t)
        if t.is_floating_point() and t.numel():
            groups.setdefault((t.device, t.dtype), []).append(t.detach())
    host = torch.device("cpu")
    host_ok = all(bool(_group_finite(group)) for (device, _), group in groups.items() if device == host)
    flags = [_group_finite(group) for (device, _), group in groups.items() if device != host]
    if not flags:
        return torch.tensor(host_ok)
    device = flags[0].device
    verdict = torch.stack([flag.to(device) for flag in flags]).all()
    return verdict if host_ok else torch.zeros((), dtype=torch.bool, device=device)


def _optimizer_states(optimizer: OptimizerSet) -> list[tuple[torch.optim.Optimizer, nn.Parameter]]:
    return [(opt, p) for opt in optimizer.optimizers for group in opt.param_groups for p in group["params"]]


@dataclass
class Snapshot:
    step: int
    model: dict[str, torch.Tensor] = field(default_factory=dict)
    optimizer: list[dict | None] = field(default_factory=list)  # one state per (optimizer, parameter), in order
    devices: list[dict] = field(default_factory=list)  # where each optimizer state tensor lived
    finite: torch.Tensor | None = None  # device bool, read after the step's own sync
    extra: dict = field(default_factory=dict)  # small host-side state that belongs with these weights

    def is_finite(self) -> bool:
        return bool(self.finite) if self.finite is not None else True


class SnapshotStore:
    """Pending and good snapshots of one model and its optimizers."""

    def __init__(self, model: nn.Module, optimizer: OptimizerSet, *, every: int, keep: int = 2) -> None:
        self.model, self.optimizer, self.every, self.keep = model, optimizer, every, keep
        self.good: list[Snapshot] = []  # oldest first
        self.pending: Snapshot | None = None
        self._spares: list[Snapshot] = []  # buffer sets of dropped (or pre-allocated) snapshots, reused by captures
        self._lock = threading.Lock()
        self._allocator: threading.Thread | None = None
        self._copy_stream: torch.cuda.Stream | None = None
        self._copied: torch.cuda.Event | None = None  # the side stream's copy of the last capture, until fenced

    def warm_up(self) -> None:
        """Start pinning the host buffers of every snapshot to come, in the background (once optimizer state exists)."""
        if self._allocator is not None or self.every <= 0 or not any(opt.state for opt in self.optimizer.optimizers):
            return
        state = {name: _local(t) for name, t in self.model.state_dict().items()}
        optimizer = [{k: _local(v) for k, v in (opt.state.get(p) or {}).items() if torch.is_tensor(v)}
                     for opt, p in _optimizer_states(self.optimizer)]
        sets = self.keep + 1  # the good ones and a pending one

        def allocate() -> None:
            for _ in range(sets):
                spare = Snapshot(-1, model={n: _pinned_like(t) for n, t in state.items()},
                                 optimizer=[{k: _pinned_like(v) for k, v in s.items()} for s in optimizer])
                with self._lock:
                    self._spares.append(spare)

        self._allocator = threading.Thread(target=allocate, name="koi-snapshot-buffers", daemon=True)
        self._allocator.start()

    def _take_spare(self) -> Snapshot | None:
        with self._lock:
            return self._spares.pop() if self._spares else None

    def due(self, step: int) -> bool:
        """A snapshot is due every `every` steps after the last good one, or at once when there is none;
        never while one is pending (its step is not judged yet: it may still become the good one)."""
        return self.every > 0 and self.pending is None and (not self.good or step - self.good[-1].step >= self.every)

    def _side_stream(self, state: dict[str, torch.Tensor]) -> torch.cuda.Stream | None:
        """The stream the copies run on: a side stream that first waits for the compute stream (CUDA only)."""
        device = next((_local(t).device for t in state.values() if _local(t).is_cuda), None)
        if device is None:
            return None
        if self._copy_stream is None:
            self._copy_stream = torch.cuda.Stream(device)
        self._copy_stream.wait_stream(torch.cuda.current_stream(device))
        return self._copy_stream

    def fence(self) -> None:
        """Make the compute stream wait for the copy in flight: call before writing weights or optimizer state."""
        if self._copied is not None:
            torch.cuda.current_stream(self._copy_stream.device).wait_event(self._copied)
            self._copied = None

    def capture(self, step: int, extra: dict | None = None) -> Snapshot:
        """Copy weights and optimizer state to host memory as the pending snapshot; ``extra`` is kept as is."""
        if self.pending is not None:
            self._drop(self.pending)
        old = self._take_spare()
        snap = Snapshot(step, extra=extra or {})
        state = self.model.state_dict()
        stream = self._side_stream(state)
        with torch.cuda.stream(stream) if stream is not None else nullcontext():
            snap.model = {name: _host_copy(t, old.model.get(name) if old else None, stream) for name, t in state.items()}
            old_states = old.optimizer if old else []
            for i, (opt, p) in enumerate(_optimizer_states(self.optimizer)):
                current = opt.state.get(p)
                previous = old_states[i] if i < len(old_states) else None
                snap.optimizer.append(None if not current else {
                    k: _host_copy(v, (previous or {}).get(k), stream) if torch.is_tensor(v) else v for k, v in current.items()})
                snap.devices.append({k: _local(v).device for k, v in (current or {}).items() if torch.is_tensor(v)})
        if stream is not None:
            self._copied = torch.cuda.Event()
            self._copied.record(stream)
        tensors = list(state.values()) + [v for s in (opt.state.get(p) for opt, p in _optimizer_states(self.optimizer)) if s
                                          for v in s.values() if torch.is_tensor(v)]
        snap.finite = all_finite(tensors)
        self.pending = snap
        return snap

    def promote(self, judged_step: int) -> None:
        """Step ``judged_step`` was judged healthy: the pending snapshot, if taken at or before it, is good."""
        if self.pending is None or self.pending.step > judged_step:
            return
        self.good.append(self.pending)
        self.pending = None
        while len(self.good) > self.keep:
            self._drop(self.good.pop(0))

    def discard_pending(self) -> None:
        if self.pending is not None:
            self._drop(self.pending)
            self.pending = None

    def forget(self, snap: Snapshot) -> None:
        """A good snapshot that turned out bad."""
        self.good = [s for s in self.good if s is not snap]
        self._drop(snap)

    def clear(self) -> None:
        """Drop every snapshot: after a planned change (an expert switch) none of them applies."""
        for snap in [*self.good, *([self.pending] if self.pending else [])]:
            self._drop(snap)
        self.good, self.pending = [], None

    def _drop(self, snap: Snapshot) -> None:
        if self._allocator is not None and not any(snap.optimizer):
            return  # taken before the optimizer state existed: the pre-allocated full sets replace it
        with self._lock:
            self._spares.append(snap)
            del self._spares[: -(self.keep + 1)]  # never more host copies than captures can use

    @torch.no_grad()
    def restore(self, snap: Snapshot) -> None:
        """Copy a snapshot back into the live tensors, in place."""
        self.fence()  # the snapshot may be the one still being copied out
        for name, t in self.model.state_dict().items():
            _local(t).copy_(snap.model[name], non_blocking=True)
        for (opt, p), saved, saved_devices in zip(_optimizer_states(self.optimizer), snap.optimizer, snap.devices, strict=True):
            current = opt.state.get(p)
            if saved is None:
                opt.state.pop(p, None)
                continue
            if current and current.keys() == saved.keys() and all(
                    not torch.is_tensor(v) or _local(current[k]).shape == v.shape for k, v in saved.items()):
                for k, v in saved.items():
                    if torch.is_tensor(v):
                        _local(current[k]).copy_(v, non_blocking=True)
                    else:
                        current[k] = v
            else:  # the state was created or reshaped since: rebuild it where it lived
                opt.state[p] = {k: v.to(saved_devices[k], copy=True) if torch.is_tensor(v) else v for k, v in saved.items()}
