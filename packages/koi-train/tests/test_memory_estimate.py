"""The remat estimate orders the modes correctly and matches the counted tensors of a GPT-2 block."""

from __future__ import annotations

import pytest

from koi_train.memory_estimate import activation_bytes, remat_report


def test_modes_save_memory_in_order():
    sizes = [activation_bytes(m, batch=32, seq=1024, width=768, layers=12) for m in ("none", "ffn", "selective", "full")]
    assert sizes == sorted(sizes, reverse=True)
    # GPT-2 124M, B=32, T=1024, bf16: 16 named values of B*T*C per layer and 1.6 measured beyond them -> 9.9 GiB
    assert sizes[0] == pytest.approx(12 * 17.6 * 32 * 1024 * 768 * 2)


def test_report_names_mode_and_saving():
    line = remat_report("full", batch=8, seq=1024, width=1600, layers=48, bytes_per_value=2)
    assert line.startswith("remat full: activations about") and "saves 9" in line


def test_run_estimate_counts_what_the_optimizers_really_hold():
    """Weights and optimizer state of the estimate are the bytes the tensors really take after a step."""
    import torch

    from koi_kernels import AdamW8bit
    from koi_train.config import ModelConfig
    from koi_train.memory_estimate import estimate_run_memory
    from koi_train.models import build_model

    model = build_model(ModelConfig(arch="gpt2", preset="gpt2-tiny"))
    params = list(model.parameters())
    for name, optimizer in (("adamw", torch.optim.AdamW(params)), ("adamw8bit", AdamW8bit(params))):
        for p in params:
            p.grad = torch.ones_like(p)
        optimizer.step()
        held = sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t) and t.ndim)
        estimate = estimate_run_memory(model, optimizer=name, in_backward=False, remat="none", batch=2, seq=128, compute_bytes=4,
                                       residual_bytes=4)
        assert abs(estimate.optimizer - held) <= 0.01 * held, name
        assert estimate.weights == sum(p.numel() * 4 for p in params) == estimate.gradients
    stepped_in_backward = estimate_run_memory(model, optimizer="adamw8bit", in_backward=True, remat="full", batch=2, seq=128,
                                              compute_bytes=4, residual_bytes=4)
    # one block's gradients at a time, and the output head's (tied: the token embedding's), held from the start
    assert stepped_in_backward.gradients == sum(p.numel() * 4 for p in model.blocks[0].parameters()) + model.output_head.weight.numel() * 4
    assert stepped_in_backward.activations < estimate.activations
    assert stepped_in_backward.line().startswith(f"memory: about {stepped_in_backward.total / 2**30:.2f} GiB peak")


def test_a_run_reports_and_records_its_estimate(prepared, tmp_path):
    import json

    from conftest import tiny_config

    from koi_train import Trainer, load_dict

    lines: list[str] = []
    trainer = Trainer(load_dict(tiny_config(prepared, tmp_path, train={"steps": 2})), tmp_path / "run", log=lines.append)
    trainer.fit()
    assert any(line.startswith("memory: about") for line in lines)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    estimate = next(r for r in records if r["kind"] == "memory_estimate")
    parts = ("weights", "gradients", "optimizer", "activations", "loss")
    assert estimate["total_gib"] == pytest.approx(sum(estimate[f"{k}_gib"] for k in parts) - estimate["not_together_gib"])


def test_fp32_weights_keep_the_residual_stream_in_fp32():
    """Under autocast the LN inputs stay in the weights' dtype: 2 of a block's kept values are 4 bytes wide
    (the other 14, and the 1.6 measured beyond them, in bf16)."""
    btc = 32 * 1024 * 768
    assert activation_bytes("none", batch=32, seq=1024, width=768, layers=12, bytes_per_value=2, residual_bytes=4) == \
        pytest.approx(12 * (2 * 4 + 15.6 * 2) * btc)
    # full remat keeps one residual-stream tensor per layer, plus one block's worth while it is recomputed
    assert activation_bytes("full", batch=32, seq=1024, width=768, layers=12, bytes_per_value=2, residual_bytes=4) == \
        (12 * 4 + 2 * 4 + 14 * 2) * btc


def test_block_shapes_move_the_estimate_the_way_their_tensors_do():
    """SwiGLU at 8C/3 keeps as much as GPT-2's 4C MLP; fewer k/v heads keep less; QK-norm keeps more;
    and every remat mode still orders the same way with those shifts."""
    import torch

    from koi_train.config import ModelConfig
    from koi_train.memory_estimate import BlockUnits
    from koi_train.models import build_model

    def units(**spec) -> BlockUnits:
        with torch.device("meta"):
            return BlockUnits.of(build_model(ModelConfig(**spec)).spec)

    gpt2 = units(arch="gpt2", preset="gpt2-124M")
    llama = units(arch="llama", preset="llama-124M", n_kv_head=12)
    assert gpt2 == BlockUnits(0, 0) and llama.mlp == pytest.approx(0) and llama.attention == pytest.approx(0)
    assert units(arch="llama", preset="llama-124M", n_kv_head=4).attention == pytest.approx(2 * (4 / 12 - 1))
    qk = units(arch="llama", preset="llama-124M", n_kv_head=12, qk_norm=True)
    assert qk.attention > 0
    for block in (gpt2, qk, units(arch="llama", preset="llama-124M", n_kv_head=4)):
        sizes = [activation_bytes(m, batch=8, seq=1024, width=768, layers=12, block=block) for m in ("none", "ffn", "selective", "full")]
        assert sizes == sorted(sizes, reverse=True), block
    plain = activation_bytes("none", batch=8, seq=1024, width=768, layers=12)
    with_qk_norm = activation_bytes("none", batch=8, seq=1024, width=768, layers=12, block=qk)
    assert with_qk_norm == plain + int(qk.attention * 12 * 8 * 1024 * 768 * 2)


