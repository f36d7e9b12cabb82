"""The remat estimate orders the modes correctly and matches the counted tensors of a GPT-2 block."""

from __future__ import annotations

from koi_train.memory_estimate import activation_bytes, remat_report


def test_modes_save_memory_in_order():
    sizes = [activation_bytes(m, batch=32, seq=1024, width=768, layers=12) for m in ("none", "ffn", "selective", "full")]
    assert sizes == sorted(sizes, reverse=True)
    # GPT-2 124M, B=32, T=1024, bf16: 16 values of B*T*C per layer -> 12 * 16 * 32 * 1024 * 768 * 2 bytes = 9 GiB
    assert sizes[0] == 12 * 16 * 32 * 1024 * 768 * 2


def test_report_names_mode_and_saving():
    line = remat_report("full", batch=8, seq=1024, width=1600, layers=48, bytes_per_value=2)
    assert line.startswith("remat full: activations about") and "saves 9" in line
