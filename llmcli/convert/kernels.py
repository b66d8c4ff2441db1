"""Fast encoders for convert, bit-identical to the numpy code llama.cpp's converter runs.

float32 -> float16 (numpy's `astype(np.float16)`): numpy's cast runs ~220 M values/s here; this
numba kernel uses the CPU's half conversion (`vcvtps2ph`, round to nearest even, like numpy), ~10 G
values/s on one core. NaNs are the one place the two differ (the CPU sets the quiet bit, numpy keeps
the payload), so the kernel counts them and, when there are any, those few positions are redone
with numpy: the bytes always equal numpy's.

    src: float32[n]  ->  dst: uint16[n]   (IEEE binary16 bit patterns)

float32 -> Q8_0 (gguf-py's numpy quantizer, which the converter uses): the same float32 operations
per block, ~10x faster; blocks holding inf/NaN send the tensor back to the numpy code.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from ..quants.half import fp32_to_fp16


@njit(cache=True, parallel=True, nogil=True)
def _f32_to_f16(src, dst):
    """dst[i] = fp16 bits of src[i]; returns how many src values are NaN (a float32 NaN, and only a
    NaN, becomes an fp16 NaN: exponent all ones and a nonzero fraction). One flat loop with the count
    as numba's reduction vectorises (2M values, 1 thread: 0.21 ms); a loop between computed bounds
    per chunk, counting `x != x`, did not (1.9 ms: most of a 7B convert's encoding time; see
    quants/floats.py on such loops)."""
    n_nan = 0
    for i in prange(src.shape[0]):
        h = fp32_to_fp16(src[i])
        dst[i] = h
        n_nan += np.int32((h & np.uint16(0x7FFF)) > np.uint16(0x7C00))
    return n_nan


def f32_to_f16(a: np.ndarray) -> np.ndarray:
    """float32 array -> float16 array (same shape), exactly as `a.astype(np.float16)`."""
    src = np.ascontiguousarray(a, dtype=np.float32).reshape(-1)
    dst = np.empty(src.shape[0], dtype=np.uint16)
    if _f32_to_f16(src, dst):
        nan = np.isnan(src)
        dst[nan] = src[nan].astype(np.float16).view(np.uint16)
    return dst.view(np.float16).reshape(a.shape)


@njit(cache=True, parallel=True, nogil=True)
def _q8_0(blocks, out):
    """gguf-py's numpy Q8_0, block by block; returns the number of blocks with a non-finite value
    (the caller redoes those tensors with numpy, whose NaN/inf results are what the converter writes).

    block (32 float32) -> [ d: fp16 | q[32]: int8 ]
        d = max|x| / 127 (float32), inv = 1/d (0 when d == 0), q = round-half-away(x * inv)
    """
    n_bad = 0
    for b in prange(blocks.shape[0]):
        amax = np.float32(0)
        bad = 0
        for k in range(32):
            v = abs(blocks[b, k])
            if not (v < np.float32(np.inf)):
                bad = 1
            if v > amax:
                amax = v
        n_bad += bad
        d = amax / np.float32(127)
        inv = np.float32(0) if d == 0 else np.float32(1) / d
        h = fp32_to_fp16(d)
        out[b, 0] = np.uint8(h & 0xFF)
        out[b, 1] = np.uint8(h >> 8)
        for k in range(32):
            x = blocks[b, k] * inv
            m = abs(x)
            fl = np.float32(math.floor(m))
            r = fl + np.float32(math.floor(np.float32(2) * (m - fl)))
            q = np.int32(r)
            if x < 0:
                q = -q
            out[b, 2 + k] = np.uint8(q & 0xFF)
    return n_bad


def q8_0_blocks(a: np.ndarray, fallback) -> np.ndarray:
    """float32 values (a multiple of 32) -> Q8_0 blocks (n_blocks, 34) uint8, exactly as `fallback`
    (the numpy reference) computes them."""
    blocks = np.ascontiguousarray(a, dtype=np.float32).reshape(-1, 32)
    out = np.empty((blocks.shape[0], 34), dtype=np.uint8)
    if _q8_0(blocks, out):
        return fallback(blocks)
    return out
