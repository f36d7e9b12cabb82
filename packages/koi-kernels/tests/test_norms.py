"""Fused RMSNorm/LayerNorm (+ residual) against the torch reference in float64."""

from __future__ import annotations

import pytest
import torch

from koi_kernels import layer_norm, layer_norm_reference, rms_norm, rms_norm_reference

SHAPES = [(1, 64), (37, 129), (2, 9, 96), (64, 768), (3, 1000)]
TOLERANCE = {torch.float32: dict(atol=2e-5, rtol=2e-5), torch.bfloat16: dict(atol=3e-2, rtol=2e-2)}


def _inputs(shape, dtype, device, seed, with_residual):
    g = torch.Generator().manual_seed(seed)
    n = shape[-1]
    x = torch.randn(shape, generator=g).to(device, dtype).requires_grad_()
    r = torch.randn(shape, generator=g).to(device, dtype).requires_grad_() if with_residual else None
    w = (1 + 0.1 * torch.randn(n, generator=g)).to(device, dtype).requires_grad_()
    b = (0.1 * torch.randn(n, generator=g)).to(device, dtype).requires_grad_()
    dy = torch.randn(shape, generator=g).to(device, dtype)
    dh = torch.randn(shape, generator=g).to(device, dtype)
    return x, r, w, b, dy, dh


def _grads(outputs, inputs, dy, dh):
    y, h = outputs
    loss = (y.float() * dy.float()).sum() + ((h.float() * dh.float()).sum() if inputs[1] is not None else 0)
    return torch.autograd.grad(loss, [t for t in inputs if t is not None])


def _reference_inputs(tensors):
    return [None if t is None else t.detach().double().requires_grad_() for t in tensors]


@pytest.mark.parametrize("kind", ["rms", "layer"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_residual", [False, True])
def test_norm_matches_reference(kind, shape, dtype, with_residual, device):
    x, r, w, b, dy, dh = _inputs(shape, dtype, device, seed=hash((kind, shape, str(dtype))) % 1000, with_residual=with_residual)
    if kind == "rms":
        out = rms_norm(x, w, 1e-6, residual=r)
        rx, rr, rw = _reference_inputs([x, r, w])
        ref = rms_norm_reference(rx, rw, 1e-6, residual=rr)
        got, want = _grads(out, [x, r, w], dy, dh), _grads(ref, [rx, rr, rw], dy, dh)
    else:
        out = layer_norm(x, w, b, 1e-5, residual=r)
        rx, rr, rw, rb = _reference_inputs([x, r, w, b])
        ref = layer_norm_reference(rx, rw, rb, 1e-5, residual=rr)
        got, want = _grads(out, [x, r, w, b], dy, dh), _grads(ref, [rx, rr, rw, rb], dy, dh)
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(out[0].float(), ref[0].float(), **tol)
    torch.testing.assert_close(out[1].float(), ref[1].float(), **tol)
    for g, want_g in zip(got, want):
        scale = max(1.0, want_g.abs().max().item())  # weight grads sum over rows: compare relative to their size
        torch.testing.assert_close(g.float() / scale, want_g.float() / scale, **tol)


def test_reference_path_when_forced(monkeypatch):
    monkeypatch.setenv("KOI_KERNELS", "torch")
    x = torch.randn(4, 32)
    w = torch.ones(32)
    y, h = rms_norm(x, w)
    torch.testing.assert_close(y, x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))
    assert h is x
