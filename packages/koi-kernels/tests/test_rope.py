"""RoPE kernel (forward and backward, strided inputs, offsets) against the float64 reference."""

from __future__ import annotations

import pytest
import torch

from koi_kernels import rope, rope_reference, rope_tables

TOLERANCE = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.bfloat16: dict(atol=2e-2, rtol=2e-2)}


@pytest.mark.parametrize("shape", [(1, 1, 5, 8), (2, 3, 17, 64), (2, 4, 33, 96), (1, 2, 9, 6)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("start", [0, 7])
def test_rope_matches_reference(shape, dtype, start, device):
    B, H, T, D = shape
    g = torch.Generator().manual_seed(T * D + start)
    cos, sin = rope_tables(D, 64)
    cos, sin = cos.to(device), sin.to(device)
    # q laid out as the models make it: (B, T, H, D) transposed to (B, H, T, D), so not contiguous
    q = torch.randn(B, T, H, D, generator=g).to(device, dtype).transpose(1, 2).requires_grad_()
    k = torch.randn(B, max(1, H // 2), T, D, generator=g).to(device, dtype).requires_grad_()
    dq, dk = torch.randn(q.shape, generator=g).to(device, dtype), torch.randn(k.shape, generator=g).to(device, dtype)
    rq, rk = rope(q, k, cos, sin, start)
    gq, gk = torch.autograd.grad((rq.float() * dq.float()).sum() + (rk.float() * dk.float()).sum(), [q, k])
    q64, k64 = q.detach().double().requires_grad_(), k.detach().double().requires_grad_()
    eq, ek = rope_reference(q64, cos, sin, start), rope_reference(k64, cos, sin, start)
    wq, wk = torch.autograd.grad((eq * dq.double()).sum() + (ek * dk.double()).sum(), [q64, k64])
    tol = TOLERANCE[dtype]
    for got, want in ((rq, eq), (rk, ek), (gq, wq), (gk, wk)):
        torch.testing.assert_close(got.double(), want, **tol)


def test_rotation_preserves_norm_and_position_zero_is_identity(device):
    cos, sin = rope_tables(32, 16)
    x = torch.randn(1, 2, 16, 32, device=device)
    y, _ = rope(x, x, cos.to(device), sin.to(device))
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(y[:, :, 0], x[:, :, 0])


def test_under_compile_auto_dispatch_leaves_rope_to_inductor(monkeypatch):
    """A CUDA tensor takes the Triton kernel in eager, the fusable reference while torch.compile traces."""
    import types

    from koi_kernels import dispatch

    monkeypatch.delenv("KOI_KERNELS", raising=False)
    monkeypatch.setattr(dispatch, "triton_available", lambda: True)
    cuda_tensor = types.SimpleNamespace(is_cuda=True)
    assert dispatch.use_triton(cuda_tensor, fusable=True) and dispatch.use_triton(cuda_tensor)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert not dispatch.use_triton(cuda_tensor, fusable=True)
    assert dispatch.use_triton(cuda_tensor)  # a kernel Inductor cannot write (fused loss, fp8) stays
    monkeypatch.setenv("KOI_KERNELS", "triton")
    assert dispatch.use_triton(cuda_tensor, fusable=True)  # forced stays forced
