"""Packed low-bit matmul against dequantize-then-matmul, for every packed integer format."""

from __future__ import annotations

import pytest
import torch

from koi_kernels import packed_linear, packed_linear_reference
from koi_quant import PER_ROW, per_group, quantize

TOLERANCE = {torch.float32: dict(atol=1e-4, rtol=1e-4), torch.bfloat16: dict(atol=3e-2, rtol=3e-2)}


@pytest.mark.parametrize("fmt", ["int8", "int4", "int2", "ternary", "binary"])
@pytest.mark.parametrize("shape", [(5, 48, 40), (33, 96, 70)])  # (tokens, in K, out N)
@pytest.mark.parametrize("granularity", ["row", "group16"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matches_dequantized_matmul(fmt, shape, granularity, dtype, device):
    m, k, n = shape
    g = torch.Generator().manual_seed(m * k + n)
    w = torch.randn(n, k, generator=g) * 0.02
    qw = quantize(w, fmt, PER_ROW if granularity == "row" else per_group(16))
    qw.packed, qw.scale = qw.packed.to(device), qw.scale.to(device)
    x = torch.randn(m, k, generator=g).to(device, dtype)
    got = packed_linear(x, qw)
    want = packed_linear_reference(x.double(), qw)  # float64 reference
    assert got.shape == (m, n) and got.dtype == dtype
    torch.testing.assert_close(got.double(), want, **TOLERANCE[dtype])


def test_leading_dimensions_are_kept(device):
    w = torch.randn(24, 32) * 0.02
    qw = quantize(w, "int4", per_group(8))
    qw.packed, qw.scale = qw.packed.to(device), qw.scale.to(device)
    x = torch.randn(2, 3, 32, device=device)
    torch.testing.assert_close(packed_linear(x, qw), packed_linear_reference(x, qw), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("fmt", ["int8", "int4", "ternary", "binary"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_input_gradient_matches_dequantized_matmul(fmt, dtype, device):
    m, k, n = 19, 96, 70
    g = torch.Generator().manual_seed(k + n)
    qw = quantize(torch.randn(n, k, generator=g) * 0.02, fmt, per_group(16))
    qw.packed, qw.scale = qw.packed.to(device), qw.scale.to(device)
    x = torch.randn(m, k, generator=g).to(device, dtype).requires_grad_()
    upstream = torch.randn(m, n, generator=g).to(device, dtype)
    (packed_linear(x, qw) * upstream).sum().backward()
    want = upstream.double() @ qw.dequantize(torch.float64).to(device)  # dL/dx = dL/dy @ W, in float64
    torch.testing.assert_close(x.grad.double(), want, **TOLERANCE[dtype])