def test_fused_fp8_matmuls_drop_the_bf16_inputs_of_the_projections():
    """Compiled row-fused fp8 keeps neither norm output nor the down projection's input: 1 + 1 + 4 units
    per GPT-2 layer (1 + 1 + hidden/width for SwiGLU), and every remat mode still orders the same way."""
    import torch

    from koi_train.config import ModelConfig
    from koi_train.memory_estimate import BlockUnits
    from koi_train.models import build_model

    with torch.device("meta"):
        gpt2 = build_model(ModelConfig(arch="gpt2", preset="gpt2-124M")).spec
        llama = build_model(ModelConfig(arch="llama", preset="llama-124M", n_kv_head=12)).spec
    assert BlockUnits.of(gpt2, fp8_fused_inputs=True) == BlockUnits(-1, -5)
    swiglu = BlockUnits.of(llama, fp8_fused_inputs=True)
    assert swiglu.attention == -1 and swiglu.mlp == pytest.approx(BlockUnits.of(llama).mlp - 1 - llama.mlp_hidden / llama.n_embd)
    block = BlockUnits.of(gpt2, fp8_fused_inputs=True)
    btc = 32 * 1024 * 768
    plain = activation_bytes("none", batch=32, seq=1024, width=768, layers=12, bytes_per_value=2, residual_bytes=4)
    fused = activation_bytes("none", batch=32, seq=1024, width=768, layers=12, bytes_per_value=2, residual_bytes=4, block=block)
    assert plain - fused == 12 * 6 * 2 * btc
    sizes = [activation_bytes(m, batch=32, seq=1024, width=768, layers=12, block=block) for m in ("none", "ffn", "selective", "full")]
    assert sizes == sorted(sizes, reverse=True) and min(sizes) > 0


def _gpt2_on_meta(layers: int, width: int, heads: int, weights_dtype):
    import torch

    from koi_train.config import ModelConfig
    from koi_train.models import build_model

    with torch.device("meta"):
        model = build_model(ModelConfig(arch="gpt2", preset=None, n_layer=layers, n_embd=width, n_head=heads, block_size=1024,
                                        vocab_size=50304))
    return model.to(weights_dtype)


def test_gradients_and_activations_peak_apart_with_one_micro_batch():
    """Backward frees kept activations as gradients appear: the peak is the larger end, not the sum;
    with accumulation the earlier micro-batches' gradients are there all along."""
    import torch

    from koi_train.memory_estimate import estimate_run_memory

    model = _gpt2_on_meta(4, 256, 4, torch.bfloat16)
    args = dict(optimizer="adamw8bit", in_backward=False, remat="full", batch=4, seq=1024, compute_bytes=2, residual_bytes=2)
    one = estimate_run_memory(model, **args)
    accumulating = estimate_run_memory(model, **args, grad_accum=2)
    assert accumulating.not_together == 0 and one.activations == accumulating.activations
    recompute = activation_bytes("full", batch=4, seq=1024, width=256, layers=0)
    head = model.output_head.weight.numel() * 2
    assert one.total - (one.weights + one.optimizer + one.loss) == max(one.activations + head, one.gradients + recompute)
    assert 0 < one.not_together < min(one.activations, one.gradients)
    assert "not all at once" in one.line() and "not all at once" not in accumulating.line()


# Peaks measured on the card (BENCHMARKS.md: torch.cuda.max_memory_allocated over 100-200 compiled steps),
# (layers, width, heads, weights, optimizer, remat, batch, grad_accum, in_backward) -> GiB
MEASURED_PEAKS = [
    ((12, 768, 12, "fp32", "adamw", "none", 32, 1, False), 13.12),  # H100 and H200, koi
    ((12, 768, 12, "bf16", "adamw", "none", 32, 1, False), 11.56),  # H100, koi-bf16w
    ((12, 768, 12, "fp32", "adamw", "none", 8, 4, False), 5.17),  # H100, koi-accum4
    ((12, 768, 12, "bf16", "adamw8bit", "none", 8, 4, False), 3.62),  # H100, koi-accum4-8bit-bf16w
    ((12, 768, 12, "bf16", "adamw8bit", "full", 16, 2, False), 1.85),  # H100, koi-accum2-8bit-bf16w-remat
    ((48, 1600, 25, "bf16", "adamw8bit", "full", 8, 1, True), 8.15),  # H100, koi-lowmem
    ((48, 1600, 25, "bf16", "adamw8bit", "full", 8, 1, False), 9.59),  # H100, koi-8bit-bf16w-remat
    ((48, 1600, 25, "fp32", "adamw", "full", 8, 1, False), 24.68),  # H200, koi-remat
]


@pytest.mark.parametrize(("run", "measured"), MEASURED_PEAKS)
def test_estimate_within_ten_percent_of_the_peaks_measured_on_the_card(run, measured):
    import torch

    from koi_train.memory_estimate import estimate_run_memory

    layers, width, heads, weights, optimizer, remat, batch, accum, in_backward = run
    dtype, size = (torch.bfloat16, 2) if weights == "bf16" else (torch.float32, 4)
    estimate = estimate_run_memory(_gpt2_on_meta(layers, width, heads, dtype), optimizer=optimizer, in_backward=in_backward,
                                   remat=remat, batch=batch, seq=1024, compute_bytes=2, residual_bytes=size, grad_accum=accum)
    assert estimate.total / 2**30 == pytest.approx(measured, rel=0.10)
