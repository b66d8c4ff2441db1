"""Ternary formats TQ1_0 and TQ2_0: every weight is d * t with t in {-1, 0, 1}, d per 256 weights.

Made for models trained ternary (BitNet b1.58, TriLMs); on other weights they lose a lot. Both
quantizers are ggml's `quantize_row_tq1_0_ref` / `quantize_row_tq2_0_ref` (ggml has no weighted
variant: `quantize_tq*_0` ignore importance weights, so llama-quantize writes the same bytes with or
without an imatrix): d = the largest magnitude in the block, t = lroundf(x / d) computed as
x * (1/d) in float32, rounded half away from zero. Dequantizers are `dequantize_row_tq*_0`.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..gguf.constants import TYPE_INFO, GGMLType
from .half import read_fp16
from .kquant_search import max_abs
from .legacy import blockwise_quantizer, roundf, store_scale
from .registry import Codec, Decoder, register

QK_K = 256
F32 = np.float32


@njit(inline="always")
def _trit(v):
    """lroundf(v) + 1: -1, 0, 1 -> 0, 1, 2 (ggml adds the three-valued digit as an int)."""
    return np.int32(roundf(v)) + 1


# ---------------------------------------------------------------------------------------------
# TQ1_0, 54 bytes per 256 weights: 1.6875 bits per weight, five trits per byte.
#
#   byte  0                    32             48        52     54
#         +--------------------+--------------+---------+------+
#         | qs[0:32]           | qs[32:48]    | qh[4]   |  d   |
#         | weights 0..159     | 160..239     | 240..255| fp16 |
#         +--------------------+--------------+---------+------+
# qs[m] (m < 32) holds the trits of weights m, m+32, m+64, m+96, m+128 (first = most significant);
# qs[32+m] (m < 16) those of 160+m, 160+m+16, ..., 160+m+64; qh[j] four trits, of 240+j, 244+j,
# 248+j, 252+j, then a zero trit. A byte stores its base-3 number n (0..242) as ceil(n * 256 / 243),
# so that trit k is the top of the 8-bit product: ((uint8)(byte * 3^k) * 3) >> 8.

POW3 = np.array([1, 3, 9, 27, 81, 243], dtype=np.int32)


@njit(inline="always")
def _pack_trits(x, b, first, stride, count, inv):
    """The byte for `count` trits of weights first, first + stride, ... (then 5 - count zero
    trits), as ggml stores it (a uint8 accumulation, then the ceiling division)."""
    q = 0
    for n in range(count):
        q = (q * 3 + _trit(x[b, first + n * stride] * inv)) & 0xFF
    for n in range(count, 5):
        q = (q * 3) & 0xFF
    return (q * 256 + 242) // 243


@njit(parallel=True, cache=True)
def _quantize_tq1_0(x, out):
    for b in prange(x.shape[0]):
        inv = store_scale(out, b, 52, max_abs(x[b]))   # d: the block's largest magnitude
        for m in range(32):
            out[b, m] = _pack_trits(x, b, m, 32, 5, inv)
        for m in range(16):
            out[b, 32 + m] = _pack_trits(x, b, 160 + m, 16, 5, inv)
        for j in range(4):
            out[b, 48 + j] = _pack_trits(x, b, 240 + j, 4, 4, inv)


@njit(inline="always")
def trit_code(byte, k):
    """Trit k (0 = most significant) of a TQ1_0 byte as its code t + 1 (0, 1, 2): the top of the
    8-bit product ((uint8)(byte * 3^k) * 3) >> 8."""
    return (((np.int32(byte) * POW3[k]) & 0xFF) * 3) >> 8


@njit(inline="always")
def tq1_0_codes(block, out):
    """out[k] = t + 1 (0, 1, 2) of weight k < 256 of one TQ1_0 block (uint8 (54,)), natural order;
    `out` any array of numbers (the dequantizer writes its float32 row, the engine's mat-vec a
    uint8 scratch block). The one walk over the layout above."""
    for n in range(5):
        for m in range(32):
            out[32 * n + m] = trit_code(block[m], n)
    for n in range(5):
        for m in range(16):
            out[160 + 16 * n + m] = trit_code(block[32 + m], n)
    for n in range(4):
        for j in range(4):
            out[240 + 4 * n + j] = trit_code(block[48 + j], n)


@njit(parallel=True, cache=True, nogil=True)
def _dequantize_tq1_0(raw, y):
    for b in prange(raw.shape[0]):
        d = read_fp16(raw[b], 52)
        tq1_0_codes(raw[b], y[b])
        for k in range(QK_K):
            y[b, k] = (y[b, k] - F32(1.0)) * d


# ---------------------------------------------------------------------------------------------
# TQ2_0, 66 bytes per 256 weights: 2.0625 bits per weight, a 2-bit field t + 1 per weight.
#
#   byte  0                          32                          64     66
#         +--------------------------+---------------------------+------+
#         | qs[0:32]: weights 0..127 | qs[32:64]: weights 128..255 |  d   |
#         +--------------------------+---------------------------+------+
# qs[32h + m], bits 2l..2l+1 = t + 1 of weight 128h + 32l + m (field value 3, never written by the
# quantizer, reads as t = 2).

@njit(parallel=True, cache=True)
def _quantize_tq2_0(x, out):
    for b in prange(x.shape[0]):
        inv = store_scale(out, b, 64, max_abs(x[b]))
        for h in range(2):
            for m in range(32):
                q = 0
                for n in range(4):
                    q += (_trit(x[b, 128 * h + 32 * n + m] * inv) & 3) << (2 * n)
                out[b, 32 * h + m] = q & 0xFF


@njit(parallel=True, cache=True, nogil=True)
def _dequantize_tq2_0(raw, y):
    for b in prange(raw.shape[0]):
        d = read_fp16(raw[b], 64)
        for h in range(2):
            for n in range(4):
                for m in range(32):
                    t = ((np.int32(raw[b, 32 * h + m]) >> (2 * n)) & 3) - 1
                    y[b, 128 * h + 32 * n + m] = F32(t) * d


# type -> (quantize kernel, dequantize kernel); kernels take (n_blocks, 256) f32 and
# (n_blocks, block_bytes) u8 views.
KERNELS = {
    GGMLType.TQ1_0: (_quantize_tq1_0, _dequantize_tq1_0),
    GGMLType.TQ2_0: (_quantize_tq2_0, _dequantize_tq2_0),
}

for _type, (_quantize, _dequantize) in KERNELS.items():
    assert TYPE_INFO[_type].block_size == QK_K
    _decoder = Decoder(_dequantize, _type)
    register(Codec(_type, _decoder.dequantize, blockwise_quantizer(_quantize, _type), decoder=_decoder))
