"""`packed_linear(x, qweight)`: x @ W^T straight from koi-quant's packed codes (int8/int4/int2/ternary/binary)."""

from __future__ import annotations

import torch

from koi_quant import QuantizedTensor, get_format

from ..dispatch import use_triton
from .packed_matmul_reference import packed_linear_reference

SUPPORTED_KINDS = ("int", "ternary", "binary")


def packed_linear(x: torch.Tensor, weight: QuantizedTensor) -> torch.Tensor:
    """Forward of a linear layer whose (N, K) weight is a packed, row- or group-scaled QuantizedTensor."""
    fmt = get_format(weight.format)
    n, k = weight.shape
    row_layout = weight.block[0] == 1 and k % weight.block[1] == 0
    if not use_triton(x) or fmt.kind not in SUPPORTED_KINDS or weight.trits or not row_layout:
        return packed_linear_reference(x, weight)
    from .packed_matmul_triton import packed_matmul

    # unsigned code -> signed value: int/ternary store code + qmax; binary stores (sign + 1) / 2, i.e. 2c - 1
    if fmt.kind == "binary":
        scale, offset = weight.scale * 2, 0.5  # (c - 0.5) * 2s = (2c - 1) s
    else:
        scale, offset = weight.scale, fmt.qmax
    y = packed_matmul(x.reshape(-1, k).contiguous(), weight.packed, scale.float(), n=n, k=k, bits=fmt.bits,
                      offset=offset, group_size=weight.block[1])
    return y.view(*x.shape[:-1], n)
