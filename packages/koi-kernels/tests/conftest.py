"""Kernel tests run the Triton path: on a GPU directly, on CPU through TRITON_INTERPRET=1."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("KOI_KERNELS", "triton")


@pytest.fixture(scope="session")
def device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.fail("no GPU: run kernel tests with TRITON_INTERPRET=1 (nox sets it)")
    return torch.device("cpu")
