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
from .common import Format, columns, row_dots
from .simd import row_dot_float


@njit(inline="always")
def _float_rows(w, x, out, kind):
    X, Y = columns(x, out)
    row_dots(w, Y, _row_dot, kind, X)


@njit(inline="always")
def _row_dot(row, X, kind, Y, r, t0, n_t):  # common.row_dots' step
    row_dot_float(row, X, kind, Y, r, t0, n_t)


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
