"""Quantizer accuracy: per-element error bounds, SQNR per format, and packed == fake round trips."""

from __future__ import annotations

import math

import pytest
import torch

from koi_quant import FORMATS, QuantizedTensor, fake_quantize, per_group, per_tile, quantize
from koi_quant.granularity import PER_ROW, PER_TENSOR, as_matrix, to_blocks
from koi_quant.quantize import block_codes

GRANULARITIES = {"tensor": PER_TENSOR, "row": PER_ROW, "group32": per_group(32), "tile8": per_tile(8), "tile128": per_tile(128)}
SHAPES = [(64, 96), (37, 53), (1, 300), (129, 257)]
# Minimum signal-to-quantization-noise ratio (dB) on Gaussian weights, per-row scales.
MIN_SQNR_DB = {"int8": 38, "int8_asym": 38, "fp8": 28, "fp8_e4m3": 28, "fp8_e5m2": 22, "int4": 15, "int4_asym": 17,
               "nf4": 18, "int2": 1.2, "int2_asym": 4.3, "ternary": 5.5, "binary": 4.0}


def sqnr_db(w: torch.Tensor, q: torch.Tensor) -> float:
    return 10 * math.log10(float((w.double() ** 2).sum() / ((w.double() - q.double()) ** 2).sum()))


def weights(shape, kind="normal", seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g)
    if kind == "heavy":  # Student-t-like tails, as trained weights have
        w = w / torch.rand(shape, generator=g).clamp_min(0.05).sqrt()
    return w * 0.02


@pytest.mark.parametrize("fmt", ["int2", "int4", "int8", "int2_asym", "int4_asym", "int8_asym"])
@pytest.mark.parametrize("gran", list(GRANULARITIES))
@pytest.mark.parametrize("shape", SHAPES)
def test_integer_formats_within_half_a_step(fmt, gran, shape):
    for kind in ("normal", "heavy"):
        w = weights(shape, kind)
        m = as_matrix(w)
        block = GRANULARITIES[gran].block_shape(*m.shape)
        blocks, mask = to_blocks(m, block)
        _, scale, _ = block_codes(blocks, mask, FORMATS[fmt])
        dq_blocks, _ = to_blocks(as_matrix(fake_quantize(w, fmt, GRANULARITIES[gran])), block)
        err = (blocks - dq_blocks).abs()
        assert bool((err <= scale / 2 * (1 + 1e-5) + 1e-12).all()), f"{fmt} {gran} {shape} {kind}"


@pytest.mark.parametrize("fmt", list(MIN_SQNR_DB))
def test_sqnr_per_format(fmt):
    w = weights((256, 512))
    assert sqnr_db(w, fake_quantize(w, fmt)) >= MIN_SQNR_DB[fmt]


def test_finer_scales_are_more_accurate():
    w = weights((256, 512), "heavy")
    coarse, fine = sqnr_db(w, fake_quantize(w, "int4", PER_TENSOR)), sqnr_db(w, fake_quantize(w, "int4", per_group(32)))
    assert fine > coarse + 3


def test_ternary_is_bitnet_absmean():
    w = weights((8, 64))
    scale = w.abs().mean(dim=1, keepdim=True)
    expected = torch.clamp(torch.round(w / scale), -1, 1) * scale
    torch.testing.assert_close(fake_quantize(w, "ternary"), expected)
    assert set(torch.unique(fake_quantize(w, "ternary") / scale).round().tolist()) <= {-1.0, 0.0, 1.0}


def test_binary_keeps_sign_and_mean_magnitude():
    w = weights((16, 48))
    q = fake_quantize(w, "binary")
    assert bool((torch.sign(q) == torch.where(w >= 0, 1.0, -1.0)).all())
    torch.testing.assert_close(q.abs(), w.abs().mean(dim=1, keepdim=True).expand_as(w))


def test_fp8_codes_are_torch_fp8_values():
    w = weights((32, 64))
    qt = quantize(w, "fp8_e4m3", PER_ROW)
    scale = w.abs().amax(dim=1, keepdim=True) / torch.finfo(torch.float8_e4m3fn).max
    expected = (w / scale).to(torch.float8_e4m3fn).float() * scale
    torch.testing.assert_close(qt.dequantize(), expected)


def test_all_zero_block_stays_zero():
    w = torch.zeros(4, 16)
    for fmt in FORMATS:
        assert bool((fake_quantize(w, fmt) == 0).all()) or fmt == "binary"


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("gran", ["row", "group32", "tile8"])
@pytest.mark.parametrize("shape", [(37, 53), (3, 5, 40)])
def test_packed_dequantize_equals_fake_quantize(fmt, gran, shape):
    w = weights(shape, "heavy", seed=3)
    qt = quantize(w, fmt, GRANULARITIES[gran])
    torch.testing.assert_close(qt.dequantize(), fake_quantize(w, fmt, GRANULARITIES[gran]), rtol=0, atol=0)
    assert qt.dequantize().shape == w.shape


def test_ternary_trit_packing_matches_plain_and_is_smaller():
    w = weights((96, 250))
    plain, trits = quantize(w, "ternary"), quantize(w, "ternary", trits=True)
    torch.testing.assert_close(plain.dequantize(), trits.dequantize(), rtol=0, atol=0)
    assert trits.packed.numel() == math.ceil(96 * 250 / 5) < plain.packed.numel() == 96 * 250 // 4


@pytest.mark.parametrize("fmt,bits_per_weight", [("binary", 1), ("ternary", 2), ("int2", 2), ("int4", 4), ("nf4", 4),
                                                 ("int8", 8), ("fp8", 8)])
def test_bytes_per_parameter(fmt, bits_per_weight):
    w = weights((512, 1024))
    qt = quantize(w, fmt, per_group(128))
    scales = 512 * 1024 // 128 * 4
    assert qt.nbytes == 512 * 1024 * bits_per_weight // 8 + scales


def test_state_dict_round_trip_through_safetensors(tmp_path):
    from safetensors.torch import load_file, save_file

    w = weights((33, 70))
    qt = quantize(w, "int4_asym", per_group(16))
    save_file(qt.state_dict("layer."), tmp_path / "q.safetensors")
    back = QuantizedTensor.from_state_dict(load_file(tmp_path / "q.safetensors"), "int4_asym", "layer.")
    torch.testing.assert_close(back.dequantize(), qt.dequantize(), rtol=0, atol=0)
