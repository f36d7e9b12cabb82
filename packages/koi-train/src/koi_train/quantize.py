"""Apply the config's per-module precision plan through koi-quant (before remat and compile)."""

from __future__ import annotations

from torch import nn

from koi_quant import format_bytes_per_param, quantize_

from .config import ConfigError, PrecisionConfig


def apply_precision_plan(model: nn.Module, cfg: PrecisionConfig) -> list[str]:
    """Swap matched Linear layers for quantized ones; return report lines (bytes/param per group)."""
    if not cfg.plan:
        return []
    try:
        swapped = quantize_(model, cfg.plan, group_size=cfg.group_size, tile=cfg.tile, quantize_activations=cfg.activations,
                             learnable_scales=cfg.learnable_scales)
    except ValueError as exc:
        raise ConfigError("", "precision.plan", str(exc)) from None
    scales = f"{cfg.tile[0]}x{cfg.tile[1]} tiles" if cfg.tile else f"groups of {cfg.group_size}" if cfg.group_size else "rows"
    extras = (", learned" if cfg.learnable_scales else "") + (", int8 activations" if cfg.activations else "")
    lines = [f"precision plan (scales per {scales}{extras}):"]
    for pattern, fmt in cfg.plan.items():
        names = swapped.get(pattern, [])
        lines.append(f"  {pattern:<30} {fmt:<8} {len(names):>3} modules, {format_bytes_per_param(fmt, cfg.group_size):.3f} bytes/param")
    return lines
