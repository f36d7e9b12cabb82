"""Per-token gathered MLP kernel against the dense MLP in float64 with the unpicked neurons zeroed."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from koi_kernels import gathered_mlp_per_token, gathered_mlp_per_token_reference

TOLERANCE = {torch.float32: dict(atol=1e-4, rtol=1e-4), torch.bfloat16: dict(atol=3e-2, rtol=3e-2)}


def masked_dense_mlp(x, up_weights, up_biases, down_rows, down_bias, index, activation):
    """The whole MLP in float64, each token's hidden vector zeroed outside its own ``index``: what gathering must equal."""
    x = x.double()
    ups = [F.linear(x, w.double(), None if b is None else b.double()) for w, b in zip(up_weights, up_biases)]
    hidden = F.gelu(ups[0], approximate="tanh") if activation == "gelu_tanh" else F.silu(ups[0]) * ups[1]
    keep = torch.zeros_like(hidden, dtype=torch.bool).scatter_(-1, index.to(hidden.device), True)
    return F.linear(hidden * keep, down_rows.double().t(), None if down_bias is None else down_bias.double())


def make_case(tokens, width, hidden, kept, activation, bias, dtype, device, seed):
    g = torch.Generator().manual_seed(seed)
    count = 1 if activation == "gelu_tanh" else 2
    ups = [(torch.randn(hidden, width, generator=g) * width**-0.5).to(device, dtype) for _ in range(count)]
    up_biases = [(torch.randn(hidden, generator=g) * 0.1).to(device, dtype) if bias else None for _ in range(count)]
    down_rows = (torch.randn(hidden, width, generator=g) * hidden**-0.5).to(device, dtype)
    down_bias = (torch.randn(width, generator=g) * 0.1).to(device, dtype) if bias else None
    x = torch.randn(tokens, width, generator=g).to(device, dtype)
    index = torch.rand(tokens, hidden, generator=g).topk(kept, dim=-1).indices.to(device)
    return x, ups, up_biases, down_rows, down_bias, index


@pytest.mark.parametrize("activation", ["gelu_tanh", "swiglu"])
@pytest.mark.parametrize("shape", [(1, 64, 256, 64), (3, 80, 200, 37), (16, 48, 96, 96), (2, 300, 70, 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gathered_mlp_matches_masked_dense_mlp(activation, shape, dtype, device):
    tokens, width, hidden, kept = shape
    case = make_case(tokens, width, hidden, kept, activation, activation == "gelu_tanh", dtype, device, seed=sum(shape))
    got = gathered_mlp_per_token(*case, activation=activation)
    assert got.shape == (tokens, width) and got.dtype == dtype
    torch.testing.assert_close(got.double(), masked_dense_mlp(*case, activation), **TOLERANCE[dtype])


@pytest.mark.parametrize("bias", [True, False])
def test_biases_are_optional_for_both_activations(bias, device):
    for activation in ("gelu_tanh", "swiglu"):
        case = make_case(4, 40, 120, 30, activation, bias, torch.float32, device, seed=7)
        torch.testing.assert_close(gathered_mlp_per_token(*case, activation=activation).double(),
                                   masked_dense_mlp(*case, activation), **TOLERANCE[torch.float32])


def test_each_token_uses_its_own_neurons(device):
    """Two tokens with the same input but different neuron sets give different outputs, each its own masked MLP."""
    x, ups, up_biases, down_rows, down_bias, _ = make_case(2, 32, 64, 16, "gelu_tanh", True, torch.float32, device, seed=3)
    x = x[:1].expand(2, -1).contiguous()
    index = torch.stack([torch.arange(16), torch.arange(48, 64)]).to(device)
    got = gathered_mlp_per_token(x, ups, up_biases, down_rows, down_bias, index)
    assert not torch.allclose(got[0], got[1])
    torch.testing.assert_close(got.double(), masked_dense_mlp(x, ups, up_biases, down_rows, down_bias, index, "gelu_tanh"),
                               **TOLERANCE[torch.float32])


def test_all_neurons_kept_is_the_dense_mlp(device):
    x, ups, up_biases, down_rows, down_bias, _ = make_case(5, 72, 144, 144, "swiglu", False, torch.float32, device, seed=11)
    index = torch.randperm(144).expand(5, -1).contiguous().to(device)  # every neuron, in any order
    x64, gate, up, down = (t.double() for t in (x, *ups, down_rows))
    dense = F.linear(F.silu(F.linear(x64, gate)) * F.linear(x64, up), down.t())
    torch.testing.assert_close(gathered_mlp_per_token(x, ups, up_biases, down_rows, down_bias, index, "swiglu").double(), dense,
                               atol=1e-4, rtol=1e-4)


def test_a_result_that_needs_a_gradient_takes_the_differentiable_reference(device):
    x, ups, up_biases, down_rows, down_bias, index = make_case(2, 32, 64, 16, "gelu_tanh", True, torch.float32, device, seed=5)
    x.requires_grad_()
    out = gathered_mlp_per_token(x, ups, up_biases, down_rows, down_bias, index)
    (grad,) = torch.autograd.grad(out.sum(), x)
    x64 = x.detach().double().requires_grad_()
    (want,) = torch.autograd.grad(masked_dense_mlp(x64, ups, up_biases, down_rows, down_bias, index, "gelu_tanh").sum(), x64)
    torch.testing.assert_close(grad.double(), want, atol=1e-4, rtol=1e-4)
    reference = gathered_mlp_per_token_reference(x.detach(), ups, up_biases, down_rows, down_bias, index, "gelu_tanh")
    torch.testing.assert_close(out.detach(), reference, atol=1e-5, rtol=1e-5)


def test_bad_arguments_say_what_was_expected():
    x, ups, up_biases, down_rows, down_bias, index = make_case(2, 32, 64, 16, "gelu_tanh", True, torch.float32, "cpu", seed=1)
    with pytest.raises(ValueError, match="activation must be one of gelu_tanh, swiglu, got 'relu'"):
        gathered_mlp_per_token(x, ups, up_biases, down_rows, down_bias, index, "relu")
    with pytest.raises(ValueError, match="swiglu takes 2 up projection"):
        gathered_mlp_per_token(x, ups, up_biases, down_rows, down_bias, index, "swiglu")
    with pytest.raises(ValueError, match=r"must be \(hidden, width\) = \(64, 32\)"):
        gathered_mlp_per_token(x, ups, up_biases, down_rows.t(), down_bias, index)
    with pytest.raises(ValueError, match="must all have a bias"):
        gathered_mlp_per_token(x, ups, up_biases, down_rows, None, index)
    with pytest.raises(ValueError, match=r"index must be \(tokens, kept\) with tokens = 2"):
        gathered_mlp_per_token(x, ups, up_biases, down_rows, down_bias, index[0])

