"""Start-of-run memory estimates: activations per remat mode (so the choice is an informed one),
and the whole step's peak by part (so a run that will not fit says so before it starts).

Counts the tensors a pre-norm transformer block keeps for backward, in units of B*T*C elements
(flash attention keeps no T x T scores; the fused loss keeps no B*T*V logits):
attention half: LN input, LN output, q, k, v, attention output = 6; MLP half: LN input, LN output,
up-projection output (4C), activation output (4C) = 10. Remat keeps only module inputs instead
and recomputes one block's worth during backward (after Korthikanti et al., 2022). Other block
shapes shift those counts (`BlockUnits`): a gated MLP keeps three hidden-sized tensors where
GPT-2's keeps two, grouped-query attention smaller k and v, and QK-norm 3 more units per layer
(measured, not derived: on an H200 the Llama-style 124M with QK-norm peaked 2.9 units per layer
above GPT-2 124M; its norms of the bf16 q and k promote to fp32 against their fp32 weights).
The LN inputs are the residual stream, which under autocast keeps the weights' dtype (fp32 unless
optimizer.weights is bf16); everything else is in the autocast dtype. Checked on an H200 against
torch.cuda.max_memory_allocated: GPT-2 124M (no remat, fp32 weights), 1558M (full remat) and
1558M with bf16 weights, 8-bit states stepped in backward all land within 8% (BENCHMARKS.md);
with the two corrections below, eight peaks measured on the card are a test (within 10%).

Without remat a compiled GPT-2 keeps 1.6 units per layer more than those named tensors: on an
H100 and an H200, GPT-2 124M at batch 32 (fp32 or bf16 weights, AdamW or 8-bit AdamW) and at
4 x 8 peaked 5-8% above the count, as 1.6 units would make it (measured, not derived).

When the peak falls: with one micro-batch, gradients appear as the kept activations are freed, so
they are never all there together. The peak is the larger of backward's start (every kept
activation and the output head's gradient) and its end (every gradient and the first block's
recompute). Summing both over-estimated 1558M with full remat by 8-14% (9.59 GiB measured against
10.89 with bf16 gradients, 24.68 against 26.57 with fp32); the larger of the two lands within 2%.
With accumulation the previous micro-batches' gradients are there from the start.

Compiled fp8 matmuls with row-fused scaling keep less: the quantization is traced with the
norm and the activation before each matmul, so the bf16 inputs of the q/k/v and up projections
(the norms' outputs) and of the down projection (the activation's output) are not kept. On an
H200 GPT-2 124M at batch 32 peaked 3.54 GiB below bf16 (9.58 against 13.12), 6.3 units per
layer, where those inputs make 6. Row and tile scaling (separate quantization kernels) and
eager runs measured no saving (the smoke matrix's peaks, BENCHMARKS.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .models.llama import LlamaSpec

# (residual-stream units, compute units) per layer: kept for backward, and one block's recompute
KEPT_PER_LAYER = {"none": (2, 14 + 1.6), "ffn": (2, 5), "selective": (2, 0), "full": (1, 0)}  # + 1.6: docstring
RECOMPUTED_PEAK = {"none": (0, 0), "ffn": (1, 10), "selective": (2, 14), "full": (2, 14)}
# which halves of the block (attention, MLP) those compute units cover: where a block's own shape shifts them
KEPT_HALVES = {"none": (1, 1), "ffn": (1, 0), "selective": (0, 0), "full": (0, 0)}
RECOMPUTED_HALVES = {"none": (0, 0), "ffn": (0, 1), "selective": (1, 1), "full": (1, 1)}


QK_NORM_UNITS = 3.0  # measured on an H200 (module docstring), per layer


@dataclass(frozen=True)
class BlockUnits:
    """Compute units one block keeps beyond GPT-2's layout (0, 0 for GPT-2 itself)."""

    attention: float = 0.0
    mlp: float = 0.0

    @classmethod
    def of(cls, spec, *, fp8_fused_inputs: bool = False) -> BlockUnits:
        """From a model spec: its MLP width and gating, its k/v heads, QK-norm; ``fp8_fused_inputs``:
        compiled fp8 matmuls with row-fused scaling, which keep no bf16 matmul inputs (module docstring)."""
        width = spec.n_embd
        gated = isinstance(spec, LlamaSpec)  # SwiGLU keeps gate, up and their product
        hidden = getattr(spec, "mlp_hidden", 4 * width)
        mlp = (3 if gated else 2) * hidden / width - 8
        kv_share = getattr(spec, "n_kv_head", spec.n_head) / spec.n_head
        attention = 2 * (kv_share - 1) + (QK_NORM_UNITS if getattr(spec, "qk_norm", False) else 0.0)
        if fp8_fused_inputs:  # the attention norm's output; the MLP norm's output and the down projection's input
            attention, mlp = attention - 1, mlp - 1 - hidden / width
        return cls(attention, mlp)

    def shift(self, halves: tuple[int, int]) -> float:
        """The units these halves (attention, MLP) add: 1 where a half is counted, 0 where not."""
        return halves[0] * self.attention + halves[1] * self.mlp


