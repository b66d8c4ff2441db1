"""k-quants: Q2_K, Q3_K, Q4_K, Q5_K, Q6_K (weights) and Q8_K (activations), byte-exact with ggml.

A super-block holds 256 weights. Quantizing equals ggml's `quantize_q*_K(..., quant_weights)`:
without importance weights (None here, NULL there) its `quantize_row_q*_K_ref` path, with them
(one float per column of the row, from an importance matrix) its `quantize_row_q*_K_impl` path,
whose searches weigh each value by w[col] * sqrt(sigma2 + x*x) (Q6_K: by w[col] alone). The two
paths share the block layouts, the final requantization and the packing; they differ in the
searches and in how the sub-block scales are coded (the weighted path fits them with
make_qp_quants / make_qx_quants). Dequantizing equals `dequantize_row_q*_K`. The scale searches
live in kquant_search.py; this module holds the block layouts.

Kernels run `prange` over rows (Q4_K/Q5_K over pairs of blocks, whose searches share 16 SIMD
lanes); blocks are independent, so the thread count never changes the bytes. Every float op is
float32 in ggml's order (see kquant_search.py for why that decides identity).

Differences from ggml, both outside what a file can hold: for an all-zero Q8_K block ggml leaves
bsums as they were in the output buffer, here they are 0; NaN scales are stored as ggml's
software fp16 conversion would (0x7E00 | sign) only for the default NaN, other payloads keep
their top mantissa bits (vcvtps2ph).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange
from numba.extending import register_jitable

from ..gguf.constants import TYPE_INFO, GGMLType
from .half import f32_bits, f32_from_bits, fp32_to_fp16, read_fp16
from .kquant_search import (F32, GROUP_MAX_EPS, ONE, ZERO, make_q3_quants_rmse_lanes,
                            make_qkx2_quants_lanes, make_qp_quants, make_qx_quants_lanes, max_magnitude,
                            nearest_int)
from .legacy import read_u32
from .registry import Codec, Decoder, register

QK_K = 256
KERNEL = dict(parallel=True, cache=True, error_model="numpy")
HELPER = dict(cache=True, error_model="numpy")
# Dequantizers also decode the engine's prompt-GEMM tiles on its own thread (registry.Decoder).
DEQUANT = dict(KERNEL, nogil=True)

# make_qkx2_quants search parameters per type: (nmax, rmin, rdelta, nstep)
Q2_SEARCH = (3, F32(-0.5), F32(0.1), 15)
Q4_SEARCH = (15, F32(-1.0), F32(0.1), 20)
Q5_SEARCH = (31, F32(-0.5), F32(0.1), 15)
# the importance-weighted path's make_qkx3_quants, every type: rmin, rdelta, nstep
WEIGHTED_RMIN, WEIGHTED_RDELTA, WEIGHTED_NSTEP = F32(-0.9), F32(0.05), 36
F256 = F32(256.0)
F2 = F32(2.0)
F15 = F32(15.0)
F63 = F32(63.0)
F32_M32 = F32(-32.0)
F32_M128 = F32(-128.0)
F32_M127 = F32(-127.0)


# ---------------------------------------------------------------------------------------------
# small shared pieces


@njit(**HELPER)
def put_f16(out, pos, value):
    """Store float32 value as little-endian fp16 at out[pos:pos+2]."""
    h = fp32_to_fp16(value)
    out[pos] = h & 0xFF
    out[pos + 1] = h >> 8


@njit(**HELPER)
def _pack_2bit(L, qs):
    """64 bytes: byte 32*h + l holds L[128h + l + 32s] in bits 2s..2s+1 (s = 0..3)."""
    for h in range(2):
        for l in range(32):
            j = 128 * h + l
            qs[32 * h + l] = L[j] | (L[j + 32] << 2) | (L[j + 64] << 4) | (L[j + 96] << 6)


@njit(inline="always")
def scale_min_k4(j, sc):
    """Q4_K / Q5_K: the 6-bit (scale, min) of sub-block j from the block's 12 packed scale bytes
    `sc` (bytes 4..15 of the block; ggml's get_scale_min_k4). The one scalar reader: the quantizer,
    the dequantizer and the engine's Q5_K mat-vec use it (simd.py and int8_kquants.py unpack all
    eight at once as vectors, the same rule).

    bytes 0-3 : scale j (j<4) in bits 0-5, high bits of scale j+4 in bits 6-7
    bytes 4-7 : min j   (j<4) in bits 0-5, high bits of min j+4   in bits 6-7
    bytes 8-11: low 4 bits of scale j+4 (bits 0-3) and of min j+4 (bits 4-7)
    """
    if j < 4:
        return np.int32(sc[j]) & 63, np.int32(sc[j + 4]) & 63
    return ((np.int32(sc[j + 4]) & 0xF) | ((np.int32(sc[j - 4]) >> 6) << 4),
            (np.int32(sc[j + 4]) >> 4) | ((np.int32(sc[j]) >> 6) << 4))


@register_jitable
def q3_k_scale_bits(j):
    """Where Q3_K keeps the 6-bit scale of sub-block j (stored as scale + 32) in the block's 12
    scale bytes (bytes 96..107 of the block): (byte, shift) of its low 4 bits, (byte, shift) of its
    top 2 bits. The one description of that layout: `q3_k_scale` reads it, the quantizer writes it,
    int8_kquants.q3_k_scales builds its vector shuffles from it (Python and numba both call this).

    bytes 0-7 : low 4 bits of scale j (j<8, bits 0-3) and of scale j+8 (bits 4-7)
    bytes 8-11: byte 8+(j%4) bits 2*(j//4)..+1 hold the top 2 bits
    """
    return j % 8, 4 * (j // 8), 8 + j % 4, 2 * (j // 4)


@njit(inline="always")
def q3_k_scale(j, sc):
    """Q3_K: the signed 6-bit scale of sub-block j from the block's 12 scale bytes `sc`
    (`q3_k_scale_bits`); the dequantizer, the quantizer's final pass and the engine's float Q3_K
    mat-vec use it."""
    low_byte, low_shift, top_byte, top_shift = q3_k_scale_bits(j)
    low = (np.int32(sc[low_byte]) >> low_shift) & 0xF
    top = (np.int32(sc[top_byte]) >> top_shift) & 3
    return (low | (top << 4)) - 32


@njit(**HELPER)
def sum_squares(x):
    """sum of x*x as ggml adds it: one float32 chain in order (the order decides the last bit)."""
    total = ZERO
    for i in range(x.shape[0]):
        total += x[i] * x[i]
    return total


@njit(**HELPER)
def importance_weight(qw, sigma2, x):
    """The weighted path's weight of one value: importance * sqrt(sigma2 + x*x)."""
    return qw * np.sqrt(sigma2 + x * x)


@njit(**HELPER)
def _column_sums(wT, first, n_cols, sw):
    """sw[j] = sum over i of wT[i, first + j], in order (ggml's per-sub-block weight sums)."""
    for j in range(n_cols):
        total = ZERO
        for i in range(wT.shape[0]):
            total += wT[i, first + j]
        sw[j] = total


@njit(**HELPER)
def _lane_scratch(n, S):
    """Buffers for make_qkx2_quants_lanes over S sub-blocks of n: xT, wT, levels, laux, st,
    scales, mins."""
    return (np.empty((n, S), np.float32), np.empty((n, S), np.float32), np.empty((n, S), np.uint8),
            np.empty((n, S), np.float32), np.empty((16, S), np.float32), np.empty(S, np.float32),
            np.empty(S, np.float32))


@njit(inline="always")
def _quantize_rows(x, qw, out, nbytes, quantize_block, scratch_of):
    """Rows x (n, 256 k) -> out (n, k nbytes) block by block: quantize_block(values, importance
    weights (or qw empty), block bytes, scratch), with one scratch_of() per row (Q2_K, Q3_K,
    Q6_K; Q4_K and Q5_K pair blocks across rows)."""
    nb = x.shape[1] // QK_K
    for r in prange(x.shape[0]):
        scratch = scratch_of()
        for b in range(nb):
            quantize_block(x[r, b * QK_K:(b + 1) * QK_K], qw[b * QK_K:(b + 1) * QK_K],  # qw: empty or a slice
                           out[r, b * nbytes:(b + 1) * nbytes], scratch)


@njit(inline="always")
def _dequantize_rows(raw, y, nbytes, dequantize_block):
    """Rows of blocks raw (n, k nbytes) -> y (n, 256 k): dequantize_block(block bytes, its 256
    values) per block."""
    nb = y.shape[1] // QK_K
    for r in prange(y.shape[0]):
        for b in range(nb):
            dequantize_block(raw[r, b * nbytes:(b + 1) * nbytes], y[r, b * QK_K:(b + 1) * QK_K])


# ---------------------------------------------------------------------------------------------
# Q2_K                                                                          84 bytes / 256
#
#   0        16                         80      82       84
#   | scales | qs: 2-bit levels         | d f16 | dmin f16 |
#   scales[j] = scale_j (bits 0-3) | min_j (bits 4-7) for the 16 sub-blocks of 16
#   weight = d*scale_j*q - dmin*min_j ; qs packed as in _pack_2bit


@njit(**HELPER)
def _q2_scratch():
    """Buffers of one Q2_K block: levels L, the lane search over 16 sub-blocks (`_lane_scratch`),
    and the weighted path's sub-block weights sw and 4-bit scales Ls and mins Lm."""
    return (np.empty(QK_K, np.uint8), _lane_scratch(16, 16), np.empty(16, np.float32), np.empty(16, np.uint8),
            np.empty(16, np.uint8))


@njit(**HELPER)
def _quantize_block_q2_k(x, qw, out, scratch):
    """One block; qw: the block's 256 importance weights, or empty for the reference path."""
    L, lanes, sw, Ls, Lm = scratch
    xT, wT, levels, laux, st, scales, mins = lanes
    weighted = qw.shape[0] != 0
    if weighted:
        sigma2 = sum_squares(x) / F256       # the mean square (Q3_K..Q5_K weigh with twice it)
        for i in range(16):
            for j in range(16):
                xT[i, j] = x[16 * j + i]
                wT[i, j] = importance_weight(qw[16 * j + i], sigma2, x[16 * j + i])
        make_qkx2_quants_lanes(xT, wT, 3, WEIGHTED_RMIN, WEIGHTED_RDELTA, WEIGHTED_NSTEP, False,
                               levels, scales, mins, laux, st)
    else:
        nmax, rmin, rdelta, nstep = Q2_SEARCH
        for i in range(16):
            for j in range(16):
                xT[i, j] = x[16 * j + i]
                wT[i, j] = abs(x[16 * j + i])
        make_qkx2_quants_lanes(xT, wT, nmax, rmin, rdelta, nstep, True, levels, scales, mins, laux, st)
    for j in range(16):
        for i in range(16):
            L[16 * j + i] = levels[i, j]
    packed = out[0:16]
    if weighted:  # 4-bit scales and mins fitted by make_qp_quants, weighted by each sub-block's weight
        _column_sums(wT, 0, 16, sw)
        put_f16(out, 80, make_qp_quants(15, scales, Ls, sw))
        put_f16(out, 82, make_qp_quants(15, mins, Lm, sw))
        for j in range(16):
            packed[j] = (np.int32(Ls[j]) | (np.int32(Lm[j]) << 4)) & 0xFF
    else:         # 4-bit scales and mins relative to the largest
        max_scale = ZERO
        max_min = ZERO
        for j in range(16):
            if scales[j] > max_scale:
                max_scale = scales[j]
            if mins[j] > max_min:
                max_min = mins[j]
        if max_scale > ZERO:
            iscale = F15 / max_scale
            for j in range(16):
                packed[j] = nearest_int(iscale * scales[j]) & 0xFF
            put_f16(out, 80, max_scale / F15)
        else:
            for j in range(16):
                packed[j] = 0
            put_f16(out, 80, ZERO)
        if max_min > ZERO:
            iscale = F15 / max_min
            for j in range(16):
                packed[j] |= (nearest_int(iscale * mins[j]) << 4) & 0xFF
            put_f16(out, 82, max_min / F15)
        else:
            put_f16(out, 82, ZERO)
    d_all = read_fp16(out, 80)
    m_all = read_fp16(out, 82)
    for j in range(16):
        d = d_all * F32(packed[j] & 0xF)
        if d == ZERO:
            continue
        dm = m_all * F32(packed[j] >> 4)
        for i in range(16):
            L[16 * j + i] = max(0, min(3, nearest_int((x[16 * j + i] + dm) / d)))
    _pack_2bit(L, out[16:80])


@njit(**KERNEL)
def _quantize_q2_k(x, qw, out):
    _quantize_rows(x, qw, out, 84, _quantize_block_q2_k, _q2_scratch)


@njit(inline="always")
def _dequantize_block_q2_k(blk, y):
    d = read_fp16(blk, 80)
    dmin = read_fp16(blk, 82)
    for h in range(2):
        for s in range(4):
            for half in range(2):
                sc = blk[8 * h + 2 * s + half]
                dl = d * F32(sc & 0xF)
                ml = dmin * F32(sc >> 4)
                for l in range(16):
                    q = (blk[16 + 32 * h + 16 * half + l] >> (2 * s)) & 3
                    y[128 * h + 32 * s + 16 * half + l] = dl * F32(q) - ml


@njit(**DEQUANT)
def _dequantize_q2_k(raw, y):
    _dequantize_rows(raw, y, 84, _dequantize_block_q2_k)


# ---------------------------------------------------------------------------------------------
# Q3_K                                                                         110 bytes / 256
#
#   0        32                 96        108     110
#   | hmask  | qs: 2-bit low    | scales  | d f16 |
#   level (0..7) = low 2 bits (qs, as _pack_2bit) + 4 * high bit; high bit of weight j is
#   bit j//32 of hmask[j%32]; weight = d * scale_j * (level - 4), scale_j 6-bit signed (q3_k_scale)


@njit(**HELPER)
def _q3_scratch():
    """Buffers of one Q3_K block: levels L, the lane search over 16 sub-blocks (xT, wT, levels,
    laux, st, scales), the stored 6-bit scales Ls, and the weighted path's second search - one
    lane fitting the 16 sub-block scales (xs, ws, ls, lsaux, st1, d1)."""
    return (np.empty(QK_K, np.int8), np.empty((16, 16), np.float32), np.empty((16, 16), np.float32), np.empty((16, 16), np.int8),
            np.empty((16, 16), np.int8), np.empty((16, 16), np.float32), np.empty(16, np.float32),
            np.empty(16, np.int32),
            np.empty((16, 1), np.float32), np.empty((16, 1), np.float32), np.empty((16, 1), np.int8),
            np.empty((16, 1), np.int8), np.empty((16, 1), np.float32), np.empty(1, np.float32))


@njit(**HELPER)
def _quantize_block_q3_k(x, qw, out, scratch):
    """One block; qw: the block's 256 importance weights, or empty for the reference path."""
    L, xT, wT, levels, laux, st, scales, Ls, xs, ws, ls, lsaux, st1, d1 = scratch
    for i in range(16):
        for j in range(16):
            xT[i, j] = x[16 * j + i]
    if qw.shape[0] != 0:
        # levels by make_qx_quants under the importance weights, then the 16 sub-block scales
        # themselves fitted as 6-bit levels by make_qx_quants, weighted by each sub-block's weight
        sigma2 = F2 * sum_squares(x) / F256
        for i in range(16):
            for j in range(16):
                wT[i, j] = importance_weight(qw[16 * j + i], sigma2, x[16 * j + i])
        make_qx_quants_lanes(xT, wT, 4, levels, scales, laux, st)
        for j in range(16):
            xs[j, 0] = scales[j]
        _column_sums(wT, 0, 16, ws[:, 0])
        make_qx_quants_lanes(xs, ws, 32, ls, d1, lsaux, st1)
        d_block = d1[0]
        for j in range(16):
            Ls[j] = ls[j, 0]
    else:
        # levels by make_q3_quants; 6-bit scales relative to the largest (sign kept) as -32
        make_q3_quants_rmse_lanes(xT, 4, levels, scales, st)
        max_scale = max_magnitude(scales)[1]
        d_block = ZERO
        for j in range(16):
            Ls[j] = 0
        if max_scale != ZERO:
            iscale = F32_M32 / max_scale
            for j in range(16):
                l = np.int8(nearest_int(iscale * scales[j]))      # ggml keeps it in an int8_t
                Ls[j] = max(-32, min(31, np.int32(l))) + 32
            d_block = ONE / iscale
    for j in range(16):
        for i in range(16):
            L[16 * j + i] = levels[i, j]
    sc = out[96:108]
    for j in range(12):
        sc[j] = 0
    for j in range(16):
        l = Ls[j]
        low_byte, low_shift, top_byte, top_shift = q3_k_scale_bits(j)
        sc[low_byte] |= (l & 0xF) << low_shift
        sc[top_byte] |= (l >> 4) << top_shift
    put_f16(out, 108, d_block)
    d_all = read_fp16(out, 108)
    for j in range(16):
        d = d_all * F32(q3_k_scale(j, sc))
        if d == ZERO:
            continue
        for i in range(16):
            L[16 * j + i] = max(-4, min(3, nearest_int(x[16 * j + i] / d))) + 4
    for m in range(32):                      # levels are 0..7: bit 2 is the high bit (no branches:
        bits = 0                             # on real weights they were half mispredicted)
        for k in range(8):
            bits |= (np.int32(L[32 * k + m]) >> 2) << k
        out[m] = bits
    for j in range(QK_K):
        L[j] &= 3
    _pack_2bit(L, out[32:96])


@njit(**KERNEL)
def _quantize_q3_k(x, qw, out):
    _quantize_rows(x, qw, out, 110, _quantize_block_q3_k, _q3_scratch)


@njit(inline="always")
def _dequantize_block_q3_k(blk, y):
    d_all = read_fp16(blk, 108)
    sc = blk[96:108]
    for h in range(2):
        for s in range(4):
            bit = 1 << (4 * h + s)
            for half in range(2):
                dl = d_all * F32(q3_k_scale(8 * h + 2 * s + half, sc))
                for l in range(16):
                    k = 16 * half + l
                    low = np.int32((blk[32 + 32 * h + k] >> (2 * s)) & 3)
                    q = low - (0 if (blk[k] & bit) != 0 else 4)
                    y[128 * h + 32 * s + k] = dl * F32(q)


@njit(**DEQUANT)
def _dequantize_q3_k(raw, y):
    _dequantize_rows(raw, y, 110, _dequantize_block_q3_k)


# ---------------------------------------------------------------------------------------------
# Q4_K and Q5_K share the 8 x 32 sub-block structure with 6-bit scales and mins:
#
# Q4_K                                                                         144 bytes / 256
#   0       2          4                16                          144
#   | d f16 | dmin f16 | scales (12, scale_min_k4) | qs: 4-bit levels |
#   qs[32c + l]: low nibble = weight 64c + l, high nibble = weight 64c + 32 + l
#
# Q5_K                                                                         176 bytes / 256
#   0       2          4        16     48                 176
#   | d f16 | dmin f16 | scales | qh   | qs: low 4 bits   |
#   low nibbles as Q4_K; bit 2c of qh[l] = 16s of weight 64c + l, bit 2c+1 of weight 64c + 32 + l
#
#   weight = d*scale_j*q - dmin*min_j


@njit(**HELPER)
def _search_pair_k4(xa, xb, qa, qb, lanes, nmax, rmin, rdelta, nstep):
    """Scale/min search for the 8 sub-blocks of 32 of two blocks at once: lanes 0-7 are block a,
    lanes 8-15 block b (16 lanes is what LLVM vectorises). qa, qb: the blocks' importance weights
    (the weighted path), or empty (the reference path, with its own search parameters)."""
    xT, wT, levels, laux, st, scales, mins = lanes
    for i in range(32):
        for j in range(8):
            xT[i, j] = xa[32 * j + i]
            xT[i, 8 + j] = xb[32 * j + i]
    if qa.shape[0] != 0:
        sigma_a = F2 * sum_squares(xa) / F256
        sigma_b = F2 * sum_squares(xb) / F256
        for i in range(32):
            for j in range(8):
                wT[i, j] = importance_weight(qa[32 * j + i], sigma_a, xa[32 * j + i])
                wT[i, 8 + j] = importance_weight(qb[32 * j + i], sigma_b, xb[32 * j + i])
        make_qkx2_quants_lanes(xT, wT, nmax, WEIGHTED_RMIN, WEIGHTED_RDELTA, WEIGHTED_NSTEP, False,
                               levels, scales, mins, laux, st)
        return
    av_x = st[15]
    for j in range(16):
        av_x[j] = ZERO
    for i in range(32):
        for j in range(16):
            av_x[j] += xT[i, j] * xT[i, j]
    for j in range(16):
        av_x[j] = np.sqrt(av_x[j] / F32(32.0))
    for i in range(32):
        for j in range(16):
            wT[i, j] = av_x[j] + abs(xT[i, j])
    make_qkx2_quants_lanes(xT, wT, nmax, rmin, rdelta, nstep, False, levels, scales, mins, laux, st)


@njit(**HELPER)
def _finish_block_k4(x, out, L, lanes, first, nmax, weighted, sw, Ls, Lm):
    """From the search results in lanes first..first+7: the 6-bit scales and mins, d, dmin, the
    12 scale bytes of out and the final levels L (0..nmax) of one block."""
    levels, scales, mins = lanes[2], lanes[5], lanes[6]
    for j in range(8):
        for i in range(32):
            L[32 * j + i] = levels[i, first + j]
    if weighted:  # scales and mins fitted by make_qp_quants, weighted by each sub-block's weight
        _column_sums(lanes[1], first, 8, sw)
        d_block = make_qp_quants(63, scales[first:first + 8], Ls, sw)
        m_block = make_qp_quants(63, mins[first:first + 8], Lm, sw)
        if nmax == 31:  # ggml clamps Q5_K's to 63 here, not Q4_K's (a negative scale wraps there)
            for j in range(8):
                Ls[j] = min(63, Ls[j])
                Lm[j] = min(63, Lm[j])
    else:         # relative to the largest scale and the largest min
        max_scale = ZERO
        max_min = ZERO
        for j in range(8):
            if scales[first + j] > max_scale:
                max_scale = scales[first + j]
            if mins[first + j] > max_min:
                max_min = mins[first + j]
        inv_scale = F63 / max_scale if max_scale > ZERO else ZERO
        inv_min = F63 / max_min if max_min > ZERO else ZERO
        for j in range(8):
            Ls[j] = min(63, nearest_int(inv_scale * scales[first + j]) & 0xFF)   # ggml: uint8_t
            Lm[j] = min(63, nearest_int(inv_min * mins[first + j]) & 0xFF)
        d_block = max_scale / F63
        m_block = max_min / F63
    sc = out[4:16]
    for j in range(8):
        ls = np.int32(Ls[j])
        lm = np.int32(Lm[j])
        if j < 4:
            sc[j] = ls
            sc[j + 4] = lm
        else:
            sc[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4)
            sc[j - 4] |= ((ls >> 4) << 6) & 0xFF
            sc[j] |= ((lm >> 4) << 6) & 0xFF
    put_f16(out, 0, d_block)
    put_f16(out, 2, m_block)
    d_all = read_fp16(out, 0)
    m_all = read_fp16(out, 2)
    for j in range(8):
        s6, m6 = scale_min_k4(j, sc)
        d = d_all * F32(s6)
        if d == ZERO:
            continue
        dm = m_all * F32(m6)
        for i in range(32):
            L[32 * j + i] = max(0, min(nmax, nearest_int((x[32 * j + i] + dm) / d)))


@njit(**HELPER)
def _pack_q4_k(L, blk):
    for c in range(4):
        for l in range(32):
            blk[16 + 32 * c + l] = L[64 * c + l] | (L[64 * c + 32 + l] << 4)


@njit(**HELPER)
def _pack_q5_k(L, blk):
    for l in range(32):                      # levels are 0..31: bit 4 goes to qh
        bits = 0
        for c in range(4):
            bits |= (np.int32(L[64 * c + l]) >> 4) << (2 * c)
            bits |= (np.int32(L[64 * c + 32 + l]) >> 4) << (2 * c + 1)
        blk[16 + l] = bits
    for c in range(4):
        for l in range(32):
            blk[48 + 32 * c + l] = (L[64 * c + l] & 0xF) | ((L[64 * c + 32 + l] & 0xF) << 4)


@njit(**HELPER)
def _quantize_pair_k4(xs, qw, blocks, p, L, lanes, nmax, rmin, rdelta, nstep, five_bits, sw, Ls, Lm):
    """Blocks 2p and 2p+1 of the flattened tensor (2p twice when it is the last, odd one). qw: the
    row's importance weights (block k uses the slice of its column range), or empty."""
    a = 2 * p
    b = min(a + 1, xs.shape[0] - 1)
    weighted = qw.shape[0] != 0
    nb = qw.shape[0] // QK_K
    qa = qw[(a % nb) * QK_K:(a % nb + 1) * QK_K] if weighted else qw
    qb = qw[(b % nb) * QK_K:(b % nb + 1) * QK_K] if weighted else qw
    _search_pair_k4(xs[a], xs[b], qa, qb, lanes, nmax, rmin, rdelta, nstep)
    for k in range(2 if b != a else 1):
        _finish_block_k4(xs[a + k], blocks[a + k], L, lanes, 8 * k, nmax, weighted, sw, Ls, Lm)
        if five_bits:
            _pack_q5_k(L, blocks[a + k])
        else:
            _pack_q4_k(L, blocks[a + k])


@njit(**KERNEL)
def _quantize_q4_k(x, qw, out):
    nmax, rmin, rdelta, nstep = Q4_SEARCH
    xs = x.reshape((-1, QK_K))                  # blocks are independent: pair them across rows
    blocks = out.reshape((-1, 144))
    for p in prange((xs.shape[0] + 1) // 2):
        L = np.empty(QK_K, np.uint8)
        lanes = _lane_scratch(32, 16)
        sw, Ls, Lm = np.empty(8, np.float32), np.empty(8, np.uint8), np.empty(8, np.uint8)
        _quantize_pair_k4(xs, qw, blocks, p, L, lanes, nmax, rmin, rdelta, nstep, False, sw, Ls, Lm)


@njit(**KERNEL)
def _quantize_q5_k(x, qw, out):
    nmax, rmin, rdelta, nstep = Q5_SEARCH
    xs = x.reshape((-1, QK_K))
    blocks = out.reshape((-1, 176))
    for p in prange((xs.shape[0] + 1) // 2):
        L = np.empty(QK_K, np.uint8)
        lanes = _lane_scratch(32, 16)
        sw, Ls, Lm = np.empty(8, np.float32), np.empty(8, np.uint8), np.empty(8, np.uint8)
        _quantize_pair_k4(xs, qw, blocks, p, L, lanes, nmax, rmin, rdelta, nstep, True, sw, Ls, Lm)


@njit(inline="always")
def _dequantize_block_k4(blk, y, five_bits):
    """A Q4_K block, or Q5_K (five_bits: qs at byte 48 and bit 5 of each level from qh at 16) -> y."""
    qs = 48 if five_bits else 16
    d = read_fp16(blk, 0)
    dmin = read_fp16(blk, 2)
    sc = blk[4:16]
    for c in range(4):
        s1, m1 = scale_min_k4(2 * c, sc)
        s2, m2 = scale_min_k4(2 * c + 1, sc)
        d1 = d * F32(s1)
        dm1 = dmin * F32(m1)
        d2 = d * F32(s2)
        dm2 = dmin * F32(m2)
        for l in range(32):
            q = blk[qs + 32 * c + l]
            lo = np.int32(q & 0xF)
            hi = np.int32(q >> 4)
            if five_bits:
                qh = blk[16 + l]
                lo += 16 if (qh & (1 << (2 * c))) != 0 else 0
                hi += 16 if (qh & (2 << (2 * c))) != 0 else 0
            y[64 * c + l] = d1 * F32(lo) - dm1
            y[64 * c + 32 + l] = d2 * F32(hi) - dm2


@njit(inline="always")
def _dequantize_block_q4_k(blk, y):
    _dequantize_block_k4(blk, y, False)


@njit(inline="always")
def _dequantize_block_q5_k(blk, y):
    _dequantize_block_k4(blk, y, True)


@njit(**DEQUANT)
def _dequantize_q4_k(raw, y):
    _dequantize_rows(raw, y, 144, _dequantize_block_q4_k)


@njit(**DEQUANT)
def _dequantize_q5_k(raw, y):
    _dequantize_rows(raw, y, 176, _dequantize_block_q5_k)


# ---------------------------------------------------------------------------------------------
# Q6_K                                                                         210 bytes / 256
#
#   0                  128            192              208     210
#   | ql: low 4 bits   | qh: high 2   | scales int8 x16 | d f16 |
#   for half h (weights 128h..128h+127), l in 0..31, s in 0..3 (weight 128h + 32s + l):
#     low nibble:  ql[64h + l + 32*(s%2)], bits 4*(s//2)..+3
#     high 2 bits: qh[32h + l], bits 2s..2s+1
#   weight = d * scale_{(128h + 32s + l)//16} * (level - 32)


@njit(**HELPER)
def _q6_scratch():
    """Buffers of one Q6_K block: levels L and the lane search over 16 sub-blocks (xT, wT,
    levels, laux, st, scales)."""
    return (np.empty(QK_K, np.int8), np.empty((16, 16), np.float32), np.empty((16, 16), np.float32),
            np.empty((16, 16), np.int8), np.empty((16, 16), np.int8), np.empty((16, 16), np.float32),
            np.empty(16, np.float32))


@njit(**HELPER)
def _quantize_block_q6_k(x, qw, out, scratch):
    """One block; qw: the block's 256 importance weights, or empty for the reference path. The
    paths differ only in the search's weights: x*x, or the importance weights as they are."""
    L, xT, wT, levels, laux, st, scales = scratch
    weighted = qw.shape[0] != 0
    for i in range(16):
        for j in range(16):
            v = x[16 * j + i]
            xT[i, j] = v
            wT[i, j] = qw[16 * j + i] if weighted else v * v
    make_qx_quants_lanes(xT, wT, 32, levels, scales, laux, st)   # 16 sub-blocks side by side
    for j in range(16):
        for i in range(16):
            L[16 * j + i] = levels[i, j]
    max_abs_scale, max_scale = max_magnitude(scales)
    if max_abs_scale < GROUP_MAX_EPS:
        for i in range(210):
            out[i] = 0
        return
    iscale = F32_M128 / max_scale
    put_f16(out, 208, ONE / iscale)
    for j in range(16):
        out[192 + j] = min(127, nearest_int(iscale * scales[j])) & 0xFF
    d_all = read_fp16(out, 208)
    for j in range(16):
        d = d_all * F32(np.int8(out[192 + j]))
        if d == ZERO:
            continue
        for i in range(16):
            L[16 * j + i] = max(-32, min(31, nearest_int(x[16 * j + i] / d))) + 32
    for h in range(2):
        for l in range(32):
            j = 128 * h + l
            q1 = L[j]
            q2 = L[j + 32]
            q3 = L[j + 64]
            q4 = L[j + 96]
            out[64 * h + l] = (q1 & 0xF) | ((q3 & 0xF) << 4)
            out[64 * h + 32 + l] = (q2 & 0xF) | ((q4 & 0xF) << 4)
            out[128 + 32 * h + l] = (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6)


@njit(**KERNEL)
def _quantize_q6_k(x, qw, out):
    _quantize_rows(x, qw, out, 210, _quantize_block_q6_k, _q6_scratch)


@njit(inline="always")
def _dequantize_block_q6_k(blk, y):
    d = read_fp16(blk, 208)
    for h in range(2):
        for s in range(4):
            ql = blk[64 * h + 32 * (s % 2):64 * h + 32 * (s % 2) + 32]
            qh = blk[128 + 32 * h:128 + 32 * h + 32]
            o = 128 * h + 32 * s
            for half in range(2):
                dl = d * F32(np.int8(blk[192 + 8 * h + 2 * s + half]))
                for l in range(16 * half, 16 * half + 16):
                    low = (np.int32(ql[l]) >> (4 * (s // 2))) & 0xF
                    high = (np.int32(qh[l]) >> (2 * s)) & 3
                    y[o + l] = dl * F32((low | (high << 4)) - 32)


@njit(**DEQUANT)
def _dequantize_q6_k(raw, y):
    _dequantize_rows(raw, y, 210, _dequantize_block_q6_k)


# ---------------------------------------------------------------------------------------------
# Q8_K (activations)                                                           292 bytes / 256
#
#   0       4                 260                 292
#   | d f32 | qs: int8 x 256  | bsums: int16 x 16 |
#   weight = d * q ; bsums[j] = sum of qs[16j..16j+15]
#   (ggml leaves bsums untouched for an all-zero block; here they are 0)


@njit(**KERNEL)
def _quantize_q8_k(x, out):
    nb = x.shape[1] // QK_K
    for r in prange(x.shape[0]):
        lane_max = np.empty(16, np.float32)
        qs = np.empty(QK_K, np.int32)
        for b in range(nb):
            xs = x[r, b * QK_K:(b + 1) * QK_K]
            blk = out[r, b * 292:(b + 1) * 292]
            # ggml keeps the first x of largest |x| (NaN never wins); the largest |x| does not
            # depend on the order, so find it over 16 lanes, then its first position
            for k in range(16):
                lane_max[k] = ZERO
            for j in range(0, QK_K, 16):
                for k in range(16):
                    ax = abs(xs[j + k])
                    lane_max[k] = ax if ax > lane_max[k] else lane_max[k]
            amax = ZERO
            for k in range(16):
                amax = lane_max[k] if lane_max[k] > amax else amax
            if amax == ZERO:
                for i in range(292):
                    blk[i] = 0
                continue
            vmax = ZERO
            for j in range(QK_K):
                if abs(xs[j]) == amax:
                    vmax = xs[j]
                    break
            iscale = F32_M127 / vmax
            for j in range(QK_K):
                qs[j] = np.int8(min(np.int32(127), nearest_int(iscale * xs[j])))   # int8_t
            for j in range(QK_K):
                blk[4 + j] = qs[j] & 0xFF
            for j in range(16):
                total = np.int32(0)
                for i in range(16):
                    total += qs[16 * j + i]
                blk[260 + 2 * j] = total & 0xFF
                blk[261 + 2 * j] = (total >> 8) & 0xFF
            bits = f32_bits(ONE / iscale)
            for i in range(4):
                blk[i] = (bits >> (8 * i)) & 0xFF


@njit(inline="always")
def _dequantize_block_q8_k(blk, y):
    d = f32_from_bits(read_u32(blk, 0))
    for j in range(QK_K):
        y[j] = d * F32(np.int8(blk[4 + j]))


@njit(**DEQUANT)
def _dequantize_q8_k(raw, y):
    _dequantize_rows(raw, y, 292, _dequantize_block_q8_k)


# ---------------------------------------------------------------------------------------------
# registration


def _codec(ggml_type: GGMLType, quantize_kernel, dequantize_kernel, weighted: bool) -> Codec:
    """`weighted`: the quantize kernel takes (rows, importance weights or an empty array, out)."""
    info = TYPE_INFO[ggml_type]
    no_weights = np.empty(0, np.float32)

    def quantize(rows: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        out = np.zeros((rows.shape[0], rows.shape[1] // QK_K * info.block_bytes), np.uint8)
        if weighted:
            qw = no_weights if weights is None else np.ascontiguousarray(weights, dtype=np.float32)
            quantize_kernel(rows, qw, out)
        else:
            quantize_kernel(rows, out)
        return out

    quantize.__name__ = f"quantize_{ggml_type.name.lower()}"
    # the dequantize kernels take rows of blocks, so also (n_blocks, block_bytes): a row a block
    decoder = Decoder(dequantize_kernel, ggml_type)
    return register(Codec(ggml_type, decoder.dequantize, quantize, uses_weights=weighted, decoder=decoder))


# type -> (quantize kernel, dequantize kernel, whether quantizing takes importance weights)
KERNELS = {
    GGMLType.Q2_K: (_quantize_q2_k, _dequantize_q2_k, True),
    GGMLType.Q3_K: (_quantize_q3_k, _dequantize_q3_k, True),
    GGMLType.Q4_K: (_quantize_q4_k, _dequantize_q4_k, True),
    GGMLType.Q5_K: (_quantize_q5_k, _dequantize_q5_k, True),
    GGMLType.Q6_K: (_quantize_q6_k, _dequantize_q6_k, True),
    GGMLType.Q8_K: (_quantize_q8_k, _dequantize_q8_k, False),
}

for _type, (_q, _dq, _weighted) in KERNELS.items():
    _codec(_type, _q, _dq, _weighted)
