"""`koi-train export`: a Koi checkpoint (or run folder) -> HF safetensors + config.json.

A low-bit run exports what it computes with: each quantized layer's weights as the dequantized
values its forward used (koi-quant's `dequantize_`), so the exported float model's logits are
the low-bit model's. Layers on fp8 matmuls keep their master weights (fp8 is their compute
format, like bf16 autocast, not a property of the stored weight). A sparse run exports its
2:4-masked weights as plain (zero-holding) matrices, without the activation predictors: the
exported model is the dense model the run evaluated as ``val_loss``.
"""

from __future__ import annotations

from pathlib import Path

from koi_quant import dequantize_

from .errors import ExportError
from .hf_io import save_hf
from .load_model import load_trained_model
from .sparsity import remove_predictors


def export_checkpoint(checkpoint: str, output: str, expert: int | None = None) -> list[Path]:
    model = load_trained_model(checkpoint, expert)
    remove_predictors(model)
    try:
        dequantize_(model)
    except ValueError as exc:
        raise ExportError(checkpoint, "precision.activations", str(exc)) from None
    return save_hf(model, output)
