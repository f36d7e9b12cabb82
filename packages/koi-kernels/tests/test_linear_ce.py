"""Fused linear + cross-entropy against the float64 reference: loss and both gradients."""

from __future__ import annotations

import pytest
import torch

from koi_kernels import linear_cross_entropy, linear_cross_entropy_reference

CASES = [  # (tokens, width, vocab, chunk_rows)
    (7, 16, 50, 3),
    (33, 48, 1000, 8),
    (64, 64, 2053, 64),
]
TOLERANCE = {torch.float32: dict(atol=1e-4, rtol=1e-4), torch.bfloat16: dict(atol=2e-2, rtol=2e-2)}


def _inputs(n, c, v, dtype, device, seed):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, c, generator=g).to(device, dtype).requires_grad_()
    w = (torch.randn(v, c, generator=g) / c**0.5 * 3).to(device, dtype).requires_grad_()
    t = torch.randint(0, v, (n,), generator=g).to(device)
    t[::5] = -100  # some ignored positions
    return h, w, t


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("n,c,v,chunk", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("options", [{}, {"z_loss": 1e-3}, {"softcap": 15.0}])
def test_matches_reference(backend, n, c, v, chunk, dtype, options, device, monkeypatch):
    monkeypatch.setenv("KOI_KERNELS", backend)
    h, w, t = _inputs(n, c, v, dtype, device, seed=n + v)
    loss = linear_cross_entropy(h, w, t, chunk_rows=chunk, **options)
    gh, gw = torch.autograd.grad(loss * 1.7, [h, w])  # a non-unit upstream gradient
    rh, rw = h.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    ref = linear_cross_entropy_reference(rh, rw, t, **options)
    rgh, rgw = torch.autograd.grad(ref * 1.7, [rh, rw])
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(loss.double(), ref, **tol)
    torch.testing.assert_close(gh.double(), rgh, **tol)
    torch.testing.assert_close(gw.double(), rgw, **tol)


def test_all_ignored_gives_zero_loss_and_grads(device, monkeypatch):
    monkeypatch.setenv("KOI_KERNELS", "triton")
    h, w, t = _inputs(6, 8, 30, torch.float32, device, seed=0)
    t[:] = -100
    loss = linear_cross_entropy(h, w, t)
    gh, gw = torch.autograd.grad(loss, [h, w])
    assert loss.item() == 0 and gh.abs().max() == 0 and gw.abs().max() == 0


def test_shapes_3d_and_chunking_do_not_change_the_result(device, monkeypatch):
    monkeypatch.setenv("KOI_KERNELS", "triton")
    h, w, t = _inputs(24, 16, 77, torch.float32, device, seed=3)
    whole = linear_cross_entropy(h.view(4, 6, 16), w, t.view(4, 6))
    chunked = linear_cross_entropy(h, w, t, chunk_rows=5)
    torch.testing.assert_close(whole, chunked)


def test_compiles_into_one_graph_with_no_host_sync(device, monkeypatch):
    """No graph break (a host read of the target count split every compiled step before); same loss and grads.

    On the card the Triton kernel is compiled with Inductor; the interpreter cannot be traced, so on
    CPU the torch path is traced by Dynamo alone (the graph-break check) and run eagerly.
    """
    if device.type != "cuda":
        monkeypatch.setenv("KOI_KERNELS", "torch")
    h, w, t = _inputs(64, 32, 1000, torch.float32, device, seed=11)
    _assert_compiled_matches_eager(h, w, t, chunk_rows=16, backend="inductor" if device.type == "cuda" else "eager",
                                   loss_tol=1e-5, grad_tol=dict(atol=1e-5, rtol=1e-5))


def _assert_compiled_matches_eager(h, w, t, *, chunk_rows, backend, loss_tol, grad_tol):
    """The fused loss through torch.compile (one graph) against eager: loss and both gradients."""

    def loss_fn(h, w, t):
        return linear_cross_entropy(h, w, t, chunk_rows=chunk_rows)

    compiled = torch.compile(loss_fn, fullgraph=True, backend=backend)
    got = compiled(h, w, t)
    got_grads = torch.autograd.grad(got, [h, w])
    want = loss_fn(h, w, t)
    want_grads = torch.autograd.grad(want, [h, w])
    torch.testing.assert_close(got, want, atol=loss_tol, rtol=loss_tol)
    for a, b in zip(got_grads, want_grads):
        torch.testing.assert_close(a, b, **grad_tol)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="autocast's bf16 head matmul is a CUDA path")
def test_head_matmul_runs_in_autocast_dtype_on_fp32_activations():
    """Under bf16 autocast, fp32 activations from the final norm still multiply in bf16 (not TF32)."""
    from koi_kernels.ops.linear_ce import matmul_dtype

    h = torch.randn(4, 8, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        assert matmul_dtype(h) == torch.bfloat16
    assert matmul_dtype(h) == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="cuBLAS's fp32 sum of a bf16 product is a CUDA path")
def test_weight_gradient_sums_bf16_products_in_fp32_without_rounding_them():
    """The head's dW is summed over chunks straight into fp32: no bf16 rounding of each chunk's product."""
    from koi_kernels.ops.linear_ce import accumulate_product

    g = torch.Generator().manual_seed(5)
    a = torch.randn(512, 1024, generator=g).to("cuda", torch.bfloat16)
    b = torch.randn(1024, 256, generator=g).to("cuda", torch.bfloat16)
    start = torch.randn(512, 256, generator=g).cuda()
    total = start.clone()
    accumulate_product(total, a, b)
    exact = start.double() + a.double() @ b.double()
    rounded_each = start.double() + (a @ b).double()  # what summing bf16 products would give
    error = (total.double() - exact).abs().max().item()
    assert error < 1e-3, error
    assert error < (rounded_each - exact).abs().max().item() / 10


@pytest.mark.skipif(not torch.cuda.is_available(), reason="Inductor's lowering of the fp32-sum matmul is a CUDA path")
def test_compiled_bf16_loss_and_gradients_match_eager():
    """Under Inductor with bf16 operands (the training path), loss and both gradients match eager."""
    h, w, t = _inputs(256, 64, 3000, torch.bfloat16, torch.device("cuda"), seed=12)
    _assert_compiled_matches_eager(h, w, t, chunk_rows=64, backend="inductor", loss_tol=1e-3, grad_tol=dict(atol=2e-3, rtol=2e-2))
