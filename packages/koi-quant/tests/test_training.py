"""Straight-through gradients, QuantLinear and quantize_ on a small model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from koi_quant import (
    QuantLinear,
    fake_quantize,
    fake_quantize_ste,
    memory_table,
    quantize_,
    quantize_activations_int8,
    set_quantization_strength,
)


def test_ste_gradient_is_the_identity_even_for_clipped_weights():
    """Scales come from the weights, so an outlier is clipped only by its own block's statistic: it keeps learning."""
    w = torch.tensor([[0.1, -0.2, 0.05, 3.0, -0.15, 0.12, -0.08, 0.02]], requires_grad=True)
    q = fake_quantize_ste(w, "ternary")
    upstream = torch.arange(1.0, 9.0).reshape(1, 8)
    q.backward(upstream)
    assert torch.equal(w.grad, upstream)
    assert q[0, 3] < 3.0  # the outlier is clipped to the ternary level, yet its gradient passes


@pytest.mark.parametrize("fmt", ["int8", "int4", "ternary", "binary", "fp8"])
def test_compiled_quantized_layer_has_the_eager_gradients(fmt):
    """torch.compile must train the model eager trains: same output, same weight and input gradients.

    CUDA uses Inductor under bf16 autocast, as training does (a custom autograd.Function once gave
    wrong weight gradients there); the CPU traces the same joint graph with AOTAutograd.
    """
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    torch.manual_seed(0)
    layer = QuantLinear.from_linear(nn.Linear(96, 80).to(device), format=fmt)
    x = torch.randn(4, 16, 96, device=device)
    upstream = torch.randn(4, 16, 80, device=device)

    def grads(fn):
        layer.zero_grad(set_to_none=True)
        inputs = x.clone().requires_grad_()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            out = fn(inputs)
        (out.float() * upstream).sum().backward()
        return out.float(), inputs.grad, layer.weight.grad, layer.bias.grad

    torch._dynamo.reset()
    eager = grads(layer)
    compiled = grads(torch.compile(layer, backend="inductor" if cuda else "aot_eager"))
    for got, want in zip(compiled, eager):
        assert float((got.detach() - want).norm() / want.norm()) < (1e-2 if cuda else 1e-6)


def test_ste_forward_equals_fake_quantize():
    w = torch.randn(24, 40) * 0.02
    for fmt in ("int4", "int8_asym", "binary", "fp8"):
        torch.testing.assert_close(fake_quantize_ste(w, fmt), fake_quantize(w, fmt), rtol=0, atol=0)


def test_int8_absmax_passes_gradient_everywhere():
    w = (torch.randn(16, 32) * 0.02).requires_grad_()
    fake_quantize_ste(w, "int8").sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))


def test_activation_int8_per_token():
    x = torch.randn(4, 7, 64, requires_grad=True)
    y = quantize_activations_int8(x)
    step = x.detach().abs().amax(-1, keepdim=True) / 127
    assert bool(((x.detach() - y.detach()).abs() <= step / 2 + 1e-7).all())
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 32)
        self.attn = nn.ModuleDict({"qkv": nn.Linear(32, 96), "out": nn.Linear(32, 32)})
        self.mlp = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32))
        self.lm_head = nn.Linear(32, 50, bias=False)
        self.lm_head.weight = self.embed.weight

    def forward(self, idx):
        x = self.embed(idx)
        x = x + self.attn["out"](self.attn["qkv"](x)[..., :32])
        return self.lm_head(x + self.mlp(x))


def test_quantize_swaps_by_pattern_and_leaves_the_rest():
    model = Tiny()
    before = {n: p.clone() for n, p in model.named_parameters()}
    swapped = quantize_(model, {"attn.*": "int8", "mlp.*": "ternary", "lm_head": "bf16"})
    assert swapped == {"attn.*": ["attn.qkv", "attn.out"], "mlp.*": ["mlp.0", "mlp.2"], "lm_head": ["lm_head"]}
    assert isinstance(model.attn["qkv"], QuantLinear) and model.attn["qkv"].format.name == "int8"
    assert isinstance(model.mlp[2], QuantLinear) and model.mlp[2].format.name == "ternary"
    assert type(model.lm_head) is nn.Linear and model.lm_head.weight is model.embed.weight
    after = dict(model.named_parameters())
    assert before.keys() == after.keys()  # same names: checkpoints and optimizers are unaffected
    assert all(torch.equal(before[n], after[n]) for n in before)


