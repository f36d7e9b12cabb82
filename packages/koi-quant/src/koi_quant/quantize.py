"""Quantize a tensor to a format at a granularity, and back.

`quantize` returns a `QuantizedTensor` holding packed codes and scales; `fake_quantize` is the
round trip in floating point that training uses. Rounding is to nearest, so for the integer
formats every element is within half a step (scale/2) of its original value unless clipped.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .formats import NF4_LEVELS, QuantFormat, get_format
from .granularity import PER_ROW, Granularity, as_matrix, from_blocks, to_blocks
from .packing import pack_bits, pack_trits, unpack_bits, unpack_trits


def _safe(scale: torch.Tensor) -> torch.Tensor:
    """An all-zero block gets scale 1: its codes are 0 (or the sign) and it dequantizes to 0."""
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def block_codes(blocks: torch.Tensor, mask: torch.Tensor, fmt: QuantFormat):
    """(codes, scale, zero_point) for blocks (nbr, nbc, n); scale/zero shaped (nbr, nbc, 1)."""
    x = blocks.float()
    count = mask.sum(dim=-1, keepdim=True).clamp_min(1)
    absmax = x.abs().amax(dim=-1, keepdim=True)
    zero = None
    if fmt.kind == "int":
        scale = _safe(absmax / fmt.qmax)
        codes = torch.clamp(torch.round(x / scale), -fmt.qmax, fmt.qmax).to(torch.int8)
    elif fmt.kind == "int_asym":
        big = torch.finfo(torch.float32).max
        lo = torch.where(mask, x, big).amin(dim=-1, keepdim=True).clamp(max=0)
        hi = torch.where(mask, x, -big).amax(dim=-1, keepdim=True).clamp(min=0)
        scale = _safe((hi - lo) / fmt.qmax)
        zero = torch.round(-lo / scale)
        codes = torch.clamp(torch.round(x / scale) + zero, 0, fmt.qmax).to(torch.uint8)
    elif fmt.kind == "ternary":  # BitNet b1.58: scale = mean |w| of the group
        scale = _safe(x.abs().sum(dim=-1, keepdim=True) / count)
        codes = torch.clamp(torch.round(x / scale), -1, 1).to(torch.int8)
    elif fmt.kind == "binary":
        scale = _safe(x.abs().sum(dim=-1, keepdim=True) / count)
        codes = torch.where(x >= 0, 1, -1).to(torch.int8)
    elif fmt.kind == "nf4":
        scale = _safe(absmax)
        levels = torch.tensor(NF4_LEVELS, device=x.device)
        codes = (x / scale).unsqueeze(-1).sub(levels).abs().argmin(dim=-1).to(torch.uint8)
    elif fmt.kind == "fp8":
        scale = _safe(absmax / torch.finfo(fmt.float_dtype).max)
        codes = (x / scale).to(fmt.float_dtype)
    else:
        raise ValueError(f"no quantizer for format kind {fmt.kind!r}")
    return codes, scale, zero


def block_values(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, fmt: QuantFormat) -> torch.Tensor:
    if fmt.kind == "nf4":
        return torch.tensor(NF4_LEVELS, device=codes.device)[codes.long()] * scale
    if fmt.kind == "int_asym":
        return (codes.float() - zero) * scale
    return codes.float() * scale


def fake_quantize(w: torch.Tensor, fmt: str | QuantFormat, granularity: Granularity = PER_ROW) -> torch.Tensor:
    """Quantize and dequantize in one go (no packing), in w's dtype and shape."""
    fmt = get_format(fmt) if isinstance(fmt, str) else fmt
    m = as_matrix(w)
    block = granularity.block_shape(*m.shape)
    blocks, mask = to_blocks(m, block)
    codes, scale, zero = block_codes(blocks, mask, fmt)
    out = from_blocks(block_values(codes, scale, zero, fmt), block, *m.shape)
    return out.reshape(w.shape).to(w.dtype)


