"""N:M weight sparsity (2:4 for the sparse tensor cores of Ampere and Hopper): `sparsify_`, trained from dense.

`sparsify_(model, {"*.mlp.*": "2:4"})` swaps matched Linear layers, in place, for `SparseLinear`
(or `SparseQuantLinear` when `quantize_` ran first: the mask then applies to the quantized
weight). Each keeps its dense latent weight as the same Parameter and a boolean ``mask`` buffer
(saved in checkpoints, so a resumed run computes with the mask it had). Forward multiplies by
``weight * mask``; the gradient reaches the whole dense weight unchanged (straight through, as
SR-STE does), so a pruned weight that grows back into a group's top two is kept at the next
mask update. `MaskSchedule` trains dense for ``dense_steps``, then recomputes every mask from
the latent magnitudes every ``recompute_every`` steps.

By default ("auto") a sparse layer is a masked dense matmul: on an H200 (BENCHMARKS.md, seventh
session) PyTorch's semi-structured kernels ran the MLP forward of GPT-2 124M and 1558M at
0.10-0.36x the dense bf16 matmul (cuSPARSELt; CUTLASS refuses compute capability 9.0) and a
whole 124M step at 0.88x, while the masked matmul kept the step at 1.00x. ``kernel=
"semi_structured"`` asks for those kernels anyway (to measure them, or on a card where they pay):
a 2:4 layer in bf16/fp16 whose shape they accept then runs its forward inside one registered op
(`koi_quant::semi_structured_matmul`) so torch.compile keeps it whole. Its input gradient is a
dense matmul: the mask is 2:4 along the input dimension, which the transposed product does not
contract over.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .modules import QuantLinear, refuse_unmatched, set_module
from .ste import quantize_activations_int8

# auto: the path measured fastest, masked dense on every card measured so far (the module docstring says why)
KERNELS = ("auto", "masked", "semi_structured")
DENSE = "dense"


def parse_pattern(text: str) -> tuple[int, int]:
    """"2:4" -> (2, 4): keep n of every m consecutive weights along the input dimension."""
    n, sep, m = text.partition(":")
    if not sep or not n.isdigit() or not m.isdigit() or not 0 < int(n) < int(m):
        raise ValueError(f"unknown sparsity {text!r}; expected 'N:M' with 0 < N < M (e.g. '2:4') or {DENSE!r}")
    return int(n), int(m)


def nm_mask(weight: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """Boolean mask keeping the ``n`` largest-magnitude weights of every ``m`` consecutive inputs of each row."""
    rows, cols = weight.shape
    groups = weight.detach().abs().reshape(rows, cols // m, m)  # (out, in/m, m)
    keep = groups.topk(n, dim=-1).indices
    return torch.zeros(groups.shape, dtype=torch.bool, device=weight.device).scatter_(-1, keep, True).reshape(rows, cols)


def masked_straight_through(value: torch.Tensor, source: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``value * mask`` in forward; in backward ``source`` gets the full gradient, pruned entries included.

    Kept entries pass their gradient through ``value`` (so a learned quantization scale still sees
    them); pruned entries get it through the zero-valued second term.
    """
    keep = mask.to(value.dtype)
    return value * keep + (source - source.detach()) * (1 - keep)


# The fast path ------------------------------------------------------------------------------------

def semi_structured_applies(weight: torch.Tensor, n: int = 2, m: int = 4) -> bool:
    """Whether the semi-structured kernels take this weight: 2:4, CUDA sm80+, rows % 32 and columns % 64.

    Checked once when a mask switches on (not in the forward, where torch.compile would trace it);
    the forward still asks for bf16/fp16 compute, the dtypes those kernels multiply.
    """
    if (n, m) != (2, 4) or not weight.is_cuda:
        return False
    rows, cols = weight.shape
    return rows % 32 == 0 and cols % 64 == 0 and torch.cuda.get_device_capability(weight.device) >= (8, 0)


