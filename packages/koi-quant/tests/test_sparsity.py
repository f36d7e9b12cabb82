"""2:4 weight sparsity: masks, schedule, straight-through gradient, compile parity, quantize_ composition."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from koi_quant import (
    MaskSchedule,
    NMSparse,
    QuantLinear,
    SparseLinear,
    SparseQuantLinear,
    dequantize_,
    effective_weight,
    fake_quantize,
    init_sparsity,
    masked_straight_through,
    nm_mask,
    quantize_,
    sparse_layers,
    sparsify_,
    update_masks_,
)
from koi_quant.sparsity import semi_structured_matmul


class TinyBlock(nn.Module):
    def __init__(self, width: int = 24, hidden: int = 40) -> None:
        super().__init__()
        self.attn = nn.Linear(width, width)
        self.mlp = nn.Sequential()
        self.mlp.c_fc = nn.Linear(width, hidden)
        self.mlp.act = nn.GELU()
        self.mlp.c_proj = nn.Linear(hidden, width)

    def forward(self, x):
        return self.mlp(self.attn(x))


@settings(max_examples=30, deadline=None)
@given(rows=st.integers(1, 9), groups=st.integers(1, 7), seed=st.integers(0, 2**16))
def test_mask_keeps_exactly_the_two_largest_of_every_four(rows, groups, seed):
    w = torch.randn(rows, 4 * groups, generator=torch.Generator().manual_seed(seed))
    mask = nm_mask(w, 2, 4)
    grouped, kept = w.abs().reshape(rows, groups, 4), mask.reshape(rows, groups, 4)
    assert (kept.sum(-1) == 2).all()
    smallest_kept = torch.where(kept, grouped, torch.inf).amin(-1)
    largest_pruned = torch.where(kept, -torch.inf, grouped).amax(-1)
    assert (smallest_kept >= largest_pruned).all()


def test_other_n_m_and_bad_patterns():
    w = torch.randn(3, 16)
    assert (nm_mask(w, 1, 4).reshape(3, 4, 4).sum(-1) == 1).all()
    assert (nm_mask(w, 4, 8).reshape(3, 2, 8).sum(-1) == 4).all()
    for bad in ("2-4", "4:2", "0:4", "two:four"):
        with pytest.raises(ValueError, match="N:M"):
            sparsify_(TinyBlock(), {"*": bad})
    with pytest.raises(ValueError, match="matches no Linear"):
        sparsify_(TinyBlock(), {"nothing.*": "2:4"})
    with pytest.raises(ValueError, match="groups of 4"):
        sparsify_(nn.Sequential(nn.Linear(6, 4)), {"0": "2:4"})


def test_sparsify_keeps_parameters_and_dense_entries_exclude():
    model = TinyBlock()
    fc_weight = model.mlp.c_fc.weight
    matched = sparsify_(model, {"attn": "dense", "*": "2:4"})
    assert matched == {"attn": ["attn"], "*": ["mlp.c_fc", "mlp.c_proj"]}
    assert type(model.attn) is nn.Linear and isinstance(model.mlp.c_fc, SparseLinear)
    assert model.mlp.c_fc.weight is fc_weight
    assert "mlp.c_fc.mask" in model.state_dict()


def test_schedule_is_dense_first_then_recomputes_every_k():
    model = TinyBlock()
    sparsify_(model, {"mlp.*": "2:4"})
    layer = model.mlp.c_fc
    schedule = MaskSchedule(dense_steps=3, recompute_every=4)
    x = torch.randn(5, 24)
    updates = []
    for step in range(12):
        updated = schedule.apply(model, step)
        updates.append(step) if updated else None
        if step < 3:
            assert layer.mask.all() and not layer.active
            torch.testing.assert_close(layer(x), nn.functional.linear(x, layer.weight, layer.bias))
        else:
            assert (layer.mask.reshape(-1, 4).sum(-1) == 2).all() and layer.active
        with torch.no_grad():  # the weights move between steps; masks follow only at update steps
            layer.weight.add_(torch.randn_like(layer.weight))
    assert updates == [3, 7, 11]


def test_forward_uses_masked_weight_and_gradient_is_straight_through():
    model = TinyBlock()
    sparsify_(model, {"mlp.c_fc": "2:4"})
    update_masks_(model)
    layer = model.mlp.c_fc
    x = torch.randn(7, 24)
    torch.testing.assert_close(layer(x), nn.functional.linear(x, layer.weight * layer.mask, layer.bias))
    upstream = torch.randn(7, 40)
    (layer(x) * upstream).sum().backward()
    torch.testing.assert_close(layer.weight.grad, upstream.t() @ x)  # the dense gradient, pruned entries included
    assert (layer.weight.grad[~layer.mask] != 0).all()


def test_sr_ste_decay_pulls_pruned_weights():
    model = TinyBlock()
    sparsify_(model, {"mlp.c_fc": "2:4"}, decay=0.5)
    update_masks_(model)
    layer = model.mlp.c_fc
    x = torch.randn(7, 24)
    layer(x).sum().backward()
    expected = torch.ones(7, 40).t() @ x + 0.5 * layer.weight.detach() * ~layer.mask
    torch.testing.assert_close(layer.weight.grad, expected)


def test_compiled_sparse_layer_has_the_eager_gradients():
    torch.manual_seed(0)
    model = TinyBlock()
    sparsify_(model, {"mlp.*": "2:4"}, decay=0.01)
    update_masks_(model)
    x = torch.randn(2, 5, 24)

    def grads(fn):
        model.zero_grad()
        fn(x).square().mean().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    eager = grads(model)
    compiled = grads(torch.compile(model, backend="aot_eager", fullgraph=True))
    for name in eager:
        torch.testing.assert_close(compiled[name], eager[name], rtol=1e-5, atol=1e-6, msg=name)


def test_semi_structured_op_gradients_and_compile_on_cpu():
    """The CUDA kernel's registered op computes the dense product off CUDA: its backward and fake are checked here."""
    x, w = torch.randn(6, 8, requires_grad=True), torch.randn(4, 8, requires_grad=True)
    torch.library.opcheck(semi_structured_matmul, (x, w))
    out = torch.compile(semi_structured_matmul, backend="aot_eager", fullgraph=True)(x, w)
    out.sum().backward()
    torch.testing.assert_close(x.grad, torch.ones(6, 4) @ w.detach())
    torch.testing.assert_close(w.grad, torch.ones(6, 4).t() @ x.detach())


