"""Fast float32 -> float16 for convert, bit-identical to numpy's `astype(np.float16)`.

numpy's float16 cast runs ~40 M values/s here; this numba kernel uses the CPU's half conversion
(`vcvtps2ph`, round to nearest even, like numpy) and is ~4x faster. NaNs are the one place the two
differ (the CPU sets the quiet bit, numpy keeps the payload), so the kernel counts them and, when
there are any, those few positions are redone with numpy: the bytes always equal numpy's.

    src: float32[n]  ->  dst: uint16[n]   (IEEE binary16 bit patterns)
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..quants.half import fp32_to_fp16

_CHUNK = 1 << 16


@njit(cache=True, parallel=True)
def _f32_to_f16(src, dst):
    """dst[i] = fp16 bits of src[i]; returns how many src values are NaN."""
    n = src.shape[0]
    n_nan = 0
    for c in prange((n + _CHUNK - 1) // _CHUNK):
        lo = c * _CHUNK
        hi = min(n, lo + _CHUNK)
        k = 0
        for i in range(lo, hi):
            x = src[i]
            dst[i] = fp32_to_fp16(x)
            k += x != x
        n_nan += k
    return n_nan


def f32_to_f16(a: np.ndarray) -> np.ndarray:
    """float32 array -> float16 array (same shape), exactly as `a.astype(np.float16)`."""
    src = np.ascontiguousarray(a, dtype=np.float32).reshape(-1)
    dst = np.empty(src.shape[0], dtype=np.uint16)
    if _f32_to_f16(src, dst):
        nan = np.isnan(src)
        dst[nan] = src[nan].astype(np.float16).view(np.uint16)
    return dst.view(np.float16).reshape(a.shape)
