"""fp8 linear (three scaled matmuls) against float64 and against its own quantization model."""

from __future__ import annotations

import pytest
import torch

from koi_kernels import Fp8Linear, SparseFp8Linear, fp8_linear
from koi_quant import sparse_layers, sparsify_, update_masks_


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
    # e4m3 keeps 3 mantissa bits (about 3% per value); over sums of many products the relative
    # error of the result is a few percent.
    assert y.dtype == torch.bfloat16 and dx.dtype == torch.bfloat16 and dw.dtype == torch.float32
    assert rel_error(y, y64) < 0.05
    assert rel_error(dx, rx) < 0.06
    assert rel_error(dw, rw) < 0.06
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


@pytest.mark.parametrize("m,k,n", [(37, 200, 70), (64, 256, 128), (16, 1600, 136)])
def test_tile_scaled_matmul_is_exact_on_its_quantized_operands(m, k, n, device):
    """The kernel multiplies the tile-scaled e4m3 operands exactly (up to the tensor cores' accumulation), partial tiles included."""
    from koi_kernels.ops.fp8_linear import TILE, dequantize_tiles, quantize_tiles, tile_matmul

    g = torch.Generator().manual_seed(m * n + k)
    a = torch.randn(m, k, generator=g) * torch.logspace(-2, 2, k)  # magnitudes spread across the tiles
    b = torch.randn(n, k, generator=g) * 0.02
    aq, a_scale = quantize_tiles(a, 1)
    bq, b_scale = quantize_tiles(b, TILE)
    assert a_scale.shape == (m, -(-k // TILE)) and b_scale.shape == (n, -(-k // TILE))
    got = tile_matmul(aq.to(device), a_scale.to(device), bq.to(device), b_scale.to(device), torch.float32)
    want = dequantize_tiles(aq, a_scale).double() @ dequantize_tiles(bq, b_scale).double().T
    if device.type == "cuda":
        # Hopper's fp8 tensor cores add the products of one 128-long dot with fewer than fp32's
        # mantissa bits (DeepSeek-V3 measured about 14); the kernel promotes to fp32 once per tile,
        # so the error stays near 2^-14 of the result, far under a wrong scale's error (order 1).
        assert rel_error(got.cpu(), want) < 2e-4
    else:
        torch.testing.assert_close(got.cpu().double(), want, atol=1e-5, rtol=1e-5)
    # the 128x128 weight blocks: rows of one block share a scale
    assert torch.equal(b_scale[: min(n, TILE)], b_scale[:1].expand(min(n, TILE), -1))


def test_tile_scaling_layer_close_to_float64(device):
    g = torch.Generator().manual_seed(7)
    m, k, n = 48, 512, 96
    x = torch.randn(m, k, generator=g).to(device, torch.bfloat16).requires_grad_()
    w = (torch.randn(n, k, generator=g) * 0.02).to(device).requires_grad_()
    dy = torch.randn(m, n, generator=g).to(device, torch.bfloat16)
    y = fp8_linear(x, w, scaling="tile")
    dx, dw = torch.autograd.grad(y, [x, w], dy)
    x64, w64 = (t.detach().double().requires_grad_() for t in (x, w))
    y64 = x64 @ w64.T
    rx, rw = torch.autograd.grad(y64, [x64, w64], dy.double())
    # e4m3 everywhere (gradients too): about 3% per value, less over sums of products
    assert rel_error(y, y64) < 0.05 and rel_error(dx, rx) < 0.06 and rel_error(dw, rw) < 0.06


def test_an_outlier_coarsens_only_its_own_tile():
    """Past e4m3's range (an outlier 1e5 times the rest), a row scale pushes the row into subnormals."""
    from koi_kernels.ops.fp8_linear import E4M3, dequantize_tiles, quantize_tiles, to_fp8

    x = torch.randn(8, 512, generator=torch.Generator().manual_seed(3)) + 3.0  # away from 0: relative errors are meaningful
    x[:, 5] = 1e5
    by_tile = dequantize_tiles(*quantize_tiles(x, 1))
    codes, scale = to_fp8(x, 0, E4M3)
    by_row = codes.float() * scale
    outside = slice(128, None)  # the tiles without the outlier
    tile_error = ((by_tile - x).abs() / x.abs())[:, outside].max()
    row_error = ((by_row - x).abs() / x.abs())[:, outside].max()
    assert tile_error <= 2**-4 and row_error > 0.2


def test_unknown_scaling_is_refused():
    with pytest.raises(ValueError, match="scaling: expected one of"):
        fp8_linear(torch.randn(2, 4), torch.randn(3, 4), scaling="block")


def test_row_fused_is_the_row_op_bit_for_bit(device):
    """Same quantization, same matmuls, written as traceable torch ops: eager results are identical."""
    g = torch.Generator().manual_seed(11)
    x = torch.randn(2, 48, 256, generator=g).to(device, torch.bfloat16)
    w = (torch.randn(96, 256, generator=g) * 0.02).to(device)
    b = torch.randn(96, generator=g).to(device)
    dy = torch.randn(2, 48, 96, generator=g).to(device, torch.bfloat16)
    results = []
    for scaling in ("row", "row-fused"):
        xs, ws, bs = (t.clone().requires_grad_() for t in (x, w, b))
        y = fp8_linear(xs, ws, bs, scaling=scaling)
        results.append((y, *torch.autograd.grad(y, [xs, ws, bs], dy)))
    for got, want in zip(*results):
        assert got.dtype == want.dtype and torch.equal(got, want)


@pytest.mark.parametrize("scaling", ["row", "row-fused", "tile"])
def test_compiled_layer_has_the_eager_gradients(scaling, device, monkeypatch):
    """torch.compile keeps the fp8 op whole: same output and gradients as eager (Inductor on the card)."""
    if device.type != "cuda":
        monkeypatch.setenv("KOI_KERNELS", "torch")  # the interpreter cannot run under a compiled graph
    g = torch.Generator().manual_seed(5)
    x = torch.randn(64, 256, generator=g).to(device, torch.bfloat16)
    w = (torch.randn(128, 256, generator=g) * 0.02).to(device)
    dy = torch.randn(64, 128, generator=g).to(device, torch.bfloat16)

    def run(fn):
        xs, ws = x.clone().requires_grad_(), w.clone().requires_grad_()
        y = fn(xs, ws)
        return (y, *torch.autograd.grad(y, [xs, ws], dy))

    def layer(a, b):
        return fp8_linear(a, b, scaling=scaling)

    torch._dynamo.reset()
    eager = run(layer)
    compiled = run(torch.compile(layer, fullgraph=True, backend="inductor" if device.type == "cuda" else "aot_eager"))
    for got, want in zip(compiled, eager):
        assert rel_error(got, want) < 1e-3


@pytest.mark.parametrize("scaling", ["row", "row-fused", "tile"])
def test_sparse_fp8_layer_multiplies_the_masked_weight_and_trains_the_pruned_ones(scaling, device):
    """sparsify_ with the fp8 builder: forward is fp8_linear of weight * mask; every weight gets fp8_linear's gradient."""
    torch.manual_seed(3)
    model = torch.nn.Sequential(Fp8Linear.from_linear(torch.nn.Linear(256, 128).to(device), scaling))
    weight = model[0].weight
    sparsify_(model, {"0": "2:4"}, builders={Fp8Linear: SparseFp8Linear.from_fp8_linear})
    layer = model[0]
    assert isinstance(layer, SparseFp8Linear) and layer.weight is weight and layer.scaling == scaling
    assert sparse_layers(model) == [("0", layer)] and update_masks_(model) == 1
    assert layer.active and layer.mask.reshape(128, 64, 4).sum(-1).eq(2).all()  # a real 2:4 mask
    x = torch.randn(64, 256, device=device, dtype=torch.bfloat16)
    dy = torch.randn(64, 128, device=device, dtype=torch.bfloat16)
    y = layer(x)
    (dw,) = torch.autograd.grad(y, [weight], dy)
    masked = (weight.detach() * layer.mask).requires_grad_()
    y_ref = fp8_linear(x, masked, layer.bias, scaling=scaling)
    (dw_ref,) = torch.autograd.grad(y_ref, [masked], dy)
    torch.testing.assert_close(y, y_ref)  # the masked weight's product (the unmasked one differs by O(1))
    torch.testing.assert_close(dw, dw_ref)
    assert dw[~layer.mask].abs().sum() > 0  # pruned weights still learn (straight through)
    assert "mask" in layer.state_dict()


def test_sparse_fp8_layer_refuses_the_semi_structured_kernel():
    model = torch.nn.Sequential(Fp8Linear.from_linear(torch.nn.Linear(64, 32)))
    with pytest.raises(ValueError, match="masked dense fp8 matmuls; expected kernel 'auto' or 'masked'"):
        sparsify_(model, {"0": "2:4"}, kernel="semi_structured", builders={Fp8Linear: SparseFp8Linear.from_fp8_linear})
    with pytest.raises(ValueError, match="cannot sparsify a Fp8Linear; expected one of nn.Linear, QuantLinear"):
        sparsify_(model, {"0": "2:4"})
