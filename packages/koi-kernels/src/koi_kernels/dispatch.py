"""Choose between a Triton kernel and its torch reference.

Default: Triton for CUDA tensors, the reference elsewhere. KOI_KERNELS=triton forces Triton (with
TRITON_INTERPRET=1 this runs the kernels on CPU, which is how CI tests them); KOI_KERNELS=torch
forces the reference everywhere. Under torch.compile, "auto" gives a pointwise op whose reference
Inductor can fuse with its neighbours (RoPE after the q/k projections and norms) the reference:
a hand-written kernel is opaque to Inductor and costs its own pass over memory.
"""

from __future__ import annotations

import os

import torch

MODES = ("auto", "triton", "torch")


def kernel_mode() -> str:
    mode = os.environ.get("KOI_KERNELS", "auto")
    if mode not in MODES:
        raise ValueError(f"KOI_KERNELS: expected one of {', '.join(MODES)}, got {mode!r}")
    return mode


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def use_triton(t: torch.Tensor, *, fusable: bool = False) -> bool:
    """``fusable``: the op is pointwise, so under torch.compile its reference fuses (auto mode only)."""
    mode = kernel_mode()
    if mode == "torch":
        return False
    if mode == "triton":
        if not triton_available():
            raise RuntimeError("KOI_KERNELS=triton but triton is not installed")
        return True
    if fusable and torch.compiler.is_compiling():
        return False
    return t.is_cuda and triton_available()
