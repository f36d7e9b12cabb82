"""Choose between a Triton kernel and its torch reference.

Default: Triton for CUDA tensors, the reference elsewhere. KOI_KERNELS=triton forces Triton (with
TRITON_INTERPRET=1 this runs the kernels on CPU, which is how CI tests them); KOI_KERNELS=torch
forces the reference everywhere.
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


def use_triton(t: torch.Tensor) -> bool:
    mode = kernel_mode()
    if mode == "torch":
        return False
    if mode == "triton":
        if not triton_available():
            raise RuntimeError("KOI_KERNELS=triton but triton is not installed")
        return True
    return t.is_cuda and triton_available()
