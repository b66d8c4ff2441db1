"""numba kernels that multiply by ggml's quantized blocks in place, one module per block family.

`FORMATS` maps each supported GGMLType to its `Format` (mat-vec kernel, dequantize kernel - the
type's codec decoder from quants/ - the activation view shape they index, and for some types an
8-bit-activation mat-vec, int8.py). Every mat-vec kernel also takes B activation rows at once
(common.py, "Columns"). `llmcli.engine.matmul` is the public API over them.
"""

from __future__ import annotations

from ...quants import get_codec
from . import floats, gemm_int8, int8, int8_kquants, iq1, iq2, iq3, kquants, legacy, ternary
from .common import Format
from .gemm import gemm_nt, gemm_panels, pack_panels

FORMATS: dict = {**floats.FORMATS, **legacy.FORMATS, **kquants.FORMATS, **iq2.FORMATS, **iq3.FORMATS,
                 **iq1.FORMATS, **ternary.FORMATS}
for _type, _format in FORMATS.items():
    if _format.dequant is None:  # the codec's decoder (quants/): each block layout decoded in one place
        _format.dequant = get_codec(_type).decoder
for _kernels in (int8.INT8_MATVECS, int8_kquants.INT8_KQUANT_MATVECS, iq2.INT8_MATVECS, iq3.INT8_MATVECS,
                 iq1.INT8_MATVECS, ternary.INT8_MATVECS):
    for _type, _kernel in _kernels.items():
        FORMATS[_type].with_int8(_kernel)

__all__ = ["FORMATS", "Format", "gemm_int8", "gemm_nt", "gemm_panels", "pack_panels"]
