"""Non-linear 4-bit formats IQ4_NL and IQ4_XS: quantize and dequantize as ggml does.

Both map a 4-bit index through ggml's fixed 16-entry table `kvalues_iq4nl` (a non-uniform grid,
denser near zero) and scale it; dequantizing equals ggml's `dequantize_row_iq4_nl` /
`dequantize_row_iq4_xs`. Quantizing equals what `ggml_quantize_chunk` runs (`quantize_iq4_nl` /
`quantize_iq4_xs`, with or without importance weights; both take ggml's `ntry = 7` search, so
llama-quantize writes them through the same code with or without an imatrix, only the weights
differ): per 32 weights a scale search over 15 grid stretches (see `_quantize_iq4`); IQ4_XS then
stores those 8 scales as 6-bit multiples of one fp16 super-block scale and re-picks the indices.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..gguf.constants import TYPE_INFO, GGMLType
from .half import read_fp16
from .kquant_search import GROUP_MAX_EPS, max_magnitude, nearest_int
from .legacy import inverse, store_scale, write_u16
from .registry import Codec, Decoder, register

F32 = np.float32

# ggml's IQ4 grid: the value each 4-bit index stands for, before scaling.
IQ4_GRID = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113],
                    dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# IQ4_NL, 18 bytes per 32 weights; weight = d * GRID[i]
#
#   byte  0      2                                  18
#         +------+----------------------------------+
#         |  d   | qs[16]: lo nibble = i[j]          |
#         | fp16 |         hi nibble = i[j + 16]     |
#         +------+----------------------------------+

@njit(parallel=True, cache=True, nogil=True)
def _dequantize_iq4_nl(raw, y):
    for b in prange(raw.shape[0]):
        d = read_fp16(raw[b], 0)
        for j in range(16):
            q = raw[b, 2 + j]
            y[b, j] = d * IQ4_GRID[q & 0x0F]
            y[b, j + 16] = d * IQ4_GRID[q >> 4]


# ---------------------------------------------------------------------------------------------
# IQ4_XS, 136 bytes per 256 weights = 8 sub-blocks of 32; weight = d * (ls - 32) * GRID[i]
#
#   byte  0      2          4             8                                        136
#         +------+----------+-------------+------------------------------------------+
#         |  d   | scales_h | scales_l[4] | qs[128]: sub-block s uses qs[16s..16s+15] |
#         | fp16 | u16 LE   |             |   lo nibble = i[32s + j]                  |
#         |      |          |             |   hi nibble = i[32s + j + 16]             |
#         +------+----------+-------------+------------------------------------------+
# 6-bit sub-block scale ls(s) = low 4 bits: nibble (s % 2) of scales_l[s // 2]
#                               high 2 bits: bits 2s..2s+1 of scales_h

@njit(inline="always")
def iq4_xs_scale(block, s):
    """ls(s) - 32: the signed 6-bit scale of sub-block s of one IQ4_XS block (a uint8 array)."""
    scales_h = np.int32(block[2]) | (np.int32(block[3]) << 8)
    low = (np.int32(block[4 + s // 2]) >> (4 * (s % 2))) & 0x0F
    return (low | (((scales_h >> (2 * s)) & 3) << 4)) - 32


@njit(parallel=True, cache=True, nogil=True)
def _dequantize_iq4_xs(raw, y):
    for b in prange(raw.shape[0]):
        d = read_fp16(raw[b], 0)
        for s in range(8):
            dl = d * np.float32(iq4_xs_scale(raw[b], s))
            for j in range(16):
                q = raw[b, 8 + 16 * s + j]
                y[b, 32 * s + j] = dl * IQ4_GRID[q & 0x0F]
                y[b, 32 * s + j + 16] = dl * IQ4_GRID[q >> 4]


# ---------------------------------------------------------------------------------------------
# Quantizing (ggml's quantize_row_iq4_nl_impl with ntry = 7), one super-block of nsub sub-blocks of
# 32 per prange iteration: IQ4_NL is nsub = 1 (d = that sub-block's scale), IQ4_XS nsub = 8.
#
# Per sub-block, weights w = qw * sqrt(sigma2 + x^2) (sigma2 = 2 * mean x^2 over the super-block)
# or x^2 without importance weights. Start from d = max / 127 (max: the first value of largest
# magnitude, sign kept, so it maps to the grid's -127 end), pick the nearest grid point for every
# x / d, take the least-squares d = sum(w q x) / sum(w q q); then retry with the stretches
# 1/d = (t - 127) / max, t = -7..7, keeping the best sum(w q x)^2 / sum(w q q). All float32 sums in
# ggml's order.

@njit(inline="always")
def _best_index(x):
    """ggml's best_index_int8 over IQ4_GRID: the nearest grid index (ties to the upper one) by
    bisection, comparing in float32 as ggml does."""
    if x <= IQ4_GRID[0]:
        return 0
    if x >= IQ4_GRID[15]:
        return 15
    lo, hi = 0, 15
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if x < IQ4_GRID[mid]:
            hi = mid
        else:
            lo = mid
    return hi - 1 if x - IQ4_GRID[hi - 1] < IQ4_GRID[hi] - x else hi


NTRY = 7   # quantize_iq4_nl / quantize_iq4_xs pass 7 (only the unused *_ref of IQ4_NL passes -1)


@njit(parallel=True, cache=True)
def _quantize_iq4(x, qw, out, nsub):
    """x: (n_blocks, 32 nsub) f32; qw: (blocks per row, 32 nsub) importance weights, or (0, 0)
    for none; out: (n_blocks, block bytes)."""
    size = 32 * nsub
    has_weights = qw.shape[0] > 0
    blocks_per_row = max(qw.shape[0], 1)
    qs_at = 2 if nsub == 1 else 8
    for b in prange(x.shape[0]):
        xb = x[b]
        levels = np.zeros(size, np.uint8)
        scales = np.zeros(nsub, F32)
        weight = np.empty(32, F32)
        sigma2 = F32(0.0)
        for j in range(size):
            sigma2 += xb[j] * xb[j]
        sigma2 *= F32(2.0) / F32(size)
        max_scale = F32(0.0)
        amax_scale = F32(0.0)
        for ib in range(nsub):
            o = 32 * ib
            if has_weights:
                for j in range(32):
                    weight[j] = qw[b % blocks_per_row, o + j] * F32(np.sqrt(sigma2 + xb[o + j] * xb[o + j]))
            else:
                for j in range(32):
                    weight[j] = xb[o + j] * xb[o + j]
            amax, vmax = max_magnitude(xb[o:o + 32])
            if amax < GROUP_MAX_EPS:
                scales[ib] = F32(0.0)
                continue
            d = -vmax / IQ4_GRID[0]
            inv = F32(1.0) / d
            sumqx = F32(0.0)
            sumq2 = F32(0.0)
            for j in range(32):
                k = _best_index(inv * xb[o + j])
                levels[o + j] = k
                q = IQ4_GRID[k]
                sumqx += weight[j] * q * xb[o + j]
                sumq2 += weight[j] * q * q
            d = sumqx / sumq2 if sumq2 > 0 else F32(0.0)
            best = d * sumqx
            for itry in range(-NTRY, NTRY + 1):
                inv = F32(itry - 127) / vmax
                sumqx = F32(0.0)
                sumq2 = F32(0.0)
                for j in range(32):
                    q = IQ4_GRID[_best_index(inv * xb[o + j])]
                    sumqx += weight[j] * q * xb[o + j]
                    sumq2 += weight[j] * q * q
                if sumq2 > 0 and sumqx * sumqx > best * sumq2:
                    d = sumqx / sumq2
                    best = d * sumqx
            scales[ib] = d
            if abs(d) > amax_scale:
                amax_scale = abs(d)
                max_scale = d
        if nsub > 1:
            # 6-bit sub-block scales l in -32..31 times d = -max_scale / 32 (the unrounded d picks
            # the indices, as in ggml), then every sub-block's indices again for its stored scale
            d = -max_scale / F32(32.0)
            inv = store_scale(out, b, 0, d)
            scales_h = 0
            for ib in range(nsub):
                l = max(-32, min(31, nearest_int(inv * scales[ib])))
                dl = d * F32(l)
                idl = inverse(dl)
                for j in range(32 * ib, 32 * ib + 32):
                    levels[j] = _best_index(idl * xb[j])
                l += 32
                if ib % 2 == 0:
                    out[b, 4 + ib // 2] = l & 0x0F
                else:
                    out[b, 4 + ib // 2] |= (l & 0x0F) << 4
                scales_h |= (l >> 4) << (2 * ib)
            write_u16(out, b, 2, scales_h)
        else:
            inv = store_scale(out, b, 0, scales[0])
            for j in range(32):
                levels[j] = _best_index(inv * xb[j])
        for i in range(nsub):
            for j in range(16):
                out[b, qs_at + 16 * i + j] = levels[32 * i + j] | (levels[32 * i + 16 + j] << 4)


def _iq4_quantizer(ggml_type: GGMLType, nsub: int):
    """The codec quantize (rows, weights=None) over _quantize_iq4 for blocks of 32 nsub weights."""
    info = TYPE_INFO[ggml_type]
    no_weights = np.zeros((0, 32 * nsub), np.float32)

    def quantize(rows: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        out = np.zeros((rows.shape[0], info.row_bytes(rows.shape[1])), np.uint8)  # scales_l is OR-ed
        qw = no_weights if weights is None else np.ascontiguousarray(weights, np.float32).reshape(-1, 32 * nsub)
        _quantize_iq4(rows.reshape(-1, 32 * nsub), qw, out.reshape(-1, info.block_bytes), nsub)
        return out

    quantize.__name__ = f"quantize_{ggml_type.name.lower()}"
    return quantize


# type -> (dequantize kernel, sub-blocks of 32 per block)
KERNELS = {GGMLType.IQ4_NL: (_dequantize_iq4_nl, 1), GGMLType.IQ4_XS: (_dequantize_iq4_xs, 8)}

for _type, (_kernel, _nsub) in KERNELS.items():
    _decoder = Decoder(_kernel, _type)
    register(Codec(_type, _decoder.dequantize, _iq4_quantizer(_type, _nsub), uses_weights=True, decoder=_decoder))
