"""Muon's same-shape batching and its device gate against a plain per-matrix Muon."""

from __future__ import annotations

import pytest
import torch

from koi_train import optim
from koi_train.optim import Muon, newton_schulz_orthogonalize

SHAPES = [(24, 24), (24, 72), (72, 24), (24, 72), (72, 24), (24, 24), (16, 40)]


def per_matrix_newton_schulz(grad: torch.Tensor, steps: int) -> torch.Tensor:
    """The textbook iteration on one matrix, in float64."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = grad.double()
    transposed = x.size(0) > x.size(1)
    if transposed:
        x = x.T
    x = x / (x.norm() + 1e-7)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if transposed else x


def per_matrix_muon_step(params, grads, buffers, lr, momentum, decay, steps=5):
    for p, g, buf in zip(params, grads, buffers):
        buf.mul_(momentum).add_(g)
        update = per_matrix_newton_schulz(g + momentum * buf, steps)
        p.mul_(1 - lr * decay)
        p.add_(update, alpha=-lr * max(1.0, p.size(0) / p.size(1)) ** 0.5)


def make_params(seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(*shape, generator=g)) for shape in SHAPES]


def test_stacked_newton_schulz_orthogonalises_each_matrix_as_alone():
    g = torch.Generator().manual_seed(0)
    for shape in ((5, 24, 72), (5, 72, 24)):
        stack = torch.randn(*shape, generator=g)
        got = newton_schulz_orthogonalize(stack, 5)
        for one, want in zip(got, stack):
            torch.testing.assert_close(one.double(), per_matrix_newton_schulz(want, 5), atol=2e-5, rtol=1e-4)
        # and the singular values are pushed near 1 (what Muon relies on)
        singular = torch.linalg.svdvals(got.double())
        assert singular.min() > 0.5 and singular.max() < 1.3


@pytest.mark.parametrize("stack_elements", [1 << 26, 24 * 72])  # all of a shape at once, or one matrix per batch
def test_muon_steps_like_a_per_matrix_muon(monkeypatch, stack_elements):
    monkeypatch.setattr(optim, "STACK_ELEMENTS", stack_elements)
    params = make_params(1)
    reference = [p.detach().double().clone() for p in params]
    buffers = [torch.zeros_like(p) for p in reference]
    opt = Muon(params, lr=0.02, momentum=0.95, weight_decay=0.1)
    g = torch.Generator().manual_seed(2)
    for _ in range(4):
        grads = [torch.randn(p.shape, generator=g) for p in params]
        for p, grad in zip(params, grads):
            p.grad = grad.clone()
        opt.step()
        per_matrix_muon_step(reference, [grad.double() for grad in grads], buffers, 0.02, 0.95, 0.1)
    for p, want in zip(params, reference):
        torch.testing.assert_close(p.detach().double(), want, atol=1e-5, rtol=1e-5)


def test_a_gated_step_leaves_weights_and_momentum_as_they_were_even_with_nan_gradients():
    params = make_params(3)
    opt = Muon(params, lr=0.02, momentum=0.95, weight_decay=0.1)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()  # a real step first, so the momentum is not zero
    before = [p.detach().clone() for p in params]
    momentum_before = [opt.state[p]["momentum_buffer"].clone() for p in params]
    for p in params:
        p.grad = torch.full_like(p, float("nan"))
    opt.found_inf = torch.ones(())
    opt.step()
    for p, want, buf in zip(params, before, momentum_before):
        assert torch.equal(p.detach(), want)
        assert torch.equal(opt.state[p]["momentum_buffer"], buf)


def test_an_open_gate_steps_exactly_like_no_gate():
    gated, plain = make_params(4), make_params(4)
    opts = [Muon(gated, weight_decay=0.1), Muon(plain, weight_decay=0.1)]
    opts[0].found_inf = torch.zeros(())
    g = torch.Generator().manual_seed(5)
    for _ in range(3):
        for a, b in zip(gated, plain):
            a.grad = torch.randn(a.shape, generator=g)
            b.grad = a.grad.clone()
        for opt in opts:
            opt.step()
    for a, b in zip(gated, plain):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