def test_quantized_model_trains_with_latent_weights():
    torch.manual_seed(0)
    model = Tiny()
    quantize_(model, {"attn.*": "int4", "mlp.*": "ternary"})
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    idx = torch.randint(0, 50, (8, 16))
    losses = []
    for _ in range(60):
        loss = nn.functional.cross_entropy(model(idx[:, :-1]).flatten(0, 1), idx[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0]
    assert model.mlp[0].weight.dtype == torch.float32  # the latent weight stays in float


def test_pattern_matching_nothing_is_an_error():
    with pytest.raises(ValueError, match=r"'blocks\.\*' matches no Linear module"):
        quantize_(Tiny(), {"attn.*": "int8", "blocks.*": "int4"})
    with pytest.raises(ValueError, match="unknown format 'int3'"):
        quantize_(Tiny(), {"attn.*": "int3"})


def test_memory_table_counts_each_parameter_once():
    model = Tiny()
    quantize_(model, {"mlp.*": "int4"})
    table = memory_table(model)
    total = sum(p.numel() for p in model.parameters())
    assert f"{total:,}" in table.splitlines()[-1]
    int4_row = next(line for line in table.splitlines() if line.startswith("int4"))
    assert f"{32 * 64 * 2:,}" in int4_row


def test_tile_scales_and_activation_quantization_through_quantize_():
    model = Tiny()
    quantize_(model, {"mlp.*": "fp8"}, tile=(8, 8), quantize_activations=True)
    layer = model.mlp[0]
    assert layer.granularity.kind == "tile" and layer.granularity.tile == (8, 8) and layer.quantize_activations
    x = torch.randn(3, 32)
    expected = nn.functional.linear(quantize_activations_int8(x), fake_quantize(layer.weight, "fp8", layer.granularity), layer.bias)
    torch.testing.assert_close(layer(x), expected)
    with pytest.raises(ValueError, match="not both"):
        quantize_(Tiny(), {"mlp.*": "int4"}, group_size=32, tile=(8, 8))


def test_learned_scale_gradients_match_lsq():
    from koi_quant import learned_scale_quantize

    w = torch.tensor([[0.10, -0.26, 0.03, 0.90]], requires_grad=True)
    s = torch.tensor([[0.1]], requires_grad=True)
    out = learned_scale_quantize(w, s, 7)  # int4: codes in [-7, 7]
    torch.testing.assert_close(out, torch.tensor([[0.1, -0.3, 0.0, 0.7]]))
    out.sum().backward()
    assert w.grad.tolist() == [[1.0, 1.0, 1.0, 0.0]]  # 0.90 / 0.1 = 9 > 7 is clipped
    # d out / d s: (round(r) - r) inside, the clamped code outside; times 1/sqrt(4 * 7)
    expected = ((1 - 1.0) + (-3 + 2.6) + (0 - 0.3) + 7) / (4 * 7) ** 0.5
    assert abs(s.grad.item() - expected) < 1e-5


def test_learnable_scales_train_and_are_parameters():
    torch.manual_seed(0)
    model = Tiny()
    quantize_(model, {"mlp.*": "int4", "attn.*": "ternary"}, learnable_scales=True)
    scales = [n for n, _ in model.named_parameters() if n.endswith("weight_scale")]
    assert scales == ["attn.qkv.weight_scale", "attn.out.weight_scale", "mlp.0.weight_scale", "mlp.2.weight_scale"]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    idx = torch.randint(0, 50, (8, 16))
    start = model.mlp[0].weight_scale.detach().clone()
    losses = []
    for _ in range(60):
        loss = nn.functional.cross_entropy(model(idx[:, :-1]).flatten(0, 1), idx[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0]
    assert not torch.equal(model.mlp[0].weight_scale, start)
    with pytest.raises(ValueError, match="learnable scales need"):
        quantize_(Tiny(), {"mlp.*": "fp8"}, learnable_scales=True)


@pytest.mark.parametrize("learnable", [False, True])
def test_dequantize_gives_plain_linears_with_the_same_outputs(learnable):
    torch.manual_seed(0)
    model = Tiny()
    quantize_(model, {"attn.*": "int4", "mlp.*": "ternary"}, learnable_scales=learnable)
    idx = torch.randint(0, 50, (2, 9))
    want = model(idx)
    from koi_quant import dequantize_

    assert dequantize_(model) == ["attn.qkv", "attn.out", "mlp.0", "mlp.2"]
    assert not any(isinstance(m, QuantLinear) for m in model.modules())
    torch.testing.assert_close(model(idx), want, rtol=0, atol=0)
    with pytest.raises(ValueError, match="int8 activation quantization"):
        other = Tiny()
        quantize_(other, {"mlp.*": "int4"}, quantize_activations=True)
        dequantize_(other)


def test_a_kernel_factory_runs_the_formats_it_names_with_their_settings():
    """quantize_ picks layers and settings; a kernel factory (fp8 matmuls from koi-kernels, say) runs them."""
    seen: list[QuantLinear] = []

    class Runner(nn.Module):
        def __init__(self, layer: QuantLinear) -> None:
            super().__init__()
            self.layer = layer

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.layer(x)

    def factory(layer: QuantLinear) -> nn.Module:
        seen.append(layer)
        return Runner(layer)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    x = torch.randn(4, 16)
    quantize_(model, {"0": "int8", "2": "int4"}, group_size=8, kernels={"int4": factory})
    assert isinstance(model[0], QuantLinear) and isinstance(model[2], Runner)
    assert [layer.format.name for layer in seen] == ["int4"] and seen[0].granularity.kind == "group"
    assert model[2].layer.weight is seen[0].weight  # the same Parameter travels into the kernel's module
    model(x).sum().backward()
    assert model[2].layer.weight.grad is not None

    def refuse(layer: QuantLinear) -> nn.Module:
        raise ValueError("this kernel has no group scales")

    with pytest.raises(ValueError, match="no group scales"):
        quantize_(nn.Sequential(nn.Linear(16, 8)), {"0": "int4"}, group_size=8, kernels={"int4": refuse})


def test_quantization_strength_blends_latent_and_quantized_weights_with_identity_gradient():
    torch.manual_seed(0)
    plain = QuantLinear.from_linear(nn.Linear(64, 32), format="ternary")
    blended = QuantLinear.from_linear(nn.Linear(64, 32), format="ternary")
    blended.load_state_dict(plain.state_dict())
    assert set_quantization_strength(nn.Sequential(blended), 1.0) == 1
    assert "strength" not in blended.state_dict()  # a schedule's state, not the model's: checkpoints stay as they were
    x = torch.randn(8, 64)
    assert torch.equal(blended(x), plain(x))  # at 1.0 exactly the quantized layer (lerp is exact at its end)
    latent = blended.weight.detach().double()
    quantized = plain.compute_weight().detach().double()
    for strength in (0.0, 0.25, 0.5):
        set_quantization_strength(blended, strength)
        want = latent + strength * (quantized - latent)
        torch.testing.assert_close(blended.compute_weight().double(), want, rtol=0, atol=1e-6)
        blended.weight.grad = None
        blended.compute_weight().sum().backward()
        assert torch.equal(blended.weight.grad, torch.ones_like(blended.weight))  # straight through at every strength


def test_compiled_layer_follows_a_changing_strength():
    """The strength is a buffer changed in place: a compiled model must see each new value."""
    torch.manual_seed(0)
    layer = QuantLinear.from_linear(nn.Linear(32, 16, bias=False), format="int4")
    set_quantization_strength(layer, 0.0)
    compiled = torch.compile(layer, backend="aot_eager")
    x = torch.randn(4, 32)
    torch.testing.assert_close(compiled(x), x @ layer.weight.detach().T)
    set_quantization_strength(layer, 1.0)
    torch.testing.assert_close(compiled(x), x @ layer.compute_weight().detach().T)
    assert not torch.allclose(x @ layer.weight.detach().T, x @ layer.compute_weight().detach().T)
