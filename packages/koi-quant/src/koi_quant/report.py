"""How many bytes a model's weights take in the formats a plan gives them."""

from __future__ import annotations

from torch import nn

from .formats import format_bytes_per_param
from .modules import QuantLinear


def memory_table(model: nn.Module, *, float_format: str = "bf16") -> str:
    """One row per format: parameters, bytes/param (scales included) and MiB, plus a total."""
    groups: dict[str, list[int]] = {}
    seen: set[int] = set()
    for _, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            fmt = module.format.name if isinstance(module, QuantLinear) and pname == "weight" else float_format
            group = module.granularity.group_size if isinstance(module, QuantLinear) else None
            row = p.shape[-1] if p.ndim else 1
            groups.setdefault(fmt, [0, 0.0])
            groups[fmt][0] += p.numel()
            groups[fmt][1] += p.numel() * format_bytes_per_param(fmt, group, row_length=row)
    lines = [f"{'format':<10}{'params':>14}{'bytes/param':>13}{'MiB':>10}"]
    total_params = total_bytes = 0
    for fmt, (count, nbytes) in sorted(groups.items()):
        lines.append(f"{fmt:<10}{count:>14,}{nbytes / count:>13.3f}{nbytes / 2**20:>10.2f}")
        total_params += count
        total_bytes += nbytes
    lines.append(f"{'total':<10}{total_params:>14,}{total_bytes / max(total_params, 1):>13.3f}{total_bytes / 2**20:>10.2f}")
    return "\n".join(lines)
