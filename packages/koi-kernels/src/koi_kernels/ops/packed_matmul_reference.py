"""Reference for the packed low-bit matmul: dequantize the koi-quant tensor, then an ordinary matmul."""

from __future__ import annotations

import torch

from koi_quant import QuantizedTensor


def packed_linear_reference(x: torch.Tensor, weight: QuantizedTensor) -> torch.Tensor:
    """x (..., K) @ W^T for a quantized (N, K) weight, computed in fp32 and returned in x's dtype."""
    return (x.float() @ weight.dequantize(torch.float32).T).to(x.dtype)
