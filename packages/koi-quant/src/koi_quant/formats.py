"""The number formats koi-quant knows, as data: levels, code range and how scales are taken.

A format is one frozen record; every quantizer, packer and memory estimate reads it from
`FORMATS`, so adding a format is adding one entry (plus a scale rule if it needs a new one).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# NormalFloat-4 levels: quantiles of N(0, 1) scaled to [-1, 1] (Dettmers et al., QLoRA, 2023).
NF4_LEVELS = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0,
)


@dataclass(frozen=True)
class QuantFormat:
    name: str
    bits: int  # bits per stored code (ternary: 2 in plain packing, 1.6 with 5 trits per byte)
    kind: str  # "int" | "int_asym" | "ternary" | "binary" | "nf4" | "fp8"
    qmax: int = 0  # largest code magnitude for symmetric integer kinds
    float_dtype: torch.dtype | None = None  # fp8 storage dtype

    @property
    def storage_bits(self) -> float:
        return 1.6 if self.kind == "ternary" else float(self.bits)


def _fp8(name: str, dtype: torch.dtype) -> QuantFormat:
    return QuantFormat(name, 8, "fp8", float_dtype=dtype)


FORMATS: dict[str, QuantFormat] = {
    "binary": QuantFormat("binary", 1, "binary", qmax=1),
    "ternary": QuantFormat("ternary", 2, "ternary", qmax=1),
    "int2": QuantFormat("int2", 2, "int", qmax=1),
    "int4": QuantFormat("int4", 4, "int", qmax=7),
    "int8": QuantFormat("int8", 8, "int", qmax=127),
    "int2_asym": QuantFormat("int2_asym", 2, "int_asym", qmax=3),
    "int4_asym": QuantFormat("int4_asym", 4, "int_asym", qmax=15),
    "int8_asym": QuantFormat("int8_asym", 8, "int_asym", qmax=255),
    "nf4": QuantFormat("nf4", 4, "nf4", qmax=15),
    "fp8": _fp8("fp8", torch.float8_e4m3fn),
    "fp8_e4m3": _fp8("fp8_e4m3", torch.float8_e4m3fn),
    "fp8_e5m2": _fp8("fp8_e5m2", torch.float8_e5m2),
}
# Formats a precision plan may name that mean "keep this module in floating point".
FLOAT_FORMATS = {"bf16": 2.0, "fp16": 2.0, "fp32": 4.0}


def get_format(name: str) -> QuantFormat:
    try:
        return FORMATS[name]
    except KeyError:
        raise ValueError(f"unknown format {name!r}; expected one of {', '.join([*FORMATS, *FLOAT_FORMATS])}") from None


def format_bytes_per_param(name: str, group_size: int | None = None, *, row_length: int = 4096, scale_bytes: int = 4) -> float:
    """Bytes per weight including scales (and zero points), for a layer whose rows have ``row_length``."""
    if name in FLOAT_FORMATS:
        return FLOAT_FORMATS[name]
    fmt = get_format(name)
    per_group = group_size or row_length
    extra = scale_bytes * (2 if fmt.kind == "int_asym" else 1) / per_group
    return fmt.storage_bits / 8 + extra