def test_quantize_then_sparsify_masks_the_quantized_weight():
    model = TinyBlock()
    fc_weight = model.mlp.c_fc.weight
    quantize_(model, {"mlp.*": "int8"})
    sparsify_(model, {"mlp.c_fc": "2:4", "attn": "2:4"})
    layer = model.mlp.c_fc
    assert isinstance(layer, SparseQuantLinear) and isinstance(layer, QuantLinear) and layer.weight is fc_weight
    assert type(model.attn) is SparseLinear
    update_masks_(model)
    expected = fake_quantize(layer.weight.detach(), "int8") * layer.mask
    torch.testing.assert_close(effective_weight(layer), expected)
    x = torch.randn(3, 24)
    torch.testing.assert_close(layer(x), nn.functional.linear(x, expected, layer.bias))
    upstream = torch.randn(3, 40)
    (layer(x) * upstream).sum().backward()
    torch.testing.assert_close(layer.weight.grad, upstream.t() @ x)
    with pytest.raises(ValueError, match="quantize_ before sparsify_"):
        quantize_(model, {"attn": "int8"})


def test_learned_scales_still_train_under_a_mask():
    model = TinyBlock()
    quantize_(model, {"mlp.c_fc": "int4"}, learnable_scales=True)
    sparsify_(model, {"mlp.c_fc": "2:4"})
    update_masks_(model)
    model(torch.randn(3, 24)).sum().backward()
    assert model.mlp.c_fc.weight_scale.grad.abs().sum() > 0


