"""Quantization warm-up: full precision first, then the plan's formats; the run ends quantized."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config

from koi_quant import QuantLinear
from koi_train import ConfigError, Trainer, load_dict
from koi_train.quant_warmup import quantization_strength


def test_strength_schedule_ends_quantized():
    steps = 100
    assert [quantization_strength(s, steps, 0.5, 0.0) for s in (0, 48, 49, 99)] == [0.0, 0.0, 1.0, 1.0]
    ramp = [quantization_strength(s, steps, 0.3, 0.2) for s in range(steps)]
    assert ramp[:29] == [0.0] * 29 and ramp[49:] == [1.0] * 51
    assert all(a <= b for a, b in zip(ramp, ramp[1:]))  # never backwards
    assert quantization_strength(steps - 1, steps, 0.6, 0.4) == 1.0  # the last step trains the quantized model


def test_run_with_warmup_trains_latent_weights_first_and_ends_quantized(prepared, tmp_path):
    raw = tiny_config(prepared, tmp_path, train={"steps": 20},
                      precision={"plan": {"transformer.h.*": "ternary"}, "quantize_after": 0.4, "quantize_ramp": 0.3})
    trainer = Trainer(load_dict(raw), tmp_path / "run", log=lambda *_: None)
    assert any("quantization warm-up" in line for line in trainer.parts.report)
    layers = [m for m in trainer.parts.model.modules() if isinstance(m, QuantLinear)]
    seen = []
    warmup = trainer.parts.quant_warmup
    original = warmup.before_step

    def before_step(step):
        original(step)
        seen.append(float(layers[0].strength))

    warmup.before_step = before_step
    trainer.fit()
    assert seen[0] == 0.0 and 0.0 < seen[10] < 1.0 and seen[-1] == 1.0
    for layer in layers:  # what the final eval and the checkpoint's users see is the quantized layer
        assert float(layer.strength) == 1.0
        plain = QuantLinear.from_linear(torch.nn.Linear(layer.in_features, layer.out_features), format="ternary")
        plain.weight = layer.weight
        assert torch.equal(layer.compute_weight(), plain.compute_weight())


@pytest.mark.parametrize("precision,field", [
    ({"plan": {"transformer.h.*": "int4"}, "quantize_after": 0.8, "quantize_ramp": 0.3}, "precision.quantize_ramp"),
    ({"plan": {"transformer.h.*": "bf16"}, "quantize_after": 0.5}, "precision.quantize_after"),
])
def test_warmup_that_cannot_end_quantized_is_refused(prepared, tmp_path, precision, field):
    with pytest.raises(ConfigError) as err:
        Trainer(load_dict(tiny_config(prepared, tmp_path, precision=precision)), tmp_path / "run", log=lambda *_: None)
    assert err.value.path == field
