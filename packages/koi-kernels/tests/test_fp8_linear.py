"""fp8 linear (three scaled matmuls) against float64 and against its own quantization model."""

from __future__ import annotations

import pytest
import torch

from koi_kernels import Fp8Linear, fp8_linear


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().double() - b.detach().double()).norm() / b.detach().double().norm())


@pytest.mark.parametrize("m,k,n", [(32, 64, 48), (64, 768, 256), (16, 48, 80)])
def test_forward_and_backward_close_to_float64(m, k, n, device):
    g = torch.Generator().manual_seed(m + k + n)
    x = torch.randn(m, k, generator=g).to(device, torch.bfloat16).requires_grad_()
    w = (torch.randn(n, k, generator=g) * 0.02).to(device).requires_grad_()
    b = torch.randn(n, generator=g).to(device).requires_grad_()
    dy = torch.randn(m, n, generator=g).to(device, torch.bfloat16)
    y = fp8_linear(x, w, b)
    dx, dw, db = torch.autograd.grad(y, [x, w, b], dy)
    x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, w, b))
    y64 = x64 @ w64.T + b64
    rx, rw, rb = torch.autograd.grad(y64, [x64, w64, b64], dy.double())
    # e4m3 keeps 3 mantissa bits (about 3% per value) and e5m2 2 bits; over sums of many products the
    # relative error of the result is a few percent.
    assert y.dtype == torch.bfloat16 and dx.dtype == torch.bfloat16 and dw.dtype == torch.float32
    assert rel_error(y, y64) < 0.05
    assert rel_error(dx, rx) < 0.09
    assert rel_error(dw, rw) < 0.09
    assert rel_error(db, rb) < 1e-2


def test_module_shares_parameters_and_trains(device):
    torch.manual_seed(0)
    base = torch.nn.Linear(64, 32).to(device)
    layer = Fp8Linear.from_linear(base)
    assert layer.weight is base.weight and layer.bias is base.bias
    target = torch.nn.Linear(64, 32).to(device)
    opt = torch.optim.Adam(layer.parameters(), lr=1e-2)
    x = torch.randn(256, 64, device=device)
    first = None
    for _ in range(100):
        loss = ((layer(x.bfloat16()).float() - target(x).detach()) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert loss.item() < 0.1 * first
