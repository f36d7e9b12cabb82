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
    kernels = {"fp8": fp8_matmul_factory(cfg.fp8_scaling)} if cfg.fp8_matmul else None
    try:
        swapped = quantize_(model, cfg.plan, group_size=cfg.group_size, tile=cfg.tile, quantize_activations=cfg.activations,
                             learnable_scales=cfg.learnable_scales, kernels=kernels)
    except ValueError as exc:
        field = "precision.fp8_matmul" if str(exc).startswith(FP8_REFUSAL) else "precision.plan"
        raise ConfigError("", field, str(exc)) from None
    quantized_head = [pattern for pattern, names in swapped.items() if head in names and cfg.plan[pattern] not in FLOAT_FORMATS]
    if quantized_head:
        raise ConfigError("", f"precision.plan.{quantized_head[0]}", f"matches the output head {head!r}, which the fused loss multiplies "
                          "in bf16 (it shares the embedding); expected patterns for the blocks only, e.g. transformer.h.*")
    fp8_layers = sum(isinstance(m, Fp8Linear) for m in model.modules())
    scales = f"{cfg.tile[0]}x{cfg.tile[1]} tiles" if cfg.tile else f"groups of {cfg.group_size}" if cfg.group_size else "rows"
    extras = (", learned" if cfg.learnable_scales else "") + (", int8 activations" if cfg.activations else "")
    extras += f", {fp8_layers} fp8 layers on fp8 tensor-core matmuls ({cfg.fp8_scaling} scales)" if cfg.fp8_matmul else ""
    lines = [f"precision plan (scales per {scales}{extras}):"]
    for pattern, fmt in cfg.plan.items():
        names = swapped.get(pattern, [])
        lines.append(f"  {pattern:<30} {fmt:<8} {len(names):>3} modules, {format_bytes_per_param(fmt, cfg.group_size):.3f} bytes/param")
    return lines


FP8_REFUSAL = "fp8 tensor-core matmuls"


def fp8_matmul_factory(scaling: str):
    """koi-quant's kernel hook for fp8: the fake-quantized layer becomes a real fp8 matmul layer (same Parameters).

    The fp8 matmul brings its own scales (per row, or 128x128 tiles) and quantizes its inputs to
    fp8 itself, so settings made for the fake-quantized layer would be silently dropped: refused.
    """
    def build(layer: QuantLinear) -> Fp8Linear:
        dropped = [what for what, given in (("precision.group_size / precision.tile (use precision.fp8_scaling)",
                                             layer.granularity.kind != "row"),
                                            ("precision.activations (the inputs go to fp8 anyway)", layer.quantize_activations),
                                            ("precision.learnable_scales", layer.weight_scale is not None)) if given]
        if dropped:
            raise ValueError(f"{FP8_REFUSAL} set their own scales and input precision; expected none of: {', '.join(dropped)}")
        return Fp8Linear.from_linear(layer, scaling)
    return build
