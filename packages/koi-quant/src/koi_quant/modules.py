"""`QuantLinear` and `quantize_`: swap a model's Linear layers for quantized ones, by name.

QuantLinear keeps the latent weight as a normal float Parameter named ``weight`` (so optimizers,
checkpoints and tied embeddings see no difference) and computes with its quantized value.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .formats import FLOAT_FORMATS, QuantFormat, get_format
from .granularity import PER_ROW, Granularity, per_group, per_tile
from .learned_scale import initial_scale, learned_scale_quantize
from .ste import fake_quantize_ste, quantize_activations_int8


class QuantLinear(nn.Linear):
    """A Linear whose forward uses fake-quantized weights (and optionally int8 activations)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, format: str,
                 granularity: Granularity = PER_ROW, quantize_activations: bool = False, device=None, dtype=None) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.format: QuantFormat = get_format(format)
        self.granularity = granularity
        self.quantize_activations = quantize_activations
        self.weight_scale = None

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, format: str, granularity: Granularity = PER_ROW,
                    quantize_activations: bool = False, learnable_scale: bool = False) -> QuantLinear:
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.in_features, new.out_features = linear.in_features, linear.out_features
        new.weight = linear.weight  # the same Parameter: tying and optimizer state survive the swap
        new.bias = linear.bias
        new.format, new.granularity, new.quantize_activations = get_format(format), granularity, quantize_activations
        new.weight_scale = None
        if learnable_scale:
            if new.format.kind not in ("int", "ternary") or granularity.kind != "row":
                raise ValueError(f"learnable scales need a symmetric integer or ternary format with row scales, got "
                                 f"{format} with {granularity.kind} scales")
            new.weight_scale = nn.Parameter(initial_scale(linear.weight, new.format.qmax))
        return new

    def compute_weight(self) -> torch.Tensor:
        """The quantized weight the forward multiplies by, differentiable to the latent weight (and scale)."""
        if self.weight_scale is not None:
            quantized = learned_scale_quantize(self.weight, self.weight_scale, self.format.qmax)
        else:
            quantized = fake_quantize_ste(self.weight, self.format, self.granularity)
        strength = getattr(self, "strength", None)  # set by set_quantization_strength, on subclasses too
        if strength is None:
            return quantized
        # lerp is exact at 1 (it computes from the end for weights >= 0.5), and with the straight-through
        # quantizer the gradient to the latent weight stays the identity at every strength.
        return torch.lerp(self.weight, quantized, strength.to(quantized.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.compute_weight()
        if self.quantize_activations:
            x = quantize_activations_int8(x)
        return F.linear(x, w.to(x.dtype), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, format={self.format.name}, granularity={self.granularity.kind}"


def set_quantization_strength(model: nn.Module, strength: float) -> int:
    """Blend every QuantLinear's weight between its latent value (0.0) and its quantized value (1.0).

    Why: a model that learns its features in full precision first, then moves to its low-bit grid,
    ends better than one quantized from the first step (at 1.0 the layer is exactly as without
    this call). The strength lives in a buffer updated in place, so a compiled model does not
    recompile as it changes. Returns the number of layers set.
    """
    count = 0
    for module in model.modules():
        if isinstance(module, QuantLinear):
            if getattr(module, "strength", None) is None:
                module.register_buffer("strength", torch.tensor(float(strength), device=module.weight.device), persistent=False)
            else:
                module.strength.fill_(float(strength))
            count += 1
    return count


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def quantize_(
    model: nn.Module,
    plan: Mapping[str, str],
    *,
    group_size: int | None = None,
    tile: tuple[int, int] | None = None,
    quantize_activations: bool = False,
    learnable_scales: bool = False,
    filter_fn: Callable[[nn.Module, str], bool] | None = None,
    kernels: Mapping[str, Callable[[QuantLinear], nn.Module]] | None = None,
) -> dict[str, list[str]]:
    """Swap, in place, each nn.Linear whose name matches a plan pattern for a `QuantLinear`.

    ``plan`` maps fnmatch patterns to formats, first match wins; float formats (bf16, fp32) keep
    matching modules as they are. Scales are per output row, per ``group_size`` inputs, or per
    ``tile`` (rows, cols). Returns pattern -> module names. A pattern matching no Linear is
    an error, since a typo would otherwise silently train in full precision.

    ``kernels`` maps a format name to a factory that turns the format's `QuantLinear` into the
    module that runs it (for instance real fp8 tensor-core matmuls from koi-kernels): this package
    stays the one place that decides which layer gets which format and settings, while the
    factory sees those settings and must refuse the ones it cannot honour (raise ValueError).
    """
    for fmt in plan.values():
        if fmt not in FLOAT_FORMATS:
            get_format(fmt)
    if group_size and tile:
        raise ValueError("give group_size or tile, not both")
    granularity = per_tile(*tile) if tile else per_group(group_size) if group_size else PER_ROW
    matched: dict[str, list[str]] = {pattern: [] for pattern in plan}
    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.Linear) or (filter_fn is not None and not filter_fn(module, name)):
            continue
        pattern = next((p for p in plan if fnmatch.fnmatchcase(name, p)), None)
        if pattern is None:
            continue
        if hasattr(module, "nm"):
            raise ValueError(f"{name} is already sparse; call quantize_ before sparsify_ (the mask applies to the quantized weight)")
        matched[pattern].append(name)
        fmt = plan[pattern]
        if fmt in FLOAT_FORMATS:
            continue
        layer: nn.Module = QuantLinear.from_linear(module, format=fmt, granularity=granularity,
                                                   quantize_activations=quantize_activations, learnable_scale=learnable_scales)
        if kernels and fmt in kernels:
            layer = kernels[fmt](layer)
        set_module(model, name, layer)
    refuse_unmatched(model, matched)
    return matched


def refuse_unmatched(model: nn.Module, matched: Mapping[str, list[str]]) -> None:
    """A plan pattern that matches no Linear is an error: a typo would otherwise silently change nothing."""
    empty = [p for p, names in matched.items() if not names]
    if empty:
        linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][:4]
        raise ValueError(f"pattern {empty[0]!r} matches no Linear module (Linear names look like: {', '.join(linears)})")


def effective_weight(layer: nn.Linear) -> torch.Tensor:
    """The weight a QuantLinear's (or SparseLinear's) forward multiplies by: quantized, masked, dequantized."""
    with torch.no_grad():
        return layer.compute_weight().detach()


def dequantize_(model: nn.Module) -> list[str]:
    """Swap, in place, every QuantLinear (and SparseLinear: any Linear with a ``compute_weight``) for a
    plain nn.Linear holding the weights it computes with (quantized, 2:4 masks applied).

    The result is the trained low-bit model in a form any float runtime loads (a Hugging Face
    export, say): its outputs equal the quantized model's. Activation quantization has no float
    form, so such layers are refused rather than silently changed. Returns the swapped names.
    """
    swapped = []
    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.Linear) or not callable(getattr(module, "compute_weight", None)):
            continue
        if getattr(module, "quantize_activations", False):
            raise ValueError(f"{name}: int8 activation quantization has no plain-Linear form; export it as the quantized model")
        plain = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None,
                          device=module.weight.device, dtype=module.weight.dtype)
        with torch.no_grad():
            plain.weight.copy_(effective_weight(module))
            if module.bias is not None:
                plain.bias.copy_(module.bias)
        set_module(model, name, plain)
        swapped.append(name)
    return swapped