def test_dequantize_folds_masks_into_plain_linears():
    torch.manual_seed(1)
    model = TinyBlock()
    quantize_(model, {"mlp.c_proj": "int8"})
    sparsify_(model, {"mlp.*": "2:4"})
    update_masks_(model)
    x = torch.randn(4, 24)
    before = model(x)
    assert sorted(dequantize_(model)) == ["mlp.c_fc", "mlp.c_proj"]
    assert type(model.mlp.c_fc) is nn.Linear and type(model.mlp.c_proj) is nn.Linear
    assert (model.mlp.c_fc.weight.reshape(-1, 4) != 0).sum(-1).max() <= 2
    torch.testing.assert_close(model(x), before)


class DoubledLinear(nn.Linear):
    """A Linear of some other package (here: one that doubles its output), which koi-quant does not know."""

    def forward(self, x):
        return 2 * super().forward(x)


class SparseDoubledLinear(DoubledLinear, NMSparse):
    @classmethod
    def build(cls, layer: DoubledLinear, n: int, m: int, kernel: str) -> SparseDoubledLinear:
        new = cls(layer.in_features, layer.out_features)
        new.weight, new.bias = layer.weight, layer.bias
        init_sparsity(new, n, m, kernel)
        return new

    def forward(self, x):
        return 2 * nn.functional.linear(x, masked_straight_through(self.weight, self.weight, self.mask), self.bias)


def test_another_packages_linear_joins_through_a_builder():
    torch.manual_seed(4)
    model = TinyBlock()
    model.mlp.c_fc = DoubledLinear(24, 40)
    with pytest.raises(ValueError, match="mlp.c_fc: cannot sparsify a DoubledLinear; expected one of nn.Linear, QuantLinear"):
        sparsify_(model, {"mlp.c_fc": "2:4"})
    weight = model.mlp.c_fc.weight
    sparsify_(model, {"mlp.*": "2:4"}, builders={DoubledLinear: SparseDoubledLinear.build})
    layer = model.mlp.c_fc
    assert isinstance(layer, SparseDoubledLinear) and layer.weight is weight and not layer.active
    assert [name for name, _ in sparse_layers(model)] == ["mlp.c_fc", "mlp.c_proj"]
    assert MaskSchedule(dense_steps=2, recompute_every=5).apply(model, 2)  # the schedule sets its mask like any other
    assert layer.active and torch.equal(layer.mask, nm_mask(weight))
    x = torch.randn(3, 24)
    torch.testing.assert_close(layer(x), 2 * nn.functional.linear(x, weight * layer.mask, layer.bias))
    with pytest.raises(ValueError, match="already sparse"):
        sparsify_(model, {"mlp.c_fc": "2:4"}, builders={DoubledLinear: SparseDoubledLinear.build})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the semi-structured kernels need CUDA")
@pytest.mark.parametrize("compiled", [False, True])
def test_kernel_path_matches_the_masked_path_on_cuda(compiled):
    """The sparse tensor-core forward (and its dense backward) against the masked dense layer, bf16 autocast."""
    torch.manual_seed(0)
    base = nn.Linear(256, 128, device="cuda")
    layers = {}
    for kernel in ("semi_structured", "masked", "auto"):
        layers[kernel] = nn.Sequential(SparseLinear.from_linear(nn.Linear(256, 128, device="cuda"), kernel=kernel))
        layer = layers[kernel][0]
        layer.weight, layer.bias = nn.Parameter(base.weight.detach().clone()), nn.Parameter(base.bias.detach().clone())
        update_masks_(layers[kernel])
    assert layers["semi_structured"][0].sparse_kernel
    assert not layers["masked"][0].sparse_kernel and not layers["auto"][0].sparse_kernel  # measured slower on Hopper
    x = torch.randn(4, 64, 256, device="cuda")
    results = {}
    for kernel, layer in layers.items():
        fn = torch.compile(layer) if compiled else layer
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = fn(x)
        out.float().square().mean().backward()
        results[kernel] = (out.float(), layer[0].weight.grad)
    torch.testing.assert_close(results["semi_structured"][0], results["masked"][0], rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(results["semi_structured"][1], results["masked"][1], rtol=2e-2, atol=2e-3)
    assert results["semi_structured"][1].abs().sum() > 0