def _to_unsigned(codes: torch.Tensor, fmt: QuantFormat) -> torch.Tensor:
    if fmt.kind in ("int", "ternary"):
        return (codes.to(torch.int16) + fmt.qmax).to(torch.uint8)  # [-q, q] -> [0, 2q]
    if fmt.kind == "binary":
        return ((codes.to(torch.int16) + 1) // 2).to(torch.uint8)
    return codes


def _from_unsigned(codes: torch.Tensor, fmt: QuantFormat) -> torch.Tensor:
    if fmt.kind in ("int", "ternary"):
        return (codes.to(torch.int16) - fmt.qmax).to(torch.int8)
    if fmt.kind == "binary":
        return (codes.to(torch.int16) * 2 - 1).to(torch.int8)
    return codes


@dataclass
class QuantizedTensor:
    """Packed codes + scales of one tensor; knows its own dequantized value and byte size."""

    packed: torch.Tensor
    scale: torch.Tensor  # (nbr, nbc, 1) float32
    zero_point: torch.Tensor | None
    shape: tuple[int, ...]
    format: str
    block: tuple[int, int]
    trits: bool = False

    @property
    def nbytes(self) -> int:
        tensors = [self.packed, self.scale] + ([self.zero_point] if self.zero_point is not None else [])
        return sum(t.numel() * t.element_size() for t in tensors)

    def codes(self) -> torch.Tensor:
        """Unpacked signed codes in block layout (nbr, nbc, bh*bw)."""
        fmt = get_format(self.format)
        nbr, nbc = self.scale.shape[:2]
        count = nbr * nbc * self.block[0] * self.block[1]
        if fmt.kind == "fp8":
            flat = self.packed.view(fmt.float_dtype)[:count]
        elif self.trits:
            flat = _from_unsigned(unpack_trits(self.packed, count), fmt)
        else:
            flat = _from_unsigned(unpack_bits(self.packed, fmt.bits, count), fmt)
        return flat.reshape(nbr, nbc, -1)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        fmt = get_format(self.format)
        rows, cols = as_matrix(torch.empty(self.shape, device="meta")).shape
        values = block_values(self.codes(), self.scale, self.zero_point, fmt)
        return from_blocks(values, self.block, rows, cols).reshape(self.shape).to(dtype)

    def state_dict(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """Plain tensors only (safetensors-compatible); metadata travels as small int tensors + format name."""
        out = {f"{prefix}packed": self.packed, f"{prefix}scale": self.scale,
               f"{prefix}meta": torch.tensor([len(self.shape), *self.shape, *self.block, int(self.trits)], dtype=torch.int64)}
        if self.zero_point is not None:
            out[f"{prefix}zero_point"] = self.zero_point
        return out

    @classmethod
    def from_state_dict(cls, tensors: dict[str, torch.Tensor], format: str, prefix: str = "") -> QuantizedTensor:
        meta = tensors[f"{prefix}meta"].tolist()
        ndim = meta[0]
        shape, block, trits = tuple(meta[1 : 1 + ndim]), tuple(meta[1 + ndim : 3 + ndim]), bool(meta[3 + ndim])
        return cls(tensors[f"{prefix}packed"], tensors[f"{prefix}scale"], tensors.get(f"{prefix}zero_point"),
                   shape, format, block, trits)


def quantize(w: torch.Tensor, fmt: str, granularity: Granularity = PER_ROW, *, trits: bool = False) -> QuantizedTensor:
    """Quantize and pack. ``trits=True`` packs ternary codes five per byte instead of four."""
    spec = get_format(fmt)
    if trits and spec.kind != "ternary":
        raise ValueError(f"trit packing is for ternary only, got {fmt}")
    m = as_matrix(w.detach())
    block = granularity.block_shape(*m.shape)
    blocks, mask = to_blocks(m, block)
    codes, scale, zero = block_codes(blocks, mask, spec)
    block = (min(block[0], m.shape[0]), min(block[1], m.shape[1]))
    if spec.kind == "fp8":
        packed = codes.reshape(-1).view(torch.uint8)
    elif trits:
        packed = pack_trits(_to_unsigned(codes, spec))
    else:
        packed = pack_bits(_to_unsigned(codes, spec), spec.bits)
    return QuantizedTensor(packed, scale, zero, tuple(w.shape), fmt, block, trits)
