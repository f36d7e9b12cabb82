"""koi-quant: low-bit formats, tile/group scales, bit packing and straight-through training.

    from koi_quant import quantize_, memory_table
    quantize_(model, {"*.mlp.*": "ternary", "*.attn.*": "int8"})
    print(memory_table(model))
"""

from importlib import metadata

from .formats import FLOAT_FORMATS, FORMATS, NF4_LEVELS, QuantFormat, format_bytes_per_param, get_format
from .granularity import PER_ROW, PER_TENSOR, Granularity, per_group, per_tile
from .learned_scale import learned_scale_quantize
from .modules import QuantLinear, dequantize_, effective_weight, quantize_
from .packing import pack_bits, pack_trits, unpack_bits, unpack_trits
from .quantize import QuantizedTensor, fake_quantize, quantize
from .report import memory_table
from .ste import fake_quantize_ste, quantize_activations_int8

try:
    __version__ = metadata.version("koi-quant")  # the one place it is written is pyproject.toml
except metadata.PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
__all__ = [
    "FLOAT_FORMATS", "FORMATS", "Granularity", "NF4_LEVELS", "PER_ROW", "PER_TENSOR", "QuantFormat", "QuantLinear",
    "QuantizedTensor", "dequantize_", "effective_weight", "fake_quantize", "fake_quantize_ste",
    "format_bytes_per_param", "get_format", "learned_scale_quantize", "memory_table", "pack_bits", "pack_trits",
    "per_group", "per_tile", "quantize", "quantize_", "quantize_activations_int8", "unpack_bits", "unpack_trits",
]
