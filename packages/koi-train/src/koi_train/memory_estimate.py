"""A start-of-run estimate of activation memory per remat mode, so the choice is an informed one.

Counts the tensors a pre-norm transformer block keeps for backward, in units of B*T*C elements
(flash attention keeps no T x T scores; the fused loss keeps no B*T*V logits):
attention half: LN input, LN output, q, k, v, attention output = 6; MLP half: LN input, LN output,
up-projection output (4C), activation output (4C) = 10. Remat keeps only module inputs instead
and recomputes one block's worth during backward (after Korthikanti et al., 2022).
"""

from __future__ import annotations

KEPT_PER_LAYER = {"none": 16, "ffn": 8, "selective": 4, "full": 1}
RECOMPUTED_PEAK = {"none": 0, "ffn": 10, "selective": 16, "full": 16}


def activation_bytes(mode: str, *, batch: int, seq: int, width: int, layers: int, bytes_per_value: int = 2) -> int:
    """Activation bytes held at the start of backward (plus the one block being recomputed)."""
    units = KEPT_PER_LAYER[mode] * layers + RECOMPUTED_PEAK[mode]
    return units * batch * seq * width * bytes_per_value


def remat_report(mode: str, *, batch: int, seq: int, width: int, layers: int, bytes_per_value: int) -> str:
    sizes = {m: activation_bytes(m, batch=batch, seq=seq, width=width, layers=layers, bytes_per_value=bytes_per_value)
             for m in KEPT_PER_LAYER}
    table = ", ".join(f"{m} {b / 2**30:.2f}" for m, b in sizes.items())
    saved = 1 - sizes[mode] / sizes["none"]
    return f"remat {mode}: activations about {sizes[mode] / 2**30:.2f} GiB (estimate; GiB per mode: {table}; saves {saved:.0%})"
