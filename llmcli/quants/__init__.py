"""ggml block formats: quantize and dequantize byte-exactly as ggml does, one module per family.

Importing this package registers every codec; use `quantize`, `dequantize` and `get_codec`.
"""

from . import floats, iq2, iquants, legacy, ternary  # noqa: F401  (register their codecs)
from . import kquants  # noqa: F401  (registers Q2_K..Q6_K, Q8_K)
from . import iq1, iq3  # noqa: F401  (IQ1_S, IQ1_M, IQ3_XXS, IQ3_S)
from .registry import CODECS, Codec, dequantize, get_codec, quantizable_types, quantize, register

__all__ = ["CODECS", "Codec", "dequantize", "get_codec", "quantizable_types", "quantize", "register"]
