"""fp8 layouts shared by torch code and its Triton kernels.

The torch modules import their Triton kernels lazily and the kernels need the same block sizes, so
the constants live here, below both: importing them loads neither Triton nor the other file.
"""

from __future__ import annotations

import torch

E4M3 = torch.float8_e4m3fn
E4M3_MAX = torch.finfo(E4M3).max
TILE = 128  # fp8 linear, tile scaling: values of the reduction dimension that share one scale
MOMENT_BLOCK = 256  # AdamW8bit: values of a moment that share one fp8 scale
