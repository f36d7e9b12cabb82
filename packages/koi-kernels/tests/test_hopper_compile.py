"""Every kernel launch of this session, compiled for Hopper without a GPU (see hopper_compile.py for why)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import triton.language as tl
from conftest import RECORDING
from hopper_compile import COMPILE, LAUNCHES, record_launch


def test_every_kernel_launch_compiles_for_hopper(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("on a GPU the tests compile and run every kernel themselves")
    if not RECORDING or not LAUNCHES:
        pytest.skip("no kernel ran through the Triton interpreter in this session")
    (tmp_path / "launches.json").write_text(json.dumps(list(LAUNCHES.values())))
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env.update(TRITON_CACHE_DIR=str(tmp_path / "cache"), TRITON_DEFAULT_FP_FUSION=env.get("TRITON_DEFAULT_FP_FUSION", "1"))
    done = subprocess.run([sys.executable, "-c", COMPILE, str(tmp_path / "launches.json")], capture_output=True, text=True,
                          env=env, timeout=900)
    if done.returncode == 3:
        pytest.skip(done.stdout.strip())
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "compiled" in done.stdout
    print(done.stdout.strip())  # how many launches and kernels (pytest -s shows it)


def test_a_launch_is_recorded_with_its_types_and_constants():
    def kernel(X, Y, n, scale, BLOCK: tl.constexpr, FLAG: tl.constexpr = True):
        pass

    before = len(LAUNCHES)
    x = torch.zeros(4, dtype=torch.bfloat16)
    for _ in range(2):  # the same launch twice is one entry
        record_launch(kernel, (x, torch.zeros(4, dtype=torch.int64), 4, 0.5), {"BLOCK": 64, "num_warps": 2})
    launch = list(LAUNCHES.values())[-1]
    assert len(LAUNCHES) == before + 1
    assert launch["signature"] == {"X": "*bf16", "Y": "*i64", "n": "i32", "scale": "fp32", "BLOCK": "constexpr", "FLAG": "constexpr"}
    assert launch["constants"] == {"BLOCK": 64, "FLAG": True} and launch["options"] == {"num_warps": 2}
    del LAUNCHES[next(reversed(LAUNCHES))]  # not a real kernel: the compile check must not see it
