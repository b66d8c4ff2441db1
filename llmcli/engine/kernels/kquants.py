"""Mat-vec kernels for the 256-weight super-block formats: Q2_K, Q3_K, Q4_K, Q5_K,
Q6_K and IQ4_XS (ggml-common.h block structs, dequantize_row_* in ggml-quants.c), with float32 activations;
token generation multiplies all of them with 8-bit activations in int8_kquants.py.

Same "lanes" shape as legacy.py, except Q4_K and Q6_K (the demo model's layers), whose rows each
run as one explicit vector loop with the accumulators in registers (`simd.row_dot_q4_k`,
`simd.row_dot_q6_k`: ~1.4x and ~1.6x in cache). Formats with a per-sub-block minimum (Q2_K, Q4_K, Q5_K) add
`dmin * m * sum(x over the sub-block)` once per sub-block instead of subtracting per lane; the
sub-block sums of x are computed once per call (llama.cpp's `bsums` idea).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ...gguf.constants import GGMLType
from ...quants.half import read_fp16
from ...quants.kquants import q3_k_scale, scale_min_k4
from .llvm_ir import PREFETCH_BYTES
from .simd import fma_lanes, prefetch, row_dot_q4_k, row_dot_q6_k
from .common import Format, block_sums, columns, lanes_rows, lanes_rows_min, no_scratch, row_dots
from .legacy import iq4_rows


# ---------------------------------------------------------------------------------------------
# Q2_K: 84 bytes, 256 weights in 16 sub-blocks of 16
#   byte 0             16                          80    82     84
#        | scales[16]  | qs[64]                    | d   | dmin |
#   scales[s]: low nibble = scale, high nibble = min of sub-block s
#   sub-block s = 8n + 2j + h (n: 128-half, j: 2-bit plane, h: 16-byte half), weight l of it:
#        q = (qs[32n + 16h + l] >> 2j) & 3       value = d*scale*q - dmin*min
# ---------------------------------------------------------------------------------------------
@njit(inline="always")
def _q2_k_block(blocks, r, b, row, base, variant, x_sum, scratch, acc, offset, xf, n_t, n_cols):
    d = read_fp16(blocks[r, b], 80)
    dmin = read_fp16(blocks[r, b], 82)
    for n in range(2):
        for j in range(4):
            s = 8 * n + 2 * j  # sub-blocks s and s+1: 32 consecutive weights
            sc0 = np.int32(blocks[r, b, s])
            sc1 = np.int32(blocks[r, b, s + 1])
            m0 = np.float32(sc0 >> 4)
            m1 = np.float32(sc1 >> 4)
            for t in range(n_t):
                offset[t] -= dmin * (m0 * x_sum[t, b, s] + m1 * x_sum[t, b, s + 1])
            fma_lanes(acc=acc, acc_off=32 * (j & 1), scale=d * np.float32(sc0 & 15),
                      scale2=d * np.float32(sc1 & 15), x=xf, x_off=256 * b + 16 * s,
                      src=row, src_off=base + 16 + 32 * n, shift=2 * j, mask=3,
                      src2=row, src2_off=0, shift2=0, mask2=0, mul2=0, bias=0,  # no second source
                      n=32, signed=False, src2_bits=False, nibbles=False,
                      n_columns=n_t, acc_stride=64, x_stride=n_cols)


@njit(parallel=True, cache=True, nogil=True)
def matvec_q2_k(blocks, x, out):
    lanes_rows_min(blocks, x, out, 84, _q2_k_block, False, 16)


# ---------------------------------------------------------------------------------------------
# Q3_K: 110 bytes, 256 weights in 16 sub-blocks of 16
#   byte 0           32                 96           108  110
#        | hmask[32] | qs[64]           | scales[12] | d  |
#   sub-block s = 8n + 2j + h as in Q2_K; weight l of it:
#        q = ((qs[32n + 16h + l] >> 2j) & 3) - (0 if hmask[16h + l] & (1 << 4n+j) else 4)
#        value = d * (scale[s] - 32) * q
#   scales: 16 x 6 bits; byte i<4:  s[i] low4 = b[i]&15,  s[i+8] low4 = b[i]>>4,
#           byte 4+i: s[i+4] low4 = b[4+i]&15, s[i+12] low4 = b[4+i]>>4,
#           byte 8+i: bits 0-1 -> s[i], 2-3 -> s[i+4], 4-5 -> s[i+8], 6-7 -> s[i+12] (high 2 bits)
#           (read by quants.kquants.q3_k_scale)
# ---------------------------------------------------------------------------------------------
@njit(inline="always")
def _q3_k_block(blocks, r, b, row, base, variant, x_sums, scratch, acc, offset, xf, n_t, n_cols):
    d = read_fp16(blocks[r, b], 108)
    sc = blocks[r, b, 96:108]
    for n in range(2):
        for j in range(4):
            s = 8 * n + 2 * j  # sub-blocks s and s+1: 32 consecutive weights
            # q = 2 low bits + 4 * hmask bit - 4
            fma_lanes(acc=acc, acc_off=32 * (j & 1), scale=d * np.float32(q3_k_scale(s, sc)),
                      scale2=d * np.float32(q3_k_scale(s + 1, sc)), x=xf, x_off=256 * b + 16 * s,
                      src=row, src_off=base + 32 + 32 * n, shift=2 * j, mask=3,
                      src2=row, src2_off=base, shift2=4 * n + j, mask2=1, mul2=4, bias=-4,
                      n=32, signed=False, src2_bits=False, nibbles=False,
                      n_columns=n_t, acc_stride=64, x_stride=n_cols)


@njit(parallel=True, cache=True, nogil=True)
def matvec_q3_k(blocks, x, out):
    lanes_rows(blocks, x, out, 110, _q3_k_block, False, None, no_scratch)


# ---------------------------------------------------------------------------------------------
# Q4_K: 144 bytes, 256 weights in 8 sub-blocks of 32
#   byte 0    2      4            16                                 144
#        | d  | dmin | scales[12] | qs[128]                          |
#   group g (0..3) = 32 bytes qs[32g .. 32g+31]: low nibbles are sub-block 2g, high nibbles 2g+1
#   value = d*scale[s]*q - dmin*min[s]   (6-bit scale/min pairs, quants.kquants.scale_min_k4)
# ---------------------------------------------------------------------------------------------
@njit(parallel=True, cache=True, nogil=True)
def matvec_q4_k(blocks, x, out):
    # one LLVM loop per row (simd.row_dot_q4_k: accumulators in registers, scales unpacked as vectors)
    X, Y = columns(x, out)
    n_rows, n_blocks = blocks.shape[0], blocks.shape[1]
    row_dots(blocks.reshape(n_rows, n_blocks * 144), Y, _q4_k_row, "q4_k", (X, block_sums(X, 32), n_blocks))


@njit(inline="always")
def _q4_k_row(row, operands, kind, Y, r, t0, n_t):  # common.row_dots' step
    X, x_sum, n_blocks = operands
    row_dot_q4_k(row, X, x_sum, n_blocks, Y, r, t0, n_t)


# ---------------------------------------------------------------------------------------------
# Q5_K: 176 bytes, 256 weights in 8 sub-blocks of 32
#   byte 0    2      4            16        48                       176
#        | d  | dmin | scales[12] | qh[32]  | qs[128]                |
#   as Q4_K, plus a 5th bit: sub-block s takes bit s of qh[l] (l = position in the sub-block)
# ---------------------------------------------------------------------------------------------
@njit(inline="always")
def _q5_k_block(blocks, r, b, row, base, variant, x_sum, scratch, acc, offset, xf, n_t, n_cols):
    d = read_fp16(blocks[r, b], 0)
    dmin = read_fp16(blocks[r, b], 2)
    prefetch(row, base + PREFETCH_BYTES)
    prefetch(row, base + PREFETCH_BYTES + 64)
    prefetch(row, base + PREFETCH_BYTES + 128)
    for g in range(4):
        sc1, m1 = scale_min_k4(2 * g, blocks[r, b, 4:16])
        sc2, m2 = scale_min_k4(2 * g + 1, blocks[r, b, 4:16])
        mf1 = np.float32(m1)
        mf2 = np.float32(m2)
        for t in range(n_t):
            offset[t] -= dmin * (mf1 * x_sum[t, b, 2 * g] + mf2 * x_sum[t, b, 2 * g + 1])
        d1 = d * np.float32(sc1)
        d2 = d * np.float32(sc2)
        fma_lanes(acc=acc, acc_off=0, scale=d1, scale2=d1, x=xf, x_off=256 * b + 64 * g,
                  src=row, src_off=base + 48 + 32 * g, shift=0, mask=15,
                  src2=row, src2_off=base + 16, shift2=2 * g, mask2=1, mul2=16, bias=0,
                  n=32, signed=False, src2_bits=False, nibbles=False,
                  n_columns=n_t, acc_stride=64, x_stride=n_cols)
        fma_lanes(acc=acc, acc_off=32, scale=d2, scale2=d2, x=xf, x_off=256 * b + 64 * g + 32,
                  src=row, src_off=base + 48 + 32 * g, shift=4, mask=15,
                  src2=row, src2_off=base + 16, shift2=2 * g + 1, mask2=1, mul2=16, bias=0,
                  n=32, signed=False, src2_bits=False, nibbles=False,
                  n_columns=n_t, acc_stride=64, x_stride=n_cols)


@njit(parallel=True, cache=True, nogil=True)
def matvec_q5_k(blocks, x, out):
    lanes_rows_min(blocks, x, out, 176, _q5_k_block, False, 32)


# ---------------------------------------------------------------------------------------------
# Q6_K: 210 bytes, 256 weights in 16 sub-blocks of 16
#   byte 0                  128             192               208  210
#        | ql[128]          | qh[64]        | scales[16] int8 | d  |
#   half n (0,1) uses ql[64n..64n+63], qh[32n..32n+31]; for l in 0..31 the byte triple
#   (a = ql[64n+l], c = ql[64n+32+l], h = qh[32n+l]) feeds 4 weights, 32 apart:
#        c=0: a & 15 | (h & 3) << 4       c=1: c & 15 | (h >> 2 & 3) << 4
#        c=2: a >> 4 | (h >> 4 & 3) << 4  c=3: c >> 4 | (h >> 6 & 3) << 4      (each minus 32)
#   weight 128n + 32c + l sits in sub-block 8n + 2c + l//16, whose scale is scales[8n + 2c + l//16]
# ---------------------------------------------------------------------------------------------
@njit(parallel=True, cache=True, nogil=True)
def matvec_q6_k(blocks, x, out):
    # one LLVM loop per row (simd.row_dot_q6_k: accumulators in registers, a zmm per sub-block)
    X, Y = columns(x, out)
    n_rows, n_blocks = blocks.shape[0], blocks.shape[1]
    row_dots(blocks.reshape(n_rows, n_blocks * 210), Y, _q6_k_row, "q6_k", (X, n_blocks))


@njit(inline="always")
def _q6_k_row(row, operands, kind, Y, r, t0, n_t):  # common.row_dots' step
    X, n_blocks = operands
    row_dot_q6_k(row, X, n_blocks, Y, r, t0, n_t)


# ---------------------------------------------------------------------------------------------
# IQ4_XS: 136 bytes, 256 weights in 8 sub-blocks of 32
#   byte 0    2              4             8                         136
#        | d  | scales_h u16 | scales_l[4] | qs[128]                 |
#   sub-block ib: ls = (scales_l[ib/2] >> 4*(ib%2) & 15) | (scales_h >> 2ib & 3) << 4
#   16 bytes qs[16ib..]: low nibble = weight j, high = weight j+16; value = d*(ls-32)*VALUES[q]
#   (activation view x[block, 16, 16]: half 2ib + 0/1)
# ---------------------------------------------------------------------------------------------
@njit(parallel=True, cache=True, nogil=True)
def matvec_iq4_xs(blocks, x, out):
    iq4_rows(blocks, x, out, 8)  # IQ4_NL's loop (legacy.py), a scale per sub-block


FORMATS = {
    GGMLType.Q2_K: Format((16, 16), matvec_q2_k),
    GGMLType.Q3_K: Format((16, 16), matvec_q3_k),
    GGMLType.Q4_K: Format((8, 32), matvec_q4_k),
    GGMLType.Q5_K: Format((8, 32), matvec_q5_k),
    GGMLType.Q6_K: Format((16, 16), matvec_q6_k),
    GGMLType.IQ4_XS: Format((16, 16), matvec_iq4_xs),
}
