"""Linear layers whose three matmuls run in fp8 on tensor cores, with row-wise or tile-wise scales.

``scaling="row"`` (torch._scaled_mm): forward y = x W^T with x scaled per token and W per output row. Backward
dx = dy W with dy per token and W per input column; dW = dy^T x with dy per output feature and x
per input feature. Each operand is scaled along the dimension the matmul keeps, which is what
row-wise scaling allows; the reduction dimension is unscaled. All operands are e4m3: with a scale
per row the gradients' range fits, and cuBLASLt's row-wise kernels take e4m3 on both sides. On the
card, cuBLASLt wants the left operand row-major and the right one column-major and row-wise
scales only produce bf16: `scaled_matmul` lays operands out that way (the CPU accepts anything,
so only a CUDA test sees a wrong layout). Master weights stay in their own dtype: fp8 copies are
made on the fly every step.

``scaling="row-fused"``: the same operands, scales and matmuls as "row", as an autograd.Function of
plain torch ops instead of one registered op. Under torch.compile the compiler then sees every
amax, division and cast to fp8 and can fuse each into the kernel that produced its operand,
where the registered op runs them as separate eager passes (about 150 operands a 124M step).
Eager, the two give bit-identical results (a test checks); compiled, the tests compare its
gradients with eager's.

``scaling="tile"`` (a Triton kernel, `fp8_tile_triton`): every operand is scaled per 128-wide tile
of the reduction dimension (activations and gradients per 1x128 tile, weights per 128x128 block)
and all three matmuls use e4m3, as DeepSeek-V3 trains: an outlier coarsens only its own tile.
Off CUDA the same quantized operands are multiplied by a torch reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from koi_quant import NMSparse, init_sparsity, masked_straight_through

from ..dispatch import use_triton
from .fp8_formats import E4M3, TILE


def to_fp8(t: torch.Tensor, dim: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes, scale) with one fp32 scale per slice along ``dim`` kept (amax over the other dim).

    Codes come back contiguous (row-major) whatever the input's strides, so a transposed view in
    gives the row-major transpose out, which is what `scaled_matmul` needs. Inside the registered
    op nothing is fused, so each pass counts (a 124M step quantizes about 150 operands): the amax
    is one reduction (the inf-norm, no materialised ``abs``) and the division promotes the
    half-precision input to fp32 in the same kernel (no separate ``float()`` copy).
    """
    t = t.detach()
    amax = torch.linalg.vector_norm(t, ord=float("inf"), dim=1 - dim, keepdim=True, dtype=torch.float32)
    scale = amax.clamp_min(1e-12) / torch.finfo(dtype).max
    return torch.div(t, scale).to(dtype).contiguous(), scale


def scaled_matmul(a: torch.Tensor, a_scale: torch.Tensor, b_rows: torch.Tensor, b_scale: torch.Tensor) -> torch.Tensor:
    """bf16 ``a @ b_rows.T`` from row-major fp8 ``a`` (M, K), scales (M, 1), and ``b_rows`` (N, K), scales (N, 1).

    ``b_rows.t()`` is the column-major (K, N) operand cuBLASLt asks for; its scales go in as (1, N).
    Off CUDA (where torch's CPU backend takes only per-tensor scales) the same product is formed
    from the dequantized operands in fp32.
    """
    if not a.is_cuda:
        return ((a.float() * a_scale) @ (b_rows.float() * b_scale).T).to(torch.bfloat16)
    return torch._scaled_mm(a, b_rows.t(), scale_a=a_scale.contiguous(), scale_b=b_scale.reshape(1, -1).contiguous(),
                            out_dtype=torch.bfloat16)


SCALINGS = ("row", "row-fused", "tile")


