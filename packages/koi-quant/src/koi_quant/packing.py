"""Bit packing of unsigned codes into uint8: 8, 4 or 2 codes per byte, or 5 trits per byte.

Codes are packed little-end first (code k of a byte sits at bits [k*b, (k+1)*b)), and the last
byte is zero-filled, so any length round-trips exactly given the original count.
"""

from __future__ import annotations

import torch

TRITS_PER_BYTE = 5  # 3**5 = 243 <= 256
_POW3 = torch.tensor([1, 3, 9, 27, 81], dtype=torch.int32)


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Flatten ``codes`` (each in [0, 2**bits)) and pack them into a 1-D uint8 tensor."""
    if bits not in (1, 2, 4, 8):
        raise ValueError(f"bits: expected 1, 2, 4 or 8, got {bits}")
    flat = codes.reshape(-1).to(torch.int32)
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= 1 << bits):
        raise ValueError(f"codes must lie in [0, {1 << bits}) for {bits}-bit packing")
    if bits == 8:
        return flat.to(torch.uint8)
    per_byte = 8 // bits
    pad = (-flat.numel()) % per_byte
    flat = torch.cat([flat, flat.new_zeros(pad)]).view(-1, per_byte)
    shifts = torch.arange(per_byte, dtype=torch.int32, device=flat.device) * bits
    return (flat << shifts).sum(dim=1).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """Inverse of `pack_bits`: the first ``count`` codes, as uint8."""
    if bits == 8:
        return packed[:count].to(torch.uint8)
    per_byte = 8 // bits
    shifts = torch.arange(per_byte, dtype=torch.int32, device=packed.device) * bits
    codes = (packed.to(torch.int32).unsqueeze(1) >> shifts) & ((1 << bits) - 1)
    return codes.reshape(-1)[:count].to(torch.uint8)


def pack_trits(codes: torch.Tensor) -> torch.Tensor:
    """Pack codes in {0, 1, 2} five to a byte (1.6 bits per ternary weight)."""
    flat = codes.reshape(-1).to(torch.int32)
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) > 2):
        raise ValueError("trit codes must lie in {0, 1, 2}")
    pad = (-flat.numel()) % TRITS_PER_BYTE
    flat = torch.cat([flat, flat.new_zeros(pad)]).view(-1, TRITS_PER_BYTE)
    return (flat * _POW3.to(flat.device)).sum(dim=1).to(torch.uint8)


def unpack_trits(packed: torch.Tensor, count: int) -> torch.Tensor:
    values = packed.to(torch.int32).unsqueeze(1) // _POW3.to(packed.device) % 3
    return values.reshape(-1)[:count].to(torch.uint8)
