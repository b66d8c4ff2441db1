"""ggml block formats: quantize and dequantize byte-exactly as ggml does, one module per family.

Importing this package registers every codec; use `quantize`, `dequantize` and `get_codec`.
"""

from . import floats, iquants, legacy  # noqa: F401  (register their codecs)
from . import kquants  # noqa: F401  (registers Q2_K..Q6_K, Q8_K)
from .registry import CODECS, Codec, dequantize, get_codec, quantizable_types, quantize, register

__all__ = ["CODECS", "Codec", "dequantize", "get_codec", "quantizable_types", "quantize", "register"]