def quantize_tiles(t: torch.Tensor, rows_per_block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """e4m3 codes of ``t`` (R, C) with one scale per block of ``rows_per_block`` x 128 values.

    Scales come back per row, (R, ceil(C / 128)): rows of one block repeat its scale. Partial
    blocks at the edges are scaled by what they hold.
    """
    rows, cols = t.shape
    tiles = -(-cols // TILE)
    padded = F.pad(t.detach().float(), (0, tiles * TILE - cols, 0, (-rows) % rows_per_block))
    blocks = padded.view(-1, rows_per_block, tiles, TILE)
    amax = torch.linalg.vector_norm(blocks, ord=float("inf"), dim=(1, 3))  # one reduction, no abs() copy
    scale = (amax / torch.finfo(E4M3).max).clamp_min(1e-12)  # (row blocks, tiles)
    codes = (blocks / scale[:, None, :, None]).to(E4M3).view(-1, tiles * TILE)[:rows, :cols]
    return codes.contiguous(), scale.repeat_interleave(rows_per_block, dim=0)[:rows].contiguous()


def dequantize_tiles(codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return codes.float() * scale.repeat_interleave(TILE, dim=1)[:, : codes.shape[1]]


def tile_matmul(a: torch.Tensor, a_scale: torch.Tensor, b: torch.Tensor, b_scale: torch.Tensor, out_dtype) -> torch.Tensor:
    """A (M, K) @ B (N, K)^T from tile-scaled e4m3 codes: the Triton kernel, or its torch reference."""
    if use_triton(a):
        from .fp8_tile_triton import tile_scaled_matmul

        return tile_scaled_matmul(a, a_scale, b, b_scale, out_dtype)
    return (dequantize_tiles(a, a_scale) @ dequantize_tiles(b, b_scale).T).to(out_dtype)


@torch.library.custom_op("koi::fp8_matmul", mutates_args=())
def fp8_matmul(a: torch.Tensor, b: torch.Tensor, scaling: str, b_block_rows: int) -> torch.Tensor:
    """bf16 ``a @ b.T``, both operands cast to e4m3 on the fly; differentiable, in fp8 both ways.

    ``scaling="row"``: one scale per row of each operand. ``"tile"``: ``a`` per 1x128 tile,
    ``b`` per ``b_block_rows`` x 128 block. A registered op rather than an autograd.Function:
    torch.compile keeps it whole and calls the backward registered below, instead of tracing
    through casts to fp8 (through which compiled autograd.Functions have lost gradients).
    """
    if scaling == "row":
        return scaled_matmul(*to_fp8(a, 0, E4M3), *to_fp8(b, 0, E4M3))
    return tile_matmul(*quantize_tiles(a, 1), *quantize_tiles(b, b_block_rows), torch.bfloat16)


@fp8_matmul.register_fake
def _(a: torch.Tensor, b: torch.Tensor, scaling: str, b_block_rows: int) -> torch.Tensor:
    return a.new_empty(a.shape[0], b.shape[0], dtype=torch.bfloat16)


def _save_operands(ctx, inputs, output) -> None:
    a, b, scaling, b_block_rows = inputs
    ctx.save_for_backward(a, b)
    ctx.scaling, ctx.b_block_rows = scaling, b_block_rows


def _fp8_matmul_backward(ctx, grad: torch.Tensor):
    """da = grad @ b (rows of b^T, in b's blocks); db = grad^T @ a (per row, or 1x128 tile, of the tokens)."""
    a, b = ctx.saved_tensors
    da = fp8_matmul(grad, b.t(), ctx.scaling, ctx.b_block_rows).to(a.dtype) if ctx.needs_input_grad[0] else None
    db = fp8_matmul(grad.t(), a.t(), ctx.scaling, 1).to(b.dtype) if ctx.needs_input_grad[1] else None
    return da, db, None, None


fp8_matmul.register_autograd(_fp8_matmul_backward, setup_context=_save_operands)


class _RowScaledMatmul(torch.autograd.Function):
    """``scaling="row-fused"``: `fp8_matmul`'s row-scaled forward and backward, traceable op by op."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(a, b)
        return scaled_matmul(*to_fp8(a, 0, E4M3), *to_fp8(b, 0, E4M3))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        a, b = ctx.saved_tensors
        da = db = None
        if ctx.needs_input_grad[0]:
            da = scaled_matmul(*to_fp8(grad, 0, E4M3), *to_fp8(b.t(), 0, E4M3)).to(a.dtype)
        if ctx.needs_input_grad[1]:
            db = scaled_matmul(*to_fp8(grad.t(), 0, E4M3), *to_fp8(a.t(), 0, E4M3)).to(b.dtype)
        return da, db


def fp8_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *, scaling: str = "row") -> torch.Tensor:
    """``x @ weight.T + bias`` with all three matmuls of the layer in fp8; ``scaling``: one of `SCALINGS`."""
    if scaling not in SCALINGS:
        raise ValueError(f"scaling: expected one of {SCALINGS}, got {scaling!r}")
    out_dtype = x.dtype if x.dtype in (torch.bfloat16, torch.float16) else torch.bfloat16
    rows = x.reshape(-1, x.shape[-1])
    if scaling == "row-fused":
        y = _RowScaledMatmul.apply(rows, weight).to(out_dtype)
    else:
        y = fp8_matmul(rows, weight, scaling, TILE).to(out_dtype)
    y = y.view(*x.shape[:-1], weight.shape[0])
    return y + bias.to(y.dtype) if bias is not None else y


class Fp8Linear(nn.Linear):
    """nn.Linear computing with fp8 matmuls; built from an existing Linear, sharing its Parameters."""

    @classmethod
    def from_linear(cls, linear: nn.Linear, scaling: str = "row") -> Fp8Linear:
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.in_features, new.out_features = linear.in_features, linear.out_features
        new.weight, new.bias = linear.weight, linear.bias
        new.scaling = scaling
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fp8_linear(x, self.weight, self.bias, scaling=self.scaling)


class SparseFp8Linear(Fp8Linear, NMSparse):
    """An Fp8Linear computing with an N:M-masked weight: 2:4 training on fp8 matmuls (koi-quant's `sparsify_` drives it).

    The masked weight goes to fp8 like any other (a pruned zero stays zero), on the dense fp8
    matmul: PyTorch's semi-structured kernels take no fp8 weights with these scales, and on the
    cards measured its bf16 2:4 kernels ran slower than dense (koi-quant's sparsity module). The
    gradient reaches the whole dense weight, straight through, as for koi-quant's sparse layers.
    """

    @classmethod
    def from_fp8_linear(cls, layer: Fp8Linear, n: int = 2, m: int = 4, kernel: str = "auto") -> SparseFp8Linear:
        if kernel == "semi_structured":
            raise ValueError("fp8 matmuls with an N:M mask run as masked dense fp8 matmuls; "
                             "expected kernel 'auto' or 'masked', got 'semi_structured'")
        new = cls.from_linear(layer, layer.scaling)
        init_sparsity(new, n, m, kernel)
        return new

    def compute_weight(self) -> torch.Tensor:
        return masked_straight_through(self.weight, self.weight, self.mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fp8_linear(x, self.compute_weight(), self.bias, scaling=self.scaling)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, scaling={self.scaling}, sparsity={self.nm[0]}:{self.nm[1]}, active={self.active}"
