"""`koi-train export`: a Koi checkpoint (or run folder) -> HF safetensors + config.json + tokenizer.

The tokenizer a run trained with is copied into its run folder at start (``tokenizer.json``, Koi's
format); export turns it into Hugging Face's ``tokenizer.json`` + ``tokenizer_config.json`` and
writes its ``<|endoftext|>`` id as bos/eos/pad into config.json, so the folder loads and tokenizes
in ``transformers`` with no Koi installed.

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
from koi_tokenizer import Tokenizer

from .errors import ExportError
from .hf_io import save_hf, save_hf_tokenizer
from .load_model import load_trained_model, resolve_checkpoint
from .sparsity import remove_predictors

RUN_TOKENIZER = "tokenizer.json"  # in the run folder, beside config.json


def run_tokenizer_path(checkpoint: str) -> Path | None:
    """The run's own tokenizer: in the folder given, or in the run folder that holds checkpoints/step_*.pt."""
    given = Path(checkpoint)
    step_file = Path(resolve_checkpoint(checkpoint))
    for folder in (given, given.parent, step_file.parent.parent):
        if (folder / RUN_TOKENIZER).is_file():
            return folder / RUN_TOKENIZER
    return None


def export_checkpoint(checkpoint: str, output: str, expert: int | None = None, *, log=print) -> list[Path]:
    model = load_trained_model(checkpoint, expert)
    remove_predictors(model)
    try:
        dequantize_(model)
    except ValueError as exc:
        raise ExportError(checkpoint, "precision.activations", str(exc)) from None
    tokenizer_path = run_tokenizer_path(checkpoint)
    if tokenizer_path is None:
        log(f"export: no {RUN_TOKENIZER} beside {checkpoint}: writing the weights without a tokenizer")
        return save_hf(model, output)
    tokenizer = Tokenizer.load(tokenizer_path)
    if tokenizer.vocab_size > model.spec.vocab_size:
        raise ExportError(tokenizer_path, "vocab_size", f"expected at most the model's {model.spec.vocab_size}, got {tokenizer.vocab_size}")
    return save_hf(model, output, eot_id=tokenizer.eot_id if tokenizer.special_tokens else None) + save_hf_tokenizer(tokenizer, output)
