"""Sparse training from the config (issue 27): 2:4 weight masks on a schedule, and MLP activation predictors.

Applied to a built model after the precision plan (a quantized layer's mask then applies to its
quantized weight) and before remat and compile. `SparseTraining` is the run's component: it
sets the masks before each step and, at evaluation, measures what the predictors would cost.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from koi_kernels import Fp8Linear, SparseFp8Linear, gathered_mlp_per_token
from koi_quant import LowRankPredictor, MaskSchedule, predictor_loss, sparsify_, top_mask, train_alongside

from .config import ConfigError, PrecisionConfig, SparsityConfig
from .models.gpt2 import MLP
from .models.llama import SwiGLU

# Up to this many tokens per call, the sparse evaluation gathers each token's own neurons (decoding);
# above it, it multiplies densely and zeroes the unpicked neurons, which gives the same numbers.
GATHER_MAX_TOKENS = 64


class PredictedMLP(nn.Module):
    """A GPT-2 MLP or a SwiGLU with a neuron predictor beside it; its Linear layers keep their names and Parameters.

    Training computes the whole MLP and trains the predictor on the true top neurons (the
    predictor sees the detached input, so the model trains as without it). Evaluation computes
    the whole MLP too, unless ``use_predictor`` is set: then only the predicted neurons.
    """

    def __init__(self, mlp: nn.Module, keep_fraction: float, rank: int) -> None:
        super().__init__()
        self.original = type(mlp)
        self.activation = "gelu_tanh" if isinstance(mlp, MLP) else "swiglu"  # koi-kernels' name for the hidden function
        self.up_names = ("c_fc",) if isinstance(mlp, MLP) else ("gate_proj", "up_proj")
        self.down_name = "c_proj" if isinstance(mlp, MLP) else "down_proj"
        for name in (*self.up_names, self.down_name):
            setattr(self, name, getattr(mlp, name))
        up = getattr(mlp, self.up_names[0])
        self.hidden_size = up.out_features
        self.keep = max(1, round(keep_fraction * self.hidden_size))
        self.predictor = LowRankPredictor(up.in_features, self.hidden_size, rank, device=up.weight.device)
        self.use_predictor = False
        self.recalls: list[float] | None = None  # filled during a measured sparse evaluation
        self._decode_weights: tuple[tuple, tuple[list[torch.Tensor], torch.Tensor]] | None = None  # (versions, weights)

    def hidden(self, *ups: torch.Tensor) -> torch.Tensor:
        if self.activation == "gelu_tanh":
            return F.gelu(ups[0], approximate="tanh")
        return F.silu(ups[0]) * ups[1]

    def dense_hidden(self, x: torch.Tensor) -> torch.Tensor:
        return self.hidden(*(getattr(self, name)(x) for name in self.up_names))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        down = getattr(self, self.down_name)
        if self.training:
            h = self.dense_hidden(x)  # (B, T, hidden)
            loss = predictor_loss(self.predictor(x.detach()), h, self.keep)
            return down(h) + train_alongside(loss)
        if not self.use_predictor:
            return down(self.dense_hidden(x))
        scores = self.predictor(x)  # (B, T, hidden)
        flat = x.reshape(-1, x.shape[-1])  # (N, C)
        if self.recalls is not None:
            true = top_mask(self.dense_hidden(x).abs(), self.keep)
            picked = top_mask(scores, self.keep)
            self.recalls.append(float((picked & true).sum() / true.sum()))
        if flat.shape[0] <= GATHER_MAX_TOKENS:
            index = scores.reshape(flat.shape[0], -1).topk(self.keep, dim=-1).indices  # (N, keep)
            up_weights, down_rows = self.decode_weights()
            out = gathered_mlp_per_token(flat, up_weights, [getattr(self, name).bias for name in self.up_names], down_rows,
                                         down.bias, index, self.activation)
            return out.reshape(x.shape)
        return down(self.dense_hidden(x) * top_mask(scores, self.keep))

    def decode_weights(self) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The up weights and the down weight transposed to (hidden, width), as computed with, kept until a layer changes.

        Decoding gathers a few rows of each per token. Recomputing them per call would pass over
        every whole matrix to read a quarter of it: the down weight's transpose is a copy, and a
        masked or quantized layer's weight is computed from its latent one.
        """
        layers = [getattr(self, name) for name in (*self.up_names, self.down_name)]
        version = tuple((t.data_ptr(), t._version) for layer in layers for t in (*layer.parameters(), *layer.buffers()))
        if self._decode_weights is None or self._decode_weights[0] != version:
            ups = [_weight(layer).detach() for layer in layers[:-1]]
            self._decode_weights = (version, (ups, _weight(layers[-1]).detach().t().contiguous()))
        return self._decode_weights[1]

    def to_plain(self) -> nn.Module:
        """The model's own MLP class again, holding the same layers (the predictor dropped)."""
        plain = self.original.__new__(self.original)
        nn.Module.__init__(plain)
        for name in (*self.up_names, self.down_name):
            setattr(plain, name, getattr(self, name))
        return plain


