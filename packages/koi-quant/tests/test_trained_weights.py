"""Quantizers on real weights: a small byte-level language model trained here on real text.

Trained weights have outliers and row-to-row scale differences that random Gaussians lack; these
tests check the error bound and that quantizing the trained model costs little loss.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from koi_quant import fake_quantize, per_group, quantize, quantize_

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "tools"))  # the data helper is repository tooling, not an installed package
from koi_data import data_root  # noqa: E402

CONTEXT = 8


def _text() -> bytes:
    """$KOI_SHARED_DATA, ../shared/data, or the same file fetched into a cache (tools/koi_data.py)."""
    return (data_root(["corpus/pydocs-val.txt"]) / "corpus" / "pydocs-val.txt").read_bytes()[:400_000]


class ByteMLP(nn.Module):
    """Predicts the next byte from the previous eight: small, but its weights are really trained."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(256, 32)
        self.hidden = nn.Linear(CONTEXT * 32, 256)
        self.out = nn.Linear(256, 256)

    def forward(self, ctx: torch.Tensor) -> torch.Tensor:
        return self.out(F.gelu(self.hidden(self.embed(ctx).flatten(1))))


def _batches(data: torch.Tensor, g: torch.Generator, size: int = 256):
    starts = torch.randint(0, len(data) - CONTEXT - 1, (size,), generator=g)
    ctx = torch.stack([data[s : s + CONTEXT] for s in starts.tolist()])
    return ctx, data[starts + CONTEXT]


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    data = torch.tensor(list(_text()), dtype=torch.long)
    train, val = data[:350_000], data[350_000:]
    model = ByteMLP()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(400):
        ctx, target = _batches(train, g)
        loss = F.cross_entropy(model(ctx), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    val_batch = _batches(val, torch.Generator().manual_seed(1), size=4096)
    return model.eval(), val_batch


def _val_loss(model, batch) -> float:
    with torch.no_grad():
        return F.cross_entropy(model(batch[0]), batch[1]).item()


def test_model_really_learned(trained):
    model, batch = trained
    assert _val_loss(model, batch) < 2.9  # uniform over bytes would be ln 256 = 5.55


@pytest.mark.parametrize("fmt", ["int8", "int4", "int4_asym", "int2"])
def test_half_step_bound_on_trained_weights(trained, fmt):
    model, _ = trained
    for w in (model.hidden.weight.detach(), model.out.weight.detach()):
        q = fake_quantize(w, fmt, per_group(64))
        qmax = {"int8": 127, "int4": 7, "int2": 1}.get(fmt)
        groups = w.view(w.shape[0], -1, 64)
        if qmax:
            step = groups.abs().amax(-1, keepdim=True) / qmax
        else:
            step = (groups.amax(-1, keepdim=True).clamp(min=0) - groups.amin(-1, keepdim=True).clamp(max=0)) / 15
        err = (groups - q.view_as(groups)).abs()
        assert bool((err <= step / 2 * (1 + 1e-5) + 1e-9).all())


@pytest.mark.parametrize("fmt,max_increase", [("int8", 0.001), ("fp8", 0.002), ("int4", 0.02), ("nf4", 0.02),
                                              ("ternary", 0.5), ("binary", 0.4)])
def test_quantized_trained_model_keeps_its_loss(trained, fmt, max_increase):
    model, batch = trained
    base = _val_loss(model, batch)
    quantized = ByteMLP()
    quantized.load_state_dict(model.state_dict())
    quantize_(quantized, {"hidden": fmt, "out": fmt}, group_size=64)
    increase = _val_loss(quantized.eval(), batch) / base - 1
    assert increase < max_increase, f"{fmt}: loss {base:.4f} -> +{increase:.2%}"


def test_packed_storage_of_trained_weights(trained):
    model, _ = trained
    w = model.hidden.weight.detach()
    for fmt, bits in (("int4", 4), ("ternary", 2), ("binary", 1)):
        qt = quantize(w, fmt, per_group(64))
        assert qt.nbytes == w.numel() * bits // 8 + w.numel() // 64 * 4
        torch.testing.assert_close(qt.dequantize(), fake_quantize(w, fmt, per_group(64)), rtol=0, atol=0)
