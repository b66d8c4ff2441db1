"""Legacy 32-weight block formats: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 (and Q8_1, the activation format).

Quantizers reproduce ggml's `quantize_row_*_ref`, which is what llama-quantize runs for these types
without an imatrix (`ggml_quantize_chunk` -> `quantize_q4_0` -> `quantize_row_q4_0_ref`, ...; Q8_0
always takes the reference path), and, given importance weights, its `quantize_row_*_impl` (see
"Importance-weighted" below). Dequantizers reproduce `dequantize_row_*`.

Exactness rules followed in every kernel:
- float32 arithmetic only, in ggml's order (numba would widen `float32 op python-float` to float64,
  so every constant is an np.float32); no fused multiply-add (numba does not contract without
  fastmath, and ggml's reference code is built for baseline x86-64, which has no FMA).
- C's float -> int8/uint8 casts are x86-64's `cvttss2si` (truncate toward zero; NaN or out of
  range gives INT32_MIN) followed by keeping the low byte: `_c_float_to_int`.
- `roundf` rounds half away from zero: `roundf`.
- scales go to fp16 through ggml's conversion (`ggml_fp32_to_fp16`); the unrounded float32 scale is
  what divides the weights, as in ggml.

Kernels work on a flat (n_blocks, 32) view, one prange iteration per block, so a single long row
still uses every thread.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..gguf.constants import TYPE_INFO, GGMLType
from .floats import ggml_fp32_to_fp16
from .half import read_fp16
from .kquant_search import make_qkx2_quants_lanes, make_qx_quants_lanes, max_abs, max_magnitude, min_max
from .registry import Codec, Decoder, register

QK = 32  # weights per block in every legacy format
INT32_MIN = -2147483648


@njit(inline="always")
def _c_float_to_int(v):
    """(int)v as x86-64 computes it: truncate toward zero; NaN/out of range -> INT32_MIN."""
    if v != v or v >= 2147483648.0 or v < -2147483648.0:
        return INT32_MIN
    return np.int32(v)


@njit(inline="always")
def _c_int8(v):
    """(int8_t)v: the low byte of the 32-bit conversion, read as signed."""
    return ((_c_float_to_int(v) & 0xFF) ^ 0x80) - 0x80


@njit(inline="always")
def roundf(v):
    """C's roundf: nearest integer, halves away from zero (np.round would round halves to even)."""
    if not (abs(v) < np.float32(8388608.0)):  # |v| >= 2**23 is already integral (or inf/NaN)
        return v
    t = np.float32(np.int32(v))
    frac = v - t  # exact
    if frac >= np.float32(0.5):
        t += np.float32(1.0)
    elif frac <= np.float32(-0.5):
        t -= np.float32(1.0)
    return t


@njit(inline="always")
def inverse(d):
    """1/d, or 0 for d = 0 (ggml's `d ? 1.0f/d : 0.0f`)."""
    return np.float32(1.0) / d if d != 0 else np.float32(0.0)


@njit(inline="always")
def write_u16(out, b, pos, h):
    """Store a 16-bit value little-endian at out[b, pos:pos+2]."""
    out[b, pos] = h & 0xFF
    out[b, pos + 1] = (h >> 8) & 0xFF


@njit(inline="always")
def store_scale(out, b, pos, d):
    """Write block b's scale d at out[b, pos] as ggml's fp16; returns 1/d (0 for d = 0): the
    unrounded d is what divides the weights, as in ggml."""
    write_u16(out, b, pos, ggml_fp32_to_fp16(d))
    return inverse(d)


@njit(inline="always")
def read_u32(block, pos):
    """The uint32 stored little-endian at block[pos:pos+4] (a uint8 array)."""
    return (np.uint32(block[pos]) | (np.uint32(block[pos + 1]) << np.uint32(8))
            | (np.uint32(block[pos + 2]) << np.uint32(16)) | (np.uint32(block[pos + 3]) << np.uint32(24)))


# ---------------------------------------------------------------------------------------------
# Q4_0, 18 bytes per 32 weights; weight = d * (q - 8), q in 0..15
#
#   byte  0      2                                  18
#         +------+----------------------------------+
#         |  d   | qs[16]: lo nibble = q[j]          |
#         | fp16 |         hi nibble = q[j + 16]     |
#         +------+----------------------------------+
# d = (the value of largest magnitude, sign kept) / -8, so that value maps to q = 0.

