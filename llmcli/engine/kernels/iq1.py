"""Mat-vec kernels for the 1-bit lattice i-quants IQ1_S and IQ1_M (ggml-common.h block_iq1_s,
block_iq1_m): float32 activations (the "lanes" shape of common.py) and 8-bit activations with
llama.cpp's arithmetic (ggml's `ggml_vec_dot_iq1_s_q8_K` / `ggml_vec_dot_iq1_m_q8_K`).

A group of 8 weights is an 11-bit index into iq1s_grid (values -1, 0, 1, quants/iq_grids.py),
shifted by +-delta (IQ1S_DELTA = 0.125, `quants.iq1.DELTA`; the sign per sub-block in IQ1_S, per
group in IQ1_M). The layouts are decoded by the codecs' own decoders (`quants.iq1.iq1_s_sub_block`,
`iq1_m_sub_block`, `iq1_m_scale`: grid values q, the 3-bit scale ls, the delta signs).

Float32 activations: weight = dl * (q + delta) with dl = d * (2 ls + 1) is the same float32 as
(dl / 8) * (8 q +- 1); those integer codes go through `simd.fma_lanes` (signed bytes, a scale per 16
lanes), acc[k] += w[k] * x[k], two 32-lane halves of a 64-lane accumulator in turn.

8-bit activations (x quantized per call to ggml's Q8_K blocks, with its sums of 16 codes, bsums),
per super-block as ggml's generic C, m = 2 ls + 1:

    IQ1_S:  sumi  = sum_s m_s * (q_s . xq_s)           s < 8 sub-blocks of 32
            sumi1 = sum_s m_s * sign_s * (bsums[2s] + bsums[2s+1])
            out  += d_w * d_x * (sumi + IQ1S_DELTA * sumi1)
    IQ1_M:  sumi1 = sum_t m_t * (q_t . xq_t)           t < 16 sub-blocks of 16
            sumi2 = sum_g m_t(g) * sign_g * (sum of xq over group g of 8)
            out  += d_w * d_x * (sumi1 + IQ1M_DELTA * sumi2)

The integer sums are exact; results equal ggml's to float32 rounding of the per-block scaling and
of the sum over blocks.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ...gguf.constants import GGMLType
from ...quants.half import read_fp16
from ...quants.iq1 import DELTA, iq1_m_scale, iq1_m_sub_block, iq1_s_sub_block
from .common import ROW_TILE, Format, columns
from .int8_kquants import _q8_k_columns
from .simd import fma_lanes, lanes_sum

F32 = np.float32
QK_K = 256


# ---------------------------------------------------------------------------------------------
# IQ1_S: 50 bytes, 256 weights in 8 sub-blocks of 32 = 4 groups of 8
#   byte 0      2                              34                                      50
#        | d    | qs[32]: low 8 bits of group  | qh[8] u16 LE, one per sub-block s:    |
#        | fp16 | index (4 per sub-block)      |  bits 3l..3l+2: index bits 8..10 of   |
#        |      |                              |  group 4s + l; 12..14: ls; 15: delta- |
#   value = d * (2 ls + 1) * (iq1s_grid[index][j] + delta)     delta = -0.125 if bit 15 else 0.125
#
# IQ1_M: 56 bytes, 256 weights in 16 sub-blocks of 16 = 2 groups of 8
#   byte 0                         32                            48                  56
#        | qs[32]: low 8 bits of   | qh[16], one per sub-block t: | scales: 4 x u16  |
#        | group index (2 per t)   |  bits 0..2: index bits 8..10 | LE; bits 3k..3k+2|
#        |                         |  of group 2t, bit 3: its     | of u16 i: ls of  |
#        |                         |  delta sign; 4..6, 7: the    | sub-block 4i + k;|
#        |                         |  same for group 2t + 1       | 12..15: d (fp16) |
#   value = d * (2 ls + 1) * (iq1s_grid[index][j] + delta)
# ---------------------------------------------------------------------------------------------
@njit(inline="always")
def _decode_eighths(blk, m_type, q, codes, scales):
    """The block's 256 weights as codes (int8 (256,)) times scales (float32 (16,), one per 16
    weights): weight = dl * (q + delta) = (dl / 8) * (8 q +- 1), the same float32 bits as the
    dequantizer's (8 q +- 1 and the division by 8 are exact). q: int8 scratch (32,). m_type: IQ1_M,
    else IQ1_S."""
    if m_type:
        d = iq1_m_scale(blk)
        for t in range(16):
            ls, negative0, negative1 = iq1_m_sub_block(blk, t, q)
            scales[t] = d * F32(2 * ls + 1) * F32(0.125)
            for j in range(8):
                codes[16 * t + j] = 8 * q[j] + (-1 if negative0 else 1)
                codes[16 * t + 8 + j] = 8 * q[8 + j] + (-1 if negative1 else 1)
    else:
        d = read_fp16(blk, 0)
        for s in range(8):
            ls, negative = iq1_s_sub_block(blk, s, q)
            scales[2 * s] = scales[2 * s + 1] = d * F32(2 * ls + 1) * F32(0.125)
            for k in range(32):
                codes[32 * s + k] = 8 * q[k] + (-1 if negative else 1)


@njit(inline="always")
def _iq1_rows(blocks, x, out, m_type):
    """Float32 activations: IQ1_M rows (m_type) or IQ1_S rows, "lanes" shape, all columns at once;
    one fma_lanes step per 32 weights (two scales: IQ1_M's sub-blocks of 16)."""
    X, Y = columns(x, out)
    n_t, n_cols = X.shape
    n_rows, n_blocks = blocks.shape[0], blocks.shape[1]
    xf = X.reshape(-1)
    for tile in prange((n_rows + ROW_TILE - 1) // ROW_TILE):
        acc = np.empty((n_t, 64), np.float32)
        q = np.empty(32, np.int8)
        codes = np.empty(QK_K, np.int8)
        code_bytes = codes.view(np.uint8)
        scales = np.empty(16, np.float32)
        for r in range(tile * ROW_TILE, min(n_rows, (tile + 1) * ROW_TILE)):
            acc[:] = 0.0
            for b in range(n_blocks):
                _decode_eighths(blocks[r, b], m_type, q, codes, scales)
                for i in range(8):
                    fma_lanes(acc=acc.reshape(-1), acc_off=32 * (i & 1), scale=scales[2 * i],
                              scale2=scales[2 * i + 1], x=xf, x_off=QK_K * b + 32 * i,
                              src=code_bytes, src_off=32 * i, shift=0, mask=-1,  # the codes as is
                              src2=code_bytes, src2_off=0, shift2=0, mask2=0, mul2=0, bias=0,  # no second source
                              n=32, signed=True, src2_bits=False, nibbles=False,
                              n_columns=n_t, acc_stride=64, x_stride=n_cols)
            for t in range(n_t):
                Y[t, r] = lanes_sum(acc[t], 64)


@njit(inline="always")
def _group_sums(xq):
    """Sums of 8 consecutive codes of xq int8 (B, n): int32 (B, n/8), IQ1_M's delta term."""
    n_t, n = xq.shape
    sums = np.empty((n_t, n // 8), np.int32)
    for t in range(n_t):
        for g in range(n // 8):
            s = np.int32(0)
            for j in range(8):
                s += np.int32(xq[t, 8 * g + j])
            sums[t, g] = s
    return sums


@njit(inline="always")
def _iq1_int8_rows(blocks, x, out, m_type):
    """8-bit activations (Q8_K blocks), ggml's integer sums: per super-block the weights are decoded
    once to w = (2 ls + 1) * q (int8) and the signed odd scales of the delta terms (per sub-block of
    32 in IQ1_S, per group of 8 in IQ1_M), then per column w . xq and the delta sum (exact int32)."""
    X, Y = columns(x, out)
    n_t = X.shape[0]
    n_rows, n_blocks = blocks.shape[0], blocks.shape[1]
    xq, xd, bsums = _q8_k_columns(X, False, False)
    x_sums = _group_sums(xq) if m_type else bsums  # sums of 8 (IQ1_M) or of 16 (IQ1_S) codes
    n_delta = 32 if m_type else 8  # delta terms per super-block
    for tile in prange((n_rows + ROW_TILE - 1) // ROW_TILE):
        acc = np.empty(n_t, np.float32)
        q = np.empty(32, np.int8)
        w = np.empty(QK_K, np.int8)
        delta_scale = np.empty(n_delta, np.int32)  # +-(2 ls + 1) per delta term
        for r in range(tile * ROW_TILE, min(n_rows, (tile + 1) * ROW_TILE)):
            acc[:] = 0.0
            for b in range(n_blocks):
                blk = blocks[r, b]
                if m_type:
                    d = iq1_m_scale(blk)
                    for t in range(16):
                        ls, negative0, negative1 = iq1_m_sub_block(blk, t, q)
                        m = np.int32(2 * ls + 1)
                        for k in range(16):
                            w[16 * t + k] = m * q[k]
                        delta_scale[2 * t] = -m if negative0 else m
                        delta_scale[2 * t + 1] = -m if negative1 else m
                else:
                    d = read_fp16(blk, 0)
                    for s in range(8):
                        ls, negative = iq1_s_sub_block(blk, s, q)
                        m = np.int32(2 * ls + 1)
                        for k in range(32):
                            w[32 * s + k] = m * q[k]
                        delta_scale[s] = -m if negative else m
                for t in range(n_t):
                    sumi = np.int32(0)
                    for k in range(QK_K):
                        sumi += np.int32(w[k]) * np.int32(xq[t, QK_K * b + k])
                    sumi_delta = np.int32(0)
                    for g in range(n_delta):
                        if m_type:
                            group_sum = x_sums[t, 32 * b + g]
                        else:
                            group_sum = x_sums[t, 16 * b + 2 * g] + x_sums[t, 16 * b + 2 * g + 1]
                        sumi_delta += delta_scale[g] * np.int32(group_sum)
                    acc[t] += d * xd[t, b] * (F32(sumi) + DELTA * F32(sumi_delta))
            for t in range(n_t):
                Y[t, r] = acc[t]


# Signature of every mat-vec kernel (common.Format): blocks uint8 (rows, n_blocks, 50 | 56),
# x float32 (n_blocks, 8, 32) | (n_blocks, 16, 16) or X (B, n_cols), out float32 (rows,) or (B, rows).
@njit(parallel=True, cache=True, nogil=True)
def matvec_iq1_s(blocks, x, out):
    _iq1_rows(blocks, x, out, False)


@njit(parallel=True, cache=True, nogil=True)
def matvec_iq1_m(blocks, x, out):
    _iq1_rows(blocks, x, out, True)


@njit(parallel=True, cache=True, nogil=True)
def matvec_iq1_s_int8(blocks, x, out):
    _iq1_int8_rows(blocks, x, out, False)


@njit(parallel=True, cache=True, nogil=True)
def matvec_iq1_m_int8(blocks, x, out):
    _iq1_int8_rows(blocks, x, out, True)


FORMATS = {
    GGMLType.IQ1_S: Format((8, 32), matvec_iq1_s),
    GGMLType.IQ1_M: Format((16, 16), matvec_iq1_m),
}
INT8_IQ1_MATVECS = {
    GGMLType.IQ1_S: matvec_iq1_s_int8,
    GGMLType.IQ1_M: matvec_iq1_m_int8,
}
