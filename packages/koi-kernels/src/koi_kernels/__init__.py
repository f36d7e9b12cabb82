"""koi-kernels: fused Triton kernels, each with a torch reference and an autograd wrapper.

    from koi_kernels import rms_norm
    y, h = rms_norm(x, weight, residual=r)   # Triton on CUDA, torch reference elsewhere
"""

from importlib import metadata

from .dispatch import kernel_mode, use_triton
from .ops.adamw import FusedAdamW
from .ops.adamw8bit import AdamW8bit
from .ops.adamw_reference import adamw_reference, stochastic_round_bf16
from .ops.fp8_linear import Fp8Linear, SparseFp8Linear, fp8_linear
from .ops.gathered_mlp import gathered_mlp_per_token, gathered_mlp_per_token_reference
from .ops.linear_ce import linear_cross_entropy
from .ops.linear_ce_reference import linear_cross_entropy_reference
from .ops.norm_reference import layer_norm_reference, rms_norm_reference
from .ops.norms import layer_norm, rms_norm
from .ops.packed_matmul import packed_linear
from .ops.packed_matmul_reference import packed_linear_reference
from .ops.rope import rope
from .ops.rope_reference import rope_reference, rope_tables

try:
    __version__ = metadata.version("koi-kernels")  # the one place it is written is pyproject.toml
except metadata.PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
__all__ = [
    "AdamW8bit", "Fp8Linear", "FusedAdamW", "SparseFp8Linear", "adamw_reference", "fp8_linear", "gathered_mlp_per_token",
    "gathered_mlp_per_token_reference", "kernel_mode", "layer_norm", "layer_norm_reference",
    "linear_cross_entropy", "linear_cross_entropy_reference", "packed_linear", "packed_linear_reference",
    "rms_norm", "rms_norm_reference", "rope", "rope_reference", "rope_tables", "stochastic_round_bf16", "use_triton",
]
