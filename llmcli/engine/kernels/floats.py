"""Mat-vec kernels for the unquantized weight types F32, F16 and BF16 (the prompt GEMM widens
F16 and BF16 rows with their codecs' kernels, quants/floats.py; F32 rows are copied).

The rows are viewed as float32 / uint16 arrays `(rows, n_cols)`; n_cols needs no particular
multiple. Each row is one `simd.row_dot_float` (explicit vector lanes in a fixed order, so a column
of a B-column product equals its lone mat-vec bit for bit).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ...gguf.constants import GGMLType
from .common import COLUMN_BLOCK, ROW_TILE, Format, columns
from .simd import row_dot_float


@njit(inline="always")
def _float_rows(w, x, out, kind):
    X, Y = columns(x, out)
    n_rows = w.shape[0]
    for tile in prange((n_rows + ROW_TILE - 1) // ROW_TILE):
        for t0 in range(0, Y.shape[0], COLUMN_BLOCK):  # a block of columns over the tile's rows
            for r in range(tile * ROW_TILE, min(n_rows, (tile + 1) * ROW_TILE)):
                row_dot_float(w[r], X, kind, Y, r, t0, min(COLUMN_BLOCK, Y.shape[0] - t0))


@njit(parallel=True, cache=True, nogil=True)
def matvec_f32(w, x, out):
    _float_rows(w, x, out, "f32")


@njit(parallel=True, cache=True, nogil=True)
def matvec_f16(w, x, out):
    _float_rows(w, x, out, "f16")


@njit(parallel=True, cache=True, nogil=True)
def matvec_bf16(w, x, out):
    _float_rows(w, x, out, "bf16")


@njit(parallel=True, cache=True, nogil=True)
def dequant_f32(w, out):  # F32 rows need no decoding: a copy into the GEMM's tile
    for r in prange(w.shape[0]):
        for k in range(w.shape[1]):
            out[r, k] = w[r, k]


FORMATS = {
    GGMLType.F32: Format((), matvec_f32, dequant_f32, np.float32),
    GGMLType.F16: Format((), matvec_f16, element=np.uint16),
    GGMLType.BF16: Format((), matvec_bf16, element=np.uint16),
}