def activation_bytes(mode: str, *, batch: int, seq: int, width: int, layers: int, bytes_per_value: int = 2,
                     residual_bytes: int | None = None, block: BlockUnits = BlockUnits()) -> int:
    """Activation bytes held at the start of backward (plus the one block being recomputed)."""
    residual_bytes = bytes_per_value if residual_bytes is None else residual_bytes
    (kept_r, kept_c), (peak_r, peak_c) = KEPT_PER_LAYER[mode], RECOMPUTED_PEAK[mode]
    kept_c += block.shift(KEPT_HALVES[mode])
    peak_c += block.shift(RECOMPUTED_HALVES[mode])
    per_value = (kept_r * layers + peak_r) * residual_bytes + (kept_c * layers + peak_c) * bytes_per_value
    return int(per_value * batch * seq * width)


def remat_report(mode: str, *, batch: int, seq: int, width: int, layers: int, bytes_per_value: int,
                 residual_bytes: int | None = None, block: BlockUnits = BlockUnits()) -> str:
    sizes = {m: activation_bytes(m, batch=batch, seq=seq, width=width, layers=layers, bytes_per_value=bytes_per_value,
                                 residual_bytes=residual_bytes, block=block) for m in KEPT_PER_LAYER}
    table = ", ".join(f"{m} {b / 2**30:.2f}" for m, b in sizes.items())
    saved = 1 - sizes[mode] / sizes["none"]
    return f"remat {mode}: activations about {sizes[mode] / 2**30:.2f} GiB (estimate; GiB per mode: {table}; saves {saved:.0%})"


OPTIMIZER_STATE_BYTES = {  # bytes of optimizer state per parameter
    "adamw": 8.0,  # m and v in fp32 (Koi's bf16-weight AdamW keeps them fp32 too)
    "adamw8bit": 2.0 + 2 * 4 / 256,  # fp8 m and sqrt(v), one fp32 scale per 256 values each
    "lion": 4.0,  # one momentum in fp32
}
LOSS_CHUNK_LOGITS = 128 * 2**20  # the fused linear-CE's largest chunk of logits (koi_kernels.linear_cross_entropy)


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes of each part of a step's peak device memory (what torch.cuda.max_memory_allocated counts).

    ``not_together``: bytes of gradients and activations that are never held at the same moment
    (module docstring), taken off the sum of the parts.
    """

    weights: int
    gradients: int
    optimizer: int
    activations: int
    loss: int
    not_together: int = 0

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations + self.loss - self.not_together

    def line(self) -> str:
        parts = ", ".join(f"{name} {size / 2**30:.2f}" for name, size in vars(self).items() if name != "not_together")
        apart = f"; gradients and activations not all at once: -{self.not_together / 2**30:.2f}" if self.not_together else ""
        return f"memory: about {self.total / 2**30:.2f} GiB peak (estimate, GiB: {parts}{apart})"


def estimate_run_memory(model: nn.Module, *, optimizer: str, muon_matrices: int = 0, in_backward: bool, remat: str,
                        batch: int, seq: int, compute_bytes: int, residual_bytes: int,
                        block: BlockUnits | None = None, grad_accum: int = 1) -> MemoryEstimate:
    """A step's peak, from the parts that scale: weights, gradients, optimizer state, kept activations, loss.

    Gradients live in the parameters' dtype; stepped in backward, only one block's exist at once
    (and the output head's, complete from the start of backward). Muon keeps one fp32 momentum for its
    matrices and AdamW state for the rest. The fused loss keeps dhidden and an fp32 dW from its
    forward, plus one chunk of logits while it runs.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    weight_bytes = sum(p.numel() * p.element_size() for p in params)
    head = model.output_head.weight
    head_bytes = head.numel() * head.element_size() if head.requires_grad else 0
    if in_backward:
        gradient_bytes = max(sum(p.numel() * p.element_size() for p in block.parameters()) for block in model.blocks)
        gradient_bytes += head_bytes
    else:
        gradient_bytes = weight_bytes
    count = sum(p.numel() for p in params)
    if optimizer == "muon":
        state_bytes = muon_matrices * 4 + (count - muon_matrices) * OPTIMIZER_STATE_BYTES["adamw"]
    else:
        state_bytes = count * OPTIMIZER_STATE_BYTES.get(optimizer, OPTIMIZER_STATE_BYTES["adamw"])
    spec = model.spec
    units = block if block is not None else BlockUnits.of(spec)
    sizes = dict(batch=batch, seq=seq, width=spec.n_embd, bytes_per_value=compute_bytes, residual_bytes=residual_bytes, block=units)
    activations = activation_bytes(remat, layers=spec.n_layer, **sizes)
    not_together = 0
    if grad_accum == 1:  # backward's start (activations, the head's gradient) or its end (gradients, one recompute)
        recompute = activation_bytes(remat, layers=0, **sizes)
        start = activations + (gradient_bytes if in_backward else head_bytes)  # stepped in backward: all it holds
        not_together = activations + gradient_bytes - max(start, gradient_bytes + recompute)
    rows = batch * seq
    chunk = min(rows * spec.vocab_size, max(spec.vocab_size, LOSS_CHUNK_LOGITS // spec.vocab_size * spec.vocab_size))
    loss = rows * spec.n_embd * compute_bytes + spec.vocab_size * spec.n_embd * 4 + chunk * compute_bytes
    return MemoryEstimate(weight_bytes, gradient_bytes, int(state_bytes), activations, loss, not_together)
