"""Kernel tests run the Triton path: on a GPU directly, on CPU through TRITON_INTERPRET=1.

On a CPU every launch is also recorded (hopper_compile.py), and the session's last test compiles
them all for sm_90: the interpreter accepts programs the compiler refuses.
"""

from __future__ import annotations

import os

import pytest
import torch
from hopper_compile import install_recorder

os.environ.setdefault("KOI_KERNELS", "triton")
RECORDING = os.environ.get("TRITON_INTERPRET") == "1" and install_recorder()
LAST = "test_every_kernel_launch_compiles_for_hopper"


def pytest_collection_modifyitems(items):
    """The compile check goes last, so that it sees every launch the other tests made."""
    items.sort(key=lambda item: item.name == LAST)


@pytest.fixture(scope="session")
def device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.fail("no GPU: run kernel tests with TRITON_INTERPRET=1 (nox sets it)")
    return torch.device("cpu")