def _weight(layer: nn.Linear) -> torch.Tensor:
    """The weight a layer computes with: masked and quantized for koi-quant's layers."""
    return layer.compute_weight() if hasattr(layer, "compute_weight") else layer.weight


def add_predictors(model: nn.Module, keep_fraction: float, rank: int) -> list[str]:
    names = [name for name, module in model.named_modules() if isinstance(module, (MLP, SwiGLU))]
    for name in names:
        parent, _, child = name.rpartition(".")
        holder = model.get_submodule(parent) if parent else model
        setattr(holder, child, PredictedMLP(getattr(holder, child), keep_fraction, rank))
    return names


def remove_predictors(model: nn.Module) -> int:
    """Swap every PredictedMLP back for the plain MLP (for export: the exported model is the dense model)."""
    found = [(name, module) for name, module in model.named_modules() if isinstance(module, PredictedMLP)]
    for name, module in found:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, module.to_plain())
    return len(found)


class SparseTraining:
    """The run's sparsity: masks set before each step, predictor figures added to each evaluation."""

    def __init__(self, model: nn.Module, cfg: SparsityConfig, schedule: MaskSchedule | None) -> None:
        self.model, self.cfg, self.schedule = model, cfg, schedule

    @property
    def predictors(self) -> list[PredictedMLP]:
        return [m for m in self.model.modules() if isinstance(m, PredictedMLP)]

    def before_step(self, step: int) -> None:
        if self.schedule is not None:
            self.schedule.apply(self.model, step)

    def evaluate(self, estimate: Callable[[], float], dense_loss: float) -> dict:
        """The same evaluation with only the predicted neurons computed: its loss, the change, recall and skip."""
        predictors = self.predictors
        if not predictors:
            return {}
        for p in predictors:
            p.use_predictor, p.recalls = True, []
        try:
            sparse_loss = estimate()
            recalls = [r for p in predictors for r in p.recalls]
        finally:
            for p in predictors:
                p.use_predictor, p.recalls = False, None
        kept = sum(p.keep for p in predictors) / sum(p.hidden_size for p in predictors)
        return {"sparse_mlp_val_loss": sparse_loss, "sparse_mlp_loss_change": sparse_loss - dense_loss,
                "predictor_recall": sum(recalls) / max(len(recalls), 1), "mlp_neurons_skipped": 1 - kept}


def apply_sparsity(model: nn.Module, cfg: SparsityConfig, precision: PrecisionConfig) -> tuple[SparseTraining | None, list[str]]:
    """Sparsify the plan's layers and add the predictors; return the run's component (None if off) and report lines."""
    lines: list[str] = []
    schedule = None
    if cfg.plan:
        if precision.fp8_matmul and cfg.kernel == "semi_structured":
            raise ConfigError("", "sparsity.kernel", "layers on fp8 matmuls (precision.fp8_matmul) run 2:4 as masked dense fp8 "
                              "matmuls; expected 'auto' or 'masked', got 'semi_structured'")
        try:  # layers already on fp8 matmuls (the precision plan ran first) keep them, masked
            matched = sparsify_(model, cfg.plan, kernel=cfg.kernel, decay=cfg.decay,
                                builders={Fp8Linear: SparseFp8Linear.from_fp8_linear})
            schedule = MaskSchedule(cfg.dense_steps, cfg.recompute_every)
        except ValueError as exc:
            raise ConfigError("", "sparsity.plan", str(exc)) from None
        head = next(name for name, module in model.named_modules() if module is model.output_head)
        for pattern, names in matched.items():
            if head in names and cfg.plan[pattern] != "dense":
                raise ConfigError("", f"sparsity.plan.{pattern}", f"matches the output head {head!r}, which the fused loss "
                                  "multiplies directly; expected patterns for the blocks only, e.g. transformer.h.*.mlp.*")
        kernel = "sparse tensor cores for the forward of 2:4 bf16 layers on CUDA, masked dense elsewhere" \
            if cfg.kernel == "semi_structured" else "masked dense"
        lines.append(f"sparsity (dense for {cfg.dense_steps} steps, masks every {cfg.recompute_every} steps, {kernel}"
                     + (f", SR-STE decay {cfg.decay:g}" if cfg.decay else "") + "):")
        for pattern, value in cfg.plan.items():
            lines.append(f"  {pattern:<30} {value:<8} {len(matched[pattern]):>3} modules")
    predictor = cfg.activation_predictor
    if predictor.enabled:
        names = add_predictors(model, predictor.keep_fraction, predictor.rank)
        if not names:
            raise ConfigError("", "sparsity.activation_predictor.enabled", "the model has no GPT-2 MLP or SwiGLU to predict for")
        mlp = model.get_submodule(names[0])
        extra = sum(p.numel() for p in mlp.predictor.parameters())
        lines.append(f"activation predictor: rank {predictor.rank} on {len(names)} MLPs, keeps {mlp.keep} of {mlp.hidden_size} "
                     f"neurons per token at evaluation ({predictor.keep_fraction:.0%}); {extra * len(names):,} predictor parameters")
    if schedule is None and not predictor.enabled:
        return None, lines
    return SparseTraining(model, cfg, schedule), lines
