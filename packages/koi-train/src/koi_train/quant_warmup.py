"""Quantization warm-up: full precision first, then the plan's low-bit grid, on a step schedule.

Why: at a fixed token budget a low-bit model ends closer to its full-precision twin when it
learns its features in full precision first and is moved onto its grid afterwards, than when it
is quantized from the first step (the quantization-aware-training schedules of the literature
put most of the compute before quantization). The run always ends fully quantized, so what is
evaluated and exported is the low-bit model it claims to be.
"""

from __future__ import annotations

from torch import nn

from koi_quant import set_quantization_strength

from .config import ConfigError, PrecisionConfig


def quantization_strength(step: int, steps: int, after: float, ramp: float) -> float:
    """0.0 (latent weights) until ``after`` of the run, then linear to 1.0 (quantized) over ``ramp`` of it.

    Counted at the step's end, so the last step (``steps - 1``) always trains fully quantized.
    """
    progress = (step + 1) / max(steps, 1)
    if ramp <= 0:
        return 1.0 if progress >= after else 0.0
    return min(1.0, max(0.0, (progress - after) / ramp))


class QuantWarmup:
    """Sets every quantized layer's strength before each step; only launches a device write when it changes."""

    def __init__(self, model: nn.Module, cfg: PrecisionConfig, steps: int) -> None:
        if cfg.quantize_after + cfg.quantize_ramp > 1:
            raise ConfigError("", "precision.quantize_ramp", f"expected quantize_after + quantize_ramp <= 1 (the run must end "
                              f"quantized), got {cfg.quantize_after} + {cfg.quantize_ramp}")
        self.model, self.cfg, self.steps = model, cfg, steps
        self._last: float | None = None
        if set_quantization_strength(model, 0.0) == 0:
            raise ConfigError("", "precision.quantize_after", "expected fake-quantized layers to warm up; the plan has none "
                              "(float formats only, or fp8 layers on real fp8 matmuls, which have no latent-weight blend)")

    @staticmethod
    def wanted(cfg: PrecisionConfig) -> bool:
        return bool(cfg.plan) and (cfg.quantize_after > 0 or cfg.quantize_ramp > 0)

    def before_step(self, step: int) -> None:
        strength = quantization_strength(step, self.steps, self.cfg.quantize_after, self.cfg.quantize_ramp)
        if strength != self._last:
            set_quantization_strength(self.model, strength)
            self._last = strength

    def report(self) -> str:
        start = round(self.cfg.quantize_after * self.steps)
        full = round((self.cfg.quantize_after + self.cfg.quantize_ramp) * self.steps)
        return f"quantization warm-up: full precision to step {start}, fully quantized from step {full}"
