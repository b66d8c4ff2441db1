"""Mat-vec kernels for the 3-bit lattice i-quants IQ3_XXS and IQ3_S (ggml-common.h block_iq3_xxs,
block_iq3_s): float32 activations (the "lanes" shape of common.py) and 8-bit activations with
llama.cpp's arithmetic (ggml's `ggml_vec_dot_iq3_xxs_q8_K` / `ggml_vec_dot_iq3_s_q8_K`).

Both types hold 256 weights as 8 sub-blocks of 32 = 64 groups of 4; a group is an index into a grid
of 4-byte points (quants/iq_grids.py) with the signs stored apart. The grid lookups and sign bits are
decoded by the codecs' own sub-block decoders (`quants.iq3.iq3_xxs_sub_block`, `iq3_s_sub_block`:
signed integer values q and the sub-block's 4-bit scale ls), so each layout is read in one place.

Float32 activations: per sub-block the decoded q go through `simd.fma_lanes` (signed bytes, one
scale), acc[k] += (db * q[k]) * x[k], db the sub-block's float scale exactly as the dequantizer
computes it; two 32-lane halves of a 64-lane accumulator alternate by sub-block.

8-bit activations (x quantized per call to ggml's Q8_K blocks, int8_kquants.quantize_q8_k_into),
per super-block as ggml's generic C:

    IQ3_XXS:  bsum = sum_s (2 ls_s + 1) * (q_s . xq_s)      out += d_w * d_x * bsum;  out *= 0.25 at the end
    IQ3_S:    bsum = sum_s (2 ls_s + 1) * (q_s . xq_s)      out += d_w * d_x * bsum

The integer sums are exact (|q| <= 62, |xq| <= 127, odd scales <= 31), so results equal ggml's to
float32 rounding of the per-block scaling and of the sum over blocks (ggml's AVX2 code sums the
blocks in 8 lanes, its generic code in one).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ...gguf.constants import GGMLType
from ...quants.half import read_fp16
from ...quants.iq3 import iq3_s_sub_block, iq3_xxs_sub_block
from .common import ROW_TILE, Format, columns
from .int8_kquants import _q8_k_columns
from .simd import fma_lanes, lanes_sum

F32 = np.float32
QK_K = 256


# ---------------------------------------------------------------------------------------------
# IQ3_XXS: 98 bytes, 256 weights in 8 sub-blocks of 32
#   byte 0      2                              66                                  98
#        | d    | qs[64]: grid index per group | scales_and_signs: u32 LE per s   |
#        | fp16 | of 4 (iq3xxs_grid, 8 per s)  |   bits 7l..7l+6: ksigns index of  |
#        |      |                              |   weights 8l..8l+7; 28..31: ls    |
#   sub-block s, group g < 8: grid entry iq3xxs_grid[qs[8s + g]] = 4 magnitudes 4..62
#   value = d * (0.5 + ls) * 0.5 * q          (float)
#         = d * (2 ls + 1) * q / 4            (ggml's integer form: the / 4 once per row)
#
# IQ3_S: 110 bytes, 256 weights in 8 sub-blocks of 32
#   byte 0      2              66           74                 106          110
#        | d    | qs[64]: low  | qh[8]: bit | signs[32]: bit j | scales[4]:  |
#        | fp16 | 8 bits of    | g of qh[s] | of byte 4s + l = | nibble per  |
#        |      | group index  | = index    | weight 8l + j of | sub-block   |
#        |      | (iq3s_grid)  | bit 8      | sub-block s      | (lo: even)  |
#   group g < 8 of sub-block s: iq3s_grid[qs[8s + g] | bit g of qh[s] << 8] = 4 magnitudes 1..15
#   value = d * (2 ls + 1) * q
# ---------------------------------------------------------------------------------------------
@njit(inline="always")
def _sub_block(blk, s, xxs, q, d):
    """Decode sub-block s into q (int8 (32,)); returns (float scale, odd integer scale 2 ls + 1)."""
    if xxs:
        ls = iq3_xxs_sub_block(blk, s, q)
        return d * (F32(0.5) + F32(ls)) * F32(0.5), 2 * ls + 1
    ls = iq3_s_sub_block(blk, s, q)
    return d * F32(1 + 2 * ls), 2 * ls + 1


@njit(inline="always")
def _iq3_rows(blocks, x, out, xxs):
    """Float32 activations: IQ3_XXS rows (xxs) or IQ3_S rows, "lanes" shape, all columns at once."""
    X, Y = columns(x, out)
    n_t, n_cols = X.shape
    n_rows, n_blocks = blocks.shape[0], blocks.shape[1]
    xf = X.reshape(-1)
    for tile in prange((n_rows + ROW_TILE - 1) // ROW_TILE):
        acc = np.empty((n_t, 64), np.float32)
        q = np.empty(32, np.int8)
        codes = q.view(np.uint8)
        for r in range(tile * ROW_TILE, min(n_rows, (tile + 1) * ROW_TILE)):
            acc[:] = 0.0
            for b in range(n_blocks):
                blk = blocks[r, b]
                d = read_fp16(blk, 0)
                for s in range(8):
                    db, _ = _sub_block(blk, s, xxs, q, d)
                    fma_lanes(acc=acc.reshape(-1), acc_off=32 * (s & 1), scale=db, scale2=db, x=xf,
                              x_off=QK_K * b + 32 * s, src=codes, src_off=0, shift=0, mask=-1,  # q as is
                              src2=codes, src2_off=0, shift2=0, mask2=0, mul2=0, bias=0,  # no second source
                              n=32, signed=True, src2_bits=False, nibbles=False,
                              n_columns=n_t, acc_stride=64, x_stride=n_cols)
            for t in range(n_t):
                Y[t, r] = lanes_sum(acc[t], 64)


@njit(inline="always")
def _iq3_int8_rows(blocks, x, out, xxs):
    """8-bit activations (Q8_K blocks), ggml's integer sums: per super-block the weights are decoded
    once to w = (2 ls + 1) * q (int16), then per column bsum = w . xq (int32, exact)."""
    X, Y = columns(x, out)
    n_t = X.shape[0]
    n_rows, n_blocks = blocks.shape[0], blocks.shape[1]
    xq, xd, _ = _q8_k_columns(X, False, False)
    for tile in prange((n_rows + ROW_TILE - 1) // ROW_TILE):
        acc = np.empty(n_t, np.float32)
        q = np.empty(32, np.int8)
        w = np.empty(QK_K, np.int16)
        for r in range(tile * ROW_TILE, min(n_rows, (tile + 1) * ROW_TILE)):
            acc[:] = 0.0
            for b in range(n_blocks):
                blk = blocks[r, b]
                d = read_fp16(blk, 0)
                for s in range(8):
                    _, odd_scale = _sub_block(blk, s, xxs, q, d)
                    for k in range(32):
                        w[32 * s + k] = np.int16(odd_scale * q[k])
                for t in range(n_t):
                    bsum = np.int32(0)
                    for k in range(QK_K):
                        bsum += np.int32(w[k]) * np.int32(xq[t, QK_K * b + k])
                    acc[t] += d * xd[t, b] * F32(bsum)
            for t in range(n_t):
                Y[t, r] = F32(0.25) * acc[t] if xxs else acc[t]


# Signature of every mat-vec kernel (common.Format): blocks uint8 (rows, n_blocks, 98 | 110),
# x float32 (n_blocks, 8, 32) or X (B, n_cols), out float32 (rows,) or (B, rows).
@njit(parallel=True, cache=True, nogil=True)
def matvec_iq3_xxs(blocks, x, out):
    _iq3_rows(blocks, x, out, True)


@njit(parallel=True, cache=True, nogil=True)
def matvec_iq3_s(blocks, x, out):
    _iq3_rows(blocks, x, out, False)


@njit(parallel=True, cache=True, nogil=True)
def matvec_iq3_xxs_int8(blocks, x, out):
    _iq3_int8_rows(blocks, x, out, True)


@njit(parallel=True, cache=True, nogil=True)
def matvec_iq3_s_int8(blocks, x, out):
    _iq3_int8_rows(blocks, x, out, False)


FORMATS = {
    GGMLType.IQ3_XXS: Format((8, 32), matvec_iq3_xxs),
    GGMLType.IQ3_S: Format((8, 32), matvec_iq3_s),
}
INT8_IQ3_MATVECS = {
    GGMLType.IQ3_XXS: matvec_iq3_xxs_int8,
    GGMLType.IQ3_S: matvec_iq3_s_int8,
}