@njit(inline="always")
def quantize_block_q4_0(x, out, b):
    """The 32 values x[b] (x (n_blocks, 32)) as Q4_0 block out[b] (out (n_blocks, 18) uint8)."""
    d = max_magnitude(x[b])[1] / np.float32(-8.0)
    inv = store_scale(out, b, 0, d)
    for j in range(QK // 2):
        q0 = min(15, _c_int8(x[b, j] * inv + np.float32(8.5)))
        q1 = min(15, _c_int8(x[b, j + QK // 2] * inv + np.float32(8.5)))
        out[b, 2 + j] = (q0 & 0xFF) | ((q1 << 4) & 0xFF)


@njit(inline="always")
def dequantize_block_q4_0(raw, y, b):
    """Q4_0 block raw[b] (raw (n_blocks, 18) uint8) as 32 floats y[b]."""
    d = read_fp16(raw[b], 0)
    for j in range(QK // 2):
        q = np.int32(raw[b, 2 + j])
        y[b, j] = np.float32((q & 0x0F) - 8) * d
        y[b, j + QK // 2] = np.float32((q >> 4) - 8) * d


@njit(parallel=True, cache=True)
def _quantize_q4_0(x, out):
    for b in prange(x.shape[0]):
        quantize_block_q4_0(x, out, b)


@njit(parallel=True, cache=True, nogil=True)
def _dequantize_q4_0(raw, y):
    for b in prange(raw.shape[0]):
        dequantize_block_q4_0(raw, y, b)


# ---------------------------------------------------------------------------------------------
# Q4_1, 20 bytes per 32 weights; weight = d * q + m, q in 0..15
#
#   byte  0      2      4                                  20
#         +------+------+----------------------------------+
#         |  d   |  m   | qs[16]: lo nibble = q[j]          |
#         | fp16 | fp16 |         hi nibble = q[j + 16]     |
#         +------+------+----------------------------------+
# m = block minimum, d = (max - min) / 15.

@njit(parallel=True, cache=True)
def _quantize_q4_1(x, out):
    for b in prange(x.shape[0]):
        vmin, vmax = min_max(x[b])
        inv = store_scale(out, b, 0, (vmax - vmin) / np.float32(15.0))
        write_u16(out, b, 2, ggml_fp32_to_fp16(vmin))
        for j in range(QK // 2):
            q0 = min(15, _c_int8((x[b, j] - vmin) * inv + np.float32(0.5)))
            q1 = min(15, _c_int8((x[b, j + QK // 2] - vmin) * inv + np.float32(0.5)))
            out[b, 4 + j] = (q0 & 0xFF) | ((q1 << 4) & 0xFF)


@njit(parallel=True, cache=True, nogil=True)
def _dequantize_q4_1(raw, y):
    for b in prange(raw.shape[0]):
        d = read_fp16(raw[b], 0)
        m = read_fp16(raw[b], 2)
        for j in range(QK // 2):
            q = np.int32(raw[b, 4 + j])
            y[b, j] = np.float32(q & 0x0F) * d + m
            y[b, j + QK // 2] = np.float32(q >> 4) * d + m


# ---------------------------------------------------------------------------------------------
# Q5_0, 22 bytes per 32 weights; weight = d * (q - 16), q in 0..31
#
#   byte  0      2                6                                  22
#         +------+----------------+----------------------------------+
#         |  d   | qh: u32 LE,    | qs[16]: lo nibble = q[j] & 15     |
#         | fp16 | bit j = q[j]>>4|         hi nibble = q[j+16] & 15  |
#         +------+----------------+----------------------------------+
# d = (the value of largest magnitude, sign kept) / -16.

@njit(parallel=True, cache=True)
def _quantize_q5_0(x, out):
    for b in prange(x.shape[0]):
        inv = store_scale(out, b, 0, max_magnitude(x[b])[1] / np.float32(-16.0))
        qh = 0
        for j in range(QK // 2):
            q0 = min(31, _c_int8(x[b, j] * inv + np.float32(16.5))) & 0xFF
            q1 = min(31, _c_int8(x[b, j + QK // 2] * inv + np.float32(16.5))) & 0xFF
            out[b, 6 + j] = (q0 & 0x0F) | ((q1 & 0x0F) << 4)
            qh |= ((q0 & 0x10) >> 4) << j
            qh |= ((q1 & 0x10) >> 4) << (j + QK // 2)
        for i in range(4):
            out[b, 2 + i] = (qh >> (8 * i)) & 0xFF


@njit(parallel=True, cache=True, nogil=True)
def _dequantize_q5_0(raw, y):
    for b in prange(raw.shape[0]):
        d = read_fp16(raw[b], 0)
        qh = np.int64(read_u32(raw[b], 2))
        for j in range(QK // 2):
            q = np.int32(raw[b, 6 + j])
            hi0 = np.int32((qh >> j) << 4) & 0x10
            hi1 = np.int32(qh >> (j + 12)) & 0x10
            y[b, j] = np.float32(((q & 0x0F) | hi0) - 16) * d
            y[b, j + QK // 2] = np.float32(((q >> 4) | hi1) - 16) * d


# ---------------------------------------------------------------------------------------------
# Q5_1, 24 bytes per 32 weights; weight = d * q + m, q in 0..31
#
#   byte  0      2      4                8                                  24
#         +------+------+----------------+----------------------------------+
#         |  d   |  m   | qh: u32 LE,    | qs[16]: lo nibble = q[j] & 15     |
#         | fp16 | fp16 | bit j = q[j]>>4|         hi nibble = q[j+16] & 15  |
#         +------+------+----------------+----------------------------------+
# m = block minimum, d = (max - min) / 31; no clamp to 31 in ggml (the cast is to uint8_t).

@njit(parallel=True, cache=True)
def _quantize_q5_1(x, out):
    for b in prange(x.shape[0]):
        vmin, vmax = min_max(x[b])
        inv = store_scale(out, b, 0, (vmax - vmin) / np.float32(31.0))
        write_u16(out, b, 2, ggml_fp32_to_fp16(vmin))
        qh = 0
        for j in range(QK // 2):
            q0 = _c_float_to_int((x[b, j] - vmin) * inv + np.float32(0.5)) & 0xFF
            q1 = _c_float_to_int((x[b, j + QK // 2] - vmin) * inv + np.float32(0.5)) & 0xFF
            out[b, 8 + j] = (q0 & 0x0F) | ((q1 & 0x0F) << 4)
            qh |= ((q0 & 0x10) >> 4) << j
            qh |= ((q1 & 0x10) >> 4) << (j + QK // 2)
        for i in range(4):
            out[b, 4 + i] = (qh >> (8 * i)) & 0xFF


@njit(parallel=True, cache=True, nogil=True)
def _dequantize_q5_1(raw, y):
    for b in prange(raw.shape[0]):
        d = read_fp16(raw[b], 0)
        m = read_fp16(raw[b], 2)
        qh = np.int64(read_u32(raw[b], 4))
        for j in range(QK // 2):
            q = np.int32(raw[b, 8 + j])
            hi0 = np.int32((qh >> j) << 4) & 0x10
            hi1 = np.int32(qh >> (j + 12)) & 0x10
            y[b, j] = np.float32((q & 0x0F) | hi0) * d + m
            y[b, j + QK // 2] = np.float32((q >> 4) | hi1) * d + m


# ---------------------------------------------------------------------------------------------
# Q8_0, 34 bytes per 32 weights; weight = d * q, q int8
#
#   byte  0      2                                  34
#         +------+----------------------------------+
#         |  d   | qs[32]: int8 q[j]                 |
#         | fp16 |                                   |
#         +------+----------------------------------+
# d = max|x| / 127, q = roundf(x / d).

@njit(parallel=True, cache=True)
def _quantize_q8_0(x, out):
    for b in prange(x.shape[0]):
        inv = store_scale(out, b, 0, max_abs(x[b]) / np.float32(127.0))
        for j in range(QK):
            out[b, 2 + j] = _c_float_to_int(roundf(x[b, j] * inv)) & 0xFF


@njit(inline="always")
def dequantize_block_q8_0(raw, y, b):
    """Q8_0 block raw[b] (raw (n_blocks, 34) uint8) as 32 floats y[b]."""
    d = read_fp16(raw[b], 0)
    for j in range(QK):
        y[b, j] = np.float32((np.int32(raw[b, 2 + j]) ^ 0x80) - 0x80) * d


@njit(parallel=True, cache=True, nogil=True)
def _dequantize_q8_0(raw, y):
    for b in prange(raw.shape[0]):
        dequantize_block_q8_0(raw, y, b)


# ---------------------------------------------------------------------------------------------
# Q8_1, 36 bytes per 32 weights: Q8_0 plus s = d * sum(q), the activation format that Q4_1/Q5_1
# dot products use. ggml has a reference quantizer but no dequantizer; ours returns d * q.
#
#   byte  0      2      4                                  36
#         +------+------+----------------------------------+
#         |  d   |  s   | qs[32]: int8 q[j]                 |
#         | fp16 | fp16 |                                   |
#         +------+------+----------------------------------+

@njit(parallel=True, cache=True)
def _quantize_q8_1(x, out):
    for b in prange(x.shape[0]):
        d = max_abs(x[b]) / np.float32(127.0)
        inv = store_scale(out, b, 0, d)
        total = 0
        for j in range(QK):
            q = _c_float_to_int(roundf(x[b, j] * inv)) & 0xFF
            out[b, 4 + j] = q
            total += (q ^ 0x80) - 0x80  # the stored int8, read back
        write_u16(out, b, 2, ggml_fp32_to_fp16(np.float32(total) * d))


@njit(parallel=True, cache=True, nogil=True)
def _dequantize_q8_1(raw, y):
    for b in prange(raw.shape[0]):
        d = read_fp16(raw[b], 0)
        for j in range(QK):
            y[b, j] = np.float32((np.int32(raw[b, 4 + j]) ^ 0x80) - 0x80) * d


# ---------------------------------------------------------------------------------------------
# Importance-weighted Q4_0, Q4_1, Q5_0, Q5_1: ggml's quantize_row_q*_impl, which llama-quantize
# runs when it has an importance matrix (without one it runs the reference quantizers above; Q8_0
# ignores the weights). Same block layouts; a block's levels and scale come from the k-quant
# searches under the weights w[j] = importance[j] * sqrt(sigma2 + x[j]^2), sigma2 being the mean
# square of the whole row:
#   Q4_0, Q5_0: make_qx_quants, symmetric, levels 0..2*nmax-1 around nmax, d = its scale
#   Q4_1, Q5_1: make_qkx3_quants, scale and min, levels 0..nmax, d = scale, m = -min
# The levels are stored as they come out of the search (no requantization against the fp16 d).
# Searches run 16 blocks side by side, one per SIMD lane (see kquant_search.py); blocks are
# independent, so a lane group may span rows.

WEIGHTED_RMIN, WEIGHTED_RDELTA, WEIGHTED_NSTEP = np.float32(-0.9), np.float32(0.05), 36
LANES = 16


@njit(inline="always")
def _mean_square(row):
    """sum of row^2 (one float32 chain in order, as ggml adds it) / row length."""
    total = np.float32(0.0)
    for j in range(row.shape[0]):
        total += row[j] * row[j]
    return total / np.float32(row.shape[0])


@njit(inline="always")
def _gather_block_lanes(x, qw, sigma2, first, S, nb, xT, wT):
    """Blocks first..first+S-1 of the flattened tensor into lanes: xT[i, s] = value i of block
    first + s, wT[i, s] its weight."""
    for s in range(S):
        blk = first + s
        r = blk // nb
        c = (blk % nb) * QK
        for i in range(QK):
            v = x[r, c + i]
            xT[i, s] = v
            wT[i, s] = qw[c + i] * np.sqrt(sigma2[r] + v * v)


@njit(inline="always")
def _put_levels(out, b, qs_pos, qh_pos, levels, s):
    """Pack the 32 levels of lane s into block b: low nibbles at qs_pos (level j in the low
    nibble of byte j, level j + 16 in its high nibble); with qh_pos >= 0, bit 4 of level j is
    bit j of the u32 at qh_pos (5-bit formats)."""
    qh = 0
    for j in range(QK // 2):
        q0 = np.int64(levels[j, s])
        q1 = np.int64(levels[j + QK // 2, s])
        out[b, qs_pos + j] = (q0 & 0x0F) | ((q1 & 0x0F) << 4)
        qh |= ((q0 & 0x10) >> 4) << j
        qh |= ((q1 & 0x10) >> 4) << (j + QK // 2)
    if qh_pos >= 0:
        for i in range(4):
            out[b, qh_pos + i] = (qh >> (8 * i)) & 0xFF


@njit(parallel=True, cache=True, error_model="numpy")
def _quantize_weighted(x, qw, out, nmax, qs_pos, qh_pos, affine):
    """Q4_0 (nmax 8) and Q5_0 (nmax 16) with importance weights, or with `affine` Q4_1 (nmax 15)
    and Q5_1 (nmax 31); out: (n_blocks, block_bytes)."""
    nb = x.shape[1] // QK
    n_blocks = x.shape[0] * nb
    sigma2 = np.empty(x.shape[0], np.float32)
    for r in prange(x.shape[0]):
        sigma2[r] = _mean_square(x[r])
    for g in prange((n_blocks + LANES - 1) // LANES):
        first = g * LANES
        S = min(LANES, n_blocks - first)
        xT = np.empty((QK, S), np.float32)
        wT = np.empty((QK, S), np.float32)
        levels = np.empty((QK, S), np.uint8)    # both searches give levels 0..31
        st = np.empty((16, S), np.float32)
        scales = np.empty(S, np.float32)
        the_mins = np.empty(S, np.float32)
        _gather_block_lanes(x, qw, sigma2, first, S, nb, xT, wT)
        if affine:
            make_qkx2_quants_lanes(xT, wT, nmax, WEIGHTED_RMIN, WEIGHTED_RDELTA, WEIGHTED_NSTEP, False,
                                   levels, scales, the_mins, np.empty((QK, S), np.float32), st)
        else:
            make_qx_quants_lanes(xT, wT, nmax, levels, scales, np.empty((QK, S), np.uint8), st)
        for s in range(S):
            write_u16(out, first + s, 0, ggml_fp32_to_fp16(scales[s]))
            if affine:
                write_u16(out, first + s, 2, ggml_fp32_to_fp16(-the_mins[s]))
            _put_levels(out, first + s, qs_pos, qh_pos, levels, s)


# type -> _quantize_weighted's (nmax, offset of qs, offset of qh or -1, whether affine)
WEIGHTED_KERNELS = {
    GGMLType.Q4_0: (8, 2, -1, False),
    GGMLType.Q5_0: (16, 6, 2, False),
    GGMLType.Q4_1: (15, 4, -1, True),
    GGMLType.Q5_1: (31, 8, 4, True),
}


# type -> (quantize kernel, dequantize kernel); kernels take (n_blocks, 32) f32 and
# (n_blocks, block_bytes) u8 views.
KERNELS = {
    GGMLType.Q4_0: (_quantize_q4_0, _dequantize_q4_0),
    GGMLType.Q4_1: (_quantize_q4_1, _dequantize_q4_1),
    GGMLType.Q5_0: (_quantize_q5_0, _dequantize_q5_0),
    GGMLType.Q5_1: (_quantize_q5_1, _dequantize_q5_1),
    GGMLType.Q8_0: (_quantize_q8_0, _dequantize_q8_0),
    GGMLType.Q8_1: (_quantize_q8_1, _dequantize_q8_1),
}


def blockwise_quantizer(kernel, ggml_type: GGMLType, weighted=None):
    """Wrap a per-block kernel as a codec quantize: float32 (n, k) -> uint8 (n, row_bytes);
    `weighted`: the type's WEIGHTED_KERNELS entry, run when importance weights are given."""
    info = TYPE_INFO[ggml_type]

    def quantize_rows(rows: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        n_rows, row_len = rows.shape
        n_blocks = n_rows * (row_len // info.block_size)
        out = np.empty((n_rows, info.row_bytes(row_len)), dtype=np.uint8)
        if weights is None or weighted is None:
            kernel(rows.reshape(n_blocks, info.block_size), out.reshape(n_blocks, info.block_bytes))
        else:
            _quantize_weighted(rows, np.ascontiguousarray(weights, dtype=np.float32),
                               out.reshape(n_blocks, info.block_bytes), *weighted)
        return out

    quantize_rows.__name__ = f"quantize_{ggml_type.name.lower()}"
    return quantize_rows


for _type, (_quantize, _dequantize) in KERNELS.items():
    _weighted = WEIGHTED_KERNELS.get(_type)
    _decoder = Decoder(_dequantize, _type)
    register(Codec(_type, _decoder.dequantize, blockwise_quantizer(_quantize, _type, _weighted),
                   uses_weights=_weighted is not None, decoder=_decoder))
