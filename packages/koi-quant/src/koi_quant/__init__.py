"""koi-quant: low-bit formats, tile/group scales, bit packing, straight-through training, 2:4 sparsity.

    from koi_quant import quantize_, memory_table, sparsify_
    quantize_(model, {"*.mlp.*": "ternary", "*.attn.*": "int8"})
    sparsify_(model, {"*.mlp.*": "2:4"})  # after quantize_: the mask applies to the quantized weight
    print(memory_table(model))
"""

from importlib import metadata

from .activation_sparsity import LowRankPredictor, gathered_mlp, predictor_loss, recall, top_mask, train_alongside
from .formats import FLOAT_FORMATS, FORMATS, NF4_LEVELS, QuantFormat, format_bytes_per_param, get_format
from .granularity import PER_ROW, PER_TENSOR, Granularity, per_group, per_tile
from .learned_scale import learned_scale_quantize
from .modules import QuantLinear, dequantize_, effective_weight, quantize_, set_quantization_strength
from .packing import pack_bits, pack_trits, unpack_bits, unpack_trits
from .quantize import QuantizedTensor, fake_quantize, quantize
from .report import memory_table
from .sparsity import (
    MaskSchedule,
    NMSparse,
    SparseLinear,
    SparseQuantLinear,
    init_sparsity,
    masked_straight_through,
    nm_mask,
    sparse_layers,
    sparsify_,
    update_masks_,
)
from .ste import fake_quantize_ste, quantize_activations_int8

try:
    __version__ = metadata.version("koi-quant")  # the one place it is written is pyproject.toml
except metadata.PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
__all__ = [
    "FLOAT_FORMATS", "FORMATS", "Granularity", "LowRankPredictor", "MaskSchedule", "NF4_LEVELS", "NMSparse", "PER_ROW", "PER_TENSOR",
    "QuantFormat", "QuantLinear", "QuantizedTensor", "SparseLinear", "SparseQuantLinear", "dequantize_", "effective_weight",
    "fake_quantize", "fake_quantize_ste", "format_bytes_per_param", "gathered_mlp", "get_format", "init_sparsity",
    "learned_scale_quantize", "masked_straight_through", "memory_table", "nm_mask", "pack_bits", "pack_trits", "per_group", "per_tile",
    "predictor_loss", "quantize", "quantize_", "quantize_activations_int8", "recall", "set_quantization_strength", "sparse_layers",
    "sparsify_", "top_mask", "train_alongside", "unpack_bits", "unpack_trits", "update_masks_",
]