@torch.library.custom_op("koi_quant::semi_structured_matmul", mutates_args=())
def semi_structured_matmul(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x @ weight.T`` for a 2:4-sparse ``weight`` (out, in), on the sparse tensor cores when on CUDA.

    The weight changes every step, so it is compressed on every call (a pass over the weight,
    small next to the matmul at training batch sizes). Off CUDA it is the dense product, which
    lets the CPU tests check this op's gradients and its behaviour under torch.compile.
    """
    if not x.is_cuda:
        return x @ weight.t()
    from torch.sparse import to_sparse_semi_structured

    with torch.autocast("cuda", enabled=False):  # the caller cast both operands to the compute dtype already
        # the sparse kernels hand back a column-major product; the op promises a row-major one (its fake says so)
        return F.linear(x.contiguous(), to_sparse_semi_structured(weight.contiguous())).contiguous()


@semi_structured_matmul.register_fake
def _(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return x.new_empty(x.shape[0], weight.shape[0])


def _save_operands(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs)


def _semi_structured_backward(ctx, grad: torch.Tensor):
    """Dense: dx = grad @ weight (contracts over outputs, which the 2:4 pattern does not run along); dw = grad^T @ x."""
    x, weight = ctx.saved_tensors
    grad_x = grad @ weight if ctx.needs_input_grad[0] else None
    grad_w = grad.t() @ x if ctx.needs_input_grad[1] else None
    return grad_x, grad_w


semi_structured_matmul.register_autograd(_semi_structured_backward, setup_context=_save_operands)


def sparse_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, *, use_kernel: bool) -> torch.Tensor:
    """``F.linear`` with an already-masked weight; through the sparse kernel when ``use_kernel``."""
    if not use_kernel:
        return F.linear(x, weight.to(x.dtype), bias)
    dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
    flat = semi_structured_matmul(x.reshape(-1, x.shape[-1]).to(dtype), weight.to(dtype))
    out = flat.reshape(*x.shape[:-1], weight.shape[0])
    return out + bias.to(out.dtype) if bias is not None else out


# The layers ---------------------------------------------------------------------------------------

class NMSparse:
    """Marks a Linear that computes with an N:M-masked weight; `MaskSchedule` and `update_masks_` drive every such layer.

    A layer of another package joins by subclassing it next to its Linear class, calling
    `init_sparsity` when built, and computing with ``weight * mask`` (straight through: see
    `masked_straight_through`); `sparsify_(..., builders=)` swaps it in. koi-kernels' sparse fp8
    layer is one.
    """

    nm: tuple[int, int]  # keep nm[0] of every nm[1] weights along the input dimension
    kernel: str  # one of KERNELS
    active: bool  # a real N:M mask is set (until then the all-ones mask: dense)
    sparse_kernel: bool  # the forward runs on the semi-structured sparse kernels
    mask: torch.Tensor  # bool, the weight's shape; a buffer, so checkpoints carry it


def init_sparsity(layer: nn.Linear, n: int, m: int, kernel: str) -> None:
    """Give a new `NMSparse` layer its pattern, kernel choice and an all-ones mask buffer (dense until masks are set)."""
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; expected one of {', '.join(KERNELS)}")
    layer.nm, layer.kernel = (n, m), kernel
    layer.active = False  # dense until the schedule first sets a mask; the kernel path needs a real 2:4 mask
    layer.sparse_kernel = False  # set with active: whether this layer's forward runs on the sparse tensor cores
    layer.register_buffer("mask", torch.ones_like(layer.weight, dtype=torch.bool))


def _use_kernel(layer: nn.Linear, x: torch.Tensor) -> bool:
    if not layer.sparse_kernel:
        return False
    dtype = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else x.dtype
    return dtype in (torch.bfloat16, torch.float16)


def switch_on(layer: nn.Linear) -> None:
    """The layer's mask is a real N:M mask from now on: compute with it (on the sparse kernels if asked and they apply)."""
    layer.active = True
    layer.sparse_kernel = layer.kernel == "semi_structured" and semi_structured_applies(layer.weight, *layer.nm)


class SparseLinear(nn.Linear, NMSparse):
    """A Linear computing with ``weight * mask`` (an N:M mask), its gradient straight through to the dense weight."""

    @classmethod
    def from_linear(cls, linear: nn.Linear, n: int = 2, m: int = 4, *, kernel: str = "auto") -> SparseLinear:
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.in_features, new.out_features = linear.in_features, linear.out_features
        new.weight, new.bias = linear.weight, linear.bias  # the same Parameters: tying and optimizer state survive
        init_sparsity(new, n, m, kernel)
        return new

    def compute_weight(self) -> torch.Tensor:
        return masked_straight_through(self.weight, self.weight, self.mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sparse_linear(x, self.compute_weight(), self.bias, use_kernel=_use_kernel(self, x))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, sparsity={self.nm[0]}:{self.nm[1]}, active={self.active}"


class SparseQuantLinear(QuantLinear, NMSparse):
    """A QuantLinear whose quantized weight is N:M-masked: what a 2:4 int8/fp8 deployment computes with."""

    @classmethod
    def from_quant_linear(cls, layer: QuantLinear, n: int = 2, m: int = 4, *, kernel: str = "auto") -> SparseQuantLinear:
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.in_features, new.out_features = layer.in_features, layer.out_features
        new.weight, new.bias, new.weight_scale = layer.weight, layer.bias, layer.weight_scale  # the same Parameters
        new.format, new.granularity, new.quantize_activations = layer.format, layer.granularity, layer.quantize_activations
        init_sparsity(new, n, m, kernel)
        return new

    def compute_weight(self) -> torch.Tensor:
        return masked_straight_through(super().compute_weight(), self.weight, self.mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.quantize_activations:
            x = quantize_activations_int8(x)
        return sparse_linear(x, self.compute_weight(), self.bias, use_kernel=_use_kernel(self, x))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, sparsity={self.nm[0]}:{self.nm[1]}, active={self.active}"


def sparse_layers(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    return [(name, module) for name, module in model.named_modules() if isinstance(module, NMSparse)]


def _decay_pruned(layer: nn.Linear, decay: float):
    def hook(grad: torch.Tensor) -> torch.Tensor:
        return grad + decay * layer.weight.detach() * (~layer.mask).to(grad.dtype)
    return hook


SparseBuilder = Callable[[nn.Linear, int, int, str], nn.Linear]  # (layer, n, m, kernel) -> its NMSparse form


def sparsify_(model: nn.Module, plan: Mapping[str, str], *, kernel: str = "auto", decay: float = 0.0,
              builders: Mapping[type, SparseBuilder] | None = None) -> dict[str, list[str]]:
    """Swap, in place, each Linear whose name matches a plan pattern for an N:M sparse layer.

    ``plan`` maps fnmatch patterns to "2:4" (any "N:M") or "dense" (keep; first match wins, so a
    "dense" entry before a broad pattern excludes layers). Call it after `quantize_`. Layers start
    dense (all-ones mask): `MaskSchedule` or `update_masks_` sets the masks. ``decay`` > 0 adds
    SR-STE's ``decay * weight`` to the gradient of each pruned weight, pulling pruned weights
    toward zero so masks settle. ``kernel``: "auto" or "masked" (the masked dense matmul, the
    faster path on the cards measured) or "semi_structured" (the forward on the sparse tensor cores
    where they accept the layer). ``builders`` maps other Linear classes (exact type) to the
    function that builds their `NMSparse` form, e.g. koi-kernels' ``{Fp8Linear:
    SparseFp8Linear.from_fp8_linear}``. Returns pattern -> module names; a pattern that matches no
    Linear is an error.
    """
    patterns = {pattern: (None if value == DENSE else parse_pattern(value)) for pattern, value in plan.items()}
    matched: dict[str, list[str]] = {pattern: [] for pattern in plan}
    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.Linear):
            continue
        pattern = next((p for p in plan if fnmatch.fnmatchcase(name, p)), None)
        if pattern is None:
            continue
        matched[pattern].append(name)
        if patterns[pattern] is None:
            continue
        n, m = patterns[pattern]
        if isinstance(module, NMSparse):
            raise ValueError(f"{name} is already sparse ({module.nm[0]}:{module.nm[1]}); sparsify_ a model once")
        if module.in_features % m:
            raise ValueError(f"{name}: {module.in_features} inputs do not split into groups of {m}")
        if builders and type(module) in builders:
            new = builders[type(module)](module, n, m, kernel)
        elif type(module) is QuantLinear:
            new = SparseQuantLinear.from_quant_linear(module, n, m, kernel=kernel)
        elif type(module) is nn.Linear:
            new = SparseLinear.from_linear(module, n, m, kernel=kernel)
        else:
            known = ", ".join(["nn.Linear", "QuantLinear", *(t.__name__ for t in builders or {})])
            raise ValueError(f"{name}: cannot sparsify a {type(module).__name__}; expected one of {known}")
        if decay > 0:
            new.weight.register_hook(_decay_pruned(new, decay))
        set_module(model, name, new)
    refuse_unmatched(model, matched)
    return matched


@torch.no_grad()
def update_masks_(model: nn.Module) -> int:
    """Recompute every sparse layer's mask from its latent weight magnitudes and switch it on; returns how many."""
    layers = sparse_layers(model)
    for _, layer in layers:
        layer.mask.copy_(nm_mask(layer.weight, *layer.nm))
        switch_on(layer)
    return len(layers)


class MaskSchedule:
    """Dense for ``dense_steps`` steps, then masks from the latent weights, recomputed every ``recompute_every`` steps.

    `apply(model, step)` before each step. It is a function of the step alone (masks between
    updates come from the checkpointed buffers), so a resumed run follows the same schedule.
    """

    def __init__(self, dense_steps: int = 0, recompute_every: int = 100) -> None:
        if dense_steps < 0 or recompute_every < 1:
            raise ValueError(f"expected dense_steps >= 0 and recompute_every >= 1, got {dense_steps} and {recompute_every}")
        self.dense_steps, self.recompute_every = dense_steps, recompute_every

    def is_update_step(self, step: int) -> bool:
        return step >= self.dense_steps and (step - self.dense_steps) % self.recompute_every == 0

    def apply(self, model: nn.Module, step: int) -> bool:
        """Set the masks ``step`` trains with; True when they were recomputed at this step."""
        if step < self.dense_steps:
            return False
        if self.is_update_step(step):
            update_masks_(model)
            return True
        for _, layer in sparse_layers(model):
            if not layer.active:  # after a resume between updates: the checkpointed masks are in force
                switch_on(layer)
        return False
