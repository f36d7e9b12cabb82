"""Apply the config's per-module precision plan through koi-quant (before remat and compile)."""

from __future__ import annotations

from torch import nn

from koi_kernels import Fp8Linear
from koi_quant import FLOAT_FORMATS, QuantLinear, format_bytes_per_param, quantize_

from .config import ConfigError, PrecisionConfig


def apply_precision_plan(model: nn.Module, cfg: PrecisionConfig) -> list[str]:
    """Swap matched Linear layers for quantized ones; return report lines (bytes/param per group)."""
    if not cfg.plan:
        return []
    head = next(name for name, module in model.named_modules() if module is model.output_head)
    try:
        swapped = quantize_(model, cfg.plan, group_size=cfg.group_size, tile=cfg.tile, quantize_activations=cfg.activations,
                             learnable_scales=cfg.learnable_scales)
    except ValueError as exc:
        raise ConfigError("", "precision.plan", str(exc)) from None
    quantized_head = [pattern for pattern, names in swapped.items() if head in names and cfg.plan[pattern] not in FLOAT_FORMATS]
    if quantized_head:
        raise ConfigError("", f"precision.plan.{quantized_head[0]}", f"matches the output head {head!r}, which the fused loss multiplies "
                          "in bf16 (it shares the embedding); expected patterns for the blocks only, e.g. transformer.h.*")
    fp8_layers = swap_in_fp8_matmuls(model, cfg.fp8_scaling) if cfg.fp8_matmul else 0
    scales = f"{cfg.tile[0]}x{cfg.tile[1]} tiles" if cfg.tile else f"groups of {cfg.group_size}" if cfg.group_size else "rows"
    extras = (", learned" if cfg.learnable_scales else "") + (", int8 activations" if cfg.activations else "")
    extras += f", {fp8_layers} fp8 layers on fp8 tensor-core matmuls ({cfg.fp8_scaling} scales)" if cfg.fp8_matmul else ""
    lines = [f"precision plan (scales per {scales}{extras}):"]
    for pattern, fmt in cfg.plan.items():
        names = swapped.get(pattern, [])
        lines.append(f"  {pattern:<30} {fmt:<8} {len(names):>3} modules, {format_bytes_per_param(fmt, cfg.group_size):.3f} bytes/param")
    return lines


def swap_in_fp8_matmuls(model: nn.Module, scaling: str = "row") -> int:
    """Replace fake-quantized fp8 layers by real fp8 matmul layers (same Parameters); return how many."""
    swapped = 0
    for name, module in list(model.named_modules()):
        if isinstance(module, QuantLinear) and module.format.kind == "fp8":
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, Fp8Linear.from_linear(module, scaling))
            swapped += 1
    return swapped
