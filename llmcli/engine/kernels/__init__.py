"""numba kernels that multiply by ggml's quantized blocks in place, one module per block family.

`FORMATS` maps each supported GGMLType to its `Format` (mat-vec kernel, dequantize kernel, and
the activation view shape they index). `llmcli.engine.matmul` is the public API over them.
"""

from __future__ import annotations

from . import floats, kquants, legacy
from .common import Format
from .gemm import gemm_nt, gemm_panels, pack_panels

FORMATS: dict = {**floats.FORMATS, **legacy.FORMATS, **kquants.FORMATS}

__all__ = ["FORMATS", "Format", "gemm_nt", "gemm_panels", "pack_panels"]
