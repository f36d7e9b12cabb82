"""`packed_linear(x, qweight)`: x @ W^T straight from koi-quant's packed codes (int8/int4/int2/ternary/binary)."""

from __future__ import annotations

import torch

from koi_quant import QuantizedTensor, get_format

from ..dispatch import use_triton
from .packed_matmul_reference import packed_linear_reference

SUPPORTED_KINDS = ("int", "ternary", "binary")


class _PackedLinear(torch.autograd.Function):
    """Frozen packed weights: the gradient goes to the input only (adapters, layers below)."""

    @staticmethod
    def forward(ctx, x2d, packed, scale, options):
        from .packed_matmul_triton import packed_matmul

        ctx.save_for_backward(packed, scale)
        ctx.options = options
        return packed_matmul(x2d, packed, scale, **options)

    @staticmethod
    def backward(ctx, dy):
        from .packed_matmul_triton import packed_matmul_input_grad

        packed, scale = ctx.saved_tensors
        return packed_matmul_input_grad(dy.contiguous(), packed, scale, **ctx.options), None, None, None


def packed_linear(x: torch.Tensor, weight: QuantizedTensor) -> torch.Tensor:
    """A linear layer whose (N, K) weight is a packed, row- or group-scaled QuantizedTensor; differentiable in x."""
    fmt = get_format(weight.format)
    n, k = weight.shape
    row_layout = weight.block[0] == 1 and k % weight.block[1] == 0
    if not use_triton(x) or fmt.kind not in SUPPORTED_KINDS or weight.trits or not row_layout:
        return packed_linear_reference(x, weight)
    # unsigned code -> signed value: int/ternary store code + qmax; binary stores (sign + 1) / 2, i.e. 2c - 1
    if fmt.kind == "binary":
        scale, offset = weight.scale * 2, 0.5  # (c - 0.5) * 2s = (2c - 1) s
    else:
        scale, offset = weight.scale, fmt.qmax
    options = dict(n=n, k=k, bits=fmt.bits, offset=offset, group_size=weight.block[1])
    y = _PackedLinear.apply(x.reshape(-1, k).contiguous(), weight.packed, scale.float(), options)
    return y.view(*x.shape[:-1], n)
