"""Mat-vec kernels for the 1-bit lattice i-quants IQ1_S and IQ1_M (ggml-common.h block_iq1_s,
block_iq1_m): float32 activations (the "lanes" shape of common.py) and 8-bit activations with
llama.cpp's arithmetic (ggml's `ggml_vec_dot_iq1_s_q8_K` / `ggml_vec_dot_iq1_m_q8_K`).

A group of 8 weights is an 11-bit index into iq1s_grid (values -1, 0, 1, quants/iq_grids.py),
shifted by +-delta (IQ1S_DELTA = 0.125, `quants.iq1.DELTA`; the sign per sub-block in IQ1_S, per
group in IQ1_M). The layouts are decoded by the codecs' own block decoders (`quants.iq1.iq1_s_block`,
`iq1_m_block`, `iq1_m_scale`: grid values q, the 3-bit scales ls, the delta signs).

Both kernels read a block as the integer codes c = 8 q + 1 (delta +0.125) or 8 q - 1 (-0.125),
|c| <= 9, with the odd scale m = 2 ls + 1 per 16 codes (`_eighths`, `_decode_eighths`):
weight = d * m * (q +- delta) = (d * m / 8) * c.

Float32 activations: the codes go through `simd.fma_lanes` (signed bytes, the float scale
d * m * 0.125 per 16 lanes: the dequantizer's weights bit for bit), acc[k] += w[k] * x[k], two
32-lane halves of a 64-lane accumulator in turn.

8-bit activations (x quantized per call to ggml's Q8_K blocks), per super-block as ggml's generic C:

    IQ1_S:  sumi  = sum_s m_s * (q_s . xq_s)           s < 8 sub-blocks of 32
            sumi1 = sum_s m_s * sign_s * (sum of xq over sub-block s)     (ggml: its bsums)
            out  += d_w * d_x * (sumi + IQ1S_DELTA * sumi1)
    IQ1_M:  sumi1 = sum_t m_t * (q_t . xq_t)           t < 16 sub-blocks of 16
            sumi2 = sum_g m_t(g) * sign_g * (sum of xq over group g of 8)
            out  += d_w * d_x * (sumi1 + IQ1M_DELTA * sumi2)

computed as one exact integer dot per block, sum_k m_k c_k xq_k = 8 sumi + sumi_delta
(`iq3.scaled_dot_s8`), times 0.125: the same float32 as ggml's sumi + 0.125 sumi_delta. Results
equal ggml's to float32 rounding of the per-block scaling and of the sum over blocks.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ...gguf.constants import GGMLType
from ...quants.half import read_fp16
from ...quants.iq1 import DELTA, iq1_m_block, iq1_m_scale, iq1_s_block
from ...quants.iq_grids import negate_bytes
from ...quants.kquants import QK_K
from .common import ROW_TILE, Format, columns, lanes_rows
from .int8_kquants import q8_k_columns
from .iq3 import scaled_dot_s8
from .simd import fma_lanes

F32 = np.float32


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
_LOW_BITS = np.uint64(0x0101010101010101)
_HIGH_FIVE = np.uint64(0xF8F8F8F8F8F8F8F8)


@njit(inline="always")
def _eighths(word, negative):
    """8 grid values q (-1, 0, 1; int8 bytes of a uint64) -> the bytes 8 q + 1, or 8 q - 1 where
    the group's delta is negative, 8 at a time: 8 q = (word << 3) with each byte's 3 low bits
    cleared (what a byte shifts into its neighbour), + 1 = | 1. 8 q - 1 = -(8 (-q) + 1), -q
    swapping the bytes 0x01 and 0xFF (^ 0xFE where the low bit is set); 8 (-q) + 1 is never 0,
    so iq_grids.negate_bytes applies. Without a branch (the signs are random: a branch
    mispredicted about every other group)."""
    flip = np.uint64(0) - np.uint64(negative)  # all ones where negative
    word = word ^ ((word & _LOW_BITS) * np.uint64(0xFE) & flip)
    return negate_bytes(((word << np.uint64(3)) & _HIGH_FIVE) | _LOW_BITS, flip)


@njit(inline="always")
def _decode_eighths(blk, m_type, grid_values, ls, negative, codes, scales):
    """An IQ1_M (m_type) or IQ1_S block as codes 8 q +- 1 (uint64 (32,) = int8 (256,)) and the odd
    integer scales 2 ls + 1 per 16 codes (int16 (16,)): weight = d * (2 ls + 1) * (q +- delta)
    = d * (2 ls + 1) / 8 * code. Returns d. grid_values, ls, negative: the block decoder's outputs
    (scratch)."""
    if m_type:
        iq1_m_block(blk, grid_values, ls, negative)
        for i in range(32):  # word i = group i of 8
            codes[i] = _eighths(grid_values[i], negative[i])
        for t in range(16):
            scales[t] = 2 * ls[t] + 1
        return iq1_m_scale(blk)
    iq1_s_block(blk, grid_values, ls, negative)
    for s in range(8):  # words 4s .. 4s + 3 = sub-block s
        for l in range(4):
            codes[4 * s + l] = _eighths(grid_values[4 * s + l], negative[s])
        scales[2 * s] = scales[2 * s + 1] = 2 * ls[s] + 1
    return read_fp16(blk, 0)


@njit(inline="always")
def _iq1_scratch():
    """The block decoder's outputs (grid values, ls, delta signs) and the codes 8 q +- 1 with their
    odd scales (`_decode_eighths`)."""
    codes = np.empty(32, np.uint64)
    return (np.empty(32, np.uint64), np.empty(16, np.int32), np.empty(32, np.bool_), codes, codes.view(np.uint8),
            np.empty(16, np.int16))


@njit(inline="always")
def _iq1_block(blocks, r, b, row, base, m_type, x_sums, scratch, acc, offset, xf, n_t, n_cols):
    """Float32 activations: an IQ1_M block (m_type) or IQ1_S block, one fma_lanes step per 32 codes
    (a float scale d * (2 ls + 1) * 0.125 per 16: the weights are the dequantizer's
    d * (2 ls + 1) * (q +- delta) bit for bit, 8 q +- 1 and / 8 being exact)."""
    grid_values, ls, negative, codes, code_bytes, scales = scratch
    d = _decode_eighths(blocks[r, b], m_type, grid_values, ls, negative, codes, scales)
    for i in range(8):
        fma_lanes(acc=acc, acc_off=32 * (i & 1),
                  scale=d * F32(scales[2 * i]) * F32(0.125),
                  scale2=d * F32(scales[2 * i + 1]) * F32(0.125), x=xf, x_off=QK_K * b + 32 * i,
                  src=code_bytes, src_off=32 * i, shift=0, mask=-1,  # the codes as is
                  src2=code_bytes, src2_off=0, shift2=0, mask2=0, mul2=0, bias=0,  # no second source
                  n=32, signed=True, src2_bits=False, nibbles=False,
                  n_columns=n_t, acc_stride=64, x_stride=n_cols)


@njit(inline="always")
def _iq1_int8_rows(blocks, x, out, m_type):
    """8-bit activations (Q8_K blocks), ggml's integer sums: per super-block the codes 8 q +- 1 and
    their odd scales are decoded once, then per column one `scaled_dot_s8` = 8 sumi + sumi_delta
    (ggml's sumi, and its delta sum sumi1 / sumi2, in one exact int32), times 0.125: the same float
    as ggml's sumi + IQ1S_DELTA * sumi1 (both round the same rational once: |8 sumi + sumi_delta|
    <= 256 * 9 * 15 * 127 < 2^24, so the int -> float steps are exact)."""
    X, Y = columns(x, out)
    n_t = X.shape[0]
    n_rows, n_blocks = blocks.shape[0], blocks.shape[1]
    xq, xd, _ = q8_k_columns(X, 0, False)
    for tile in prange((n_rows + ROW_TILE - 1) // ROW_TILE):
        acc = np.empty(n_t, np.float32)
        grid_values = np.empty(32, np.uint64)
        ls = np.empty(16, np.int32)
        negative = np.empty(32, np.bool_)
        codes = np.empty(32, np.uint64)
        scales = np.empty(16, np.int16)
        for r in range(tile * ROW_TILE, min(n_rows, (tile + 1) * ROW_TILE)):
            acc[:] = 0.0
            for b in range(n_blocks):
                d = _decode_eighths(blocks[r, b], m_type, grid_values, ls, negative, codes, scales)
                for t in range(n_t):
                    combined = F32(scaled_dot_s8(codes, xq[t], QK_K * b, scales))
                    acc[t] += d * xd[t, b] * (combined * DELTA)
            for t in range(n_t):
                Y[t, r] = acc[t]


# Signature of every mat-vec kernel (common.Format): blocks uint8 (rows, n_blocks, 50 | 56),
# x float32 (n_blocks, 8, 32) | (n_blocks, 16, 16) or X (B, n_cols), out float32 (rows,) or (B, rows).
@njit(parallel=True, cache=True, nogil=True)
def matvec_iq1_s(blocks, x, out):
    lanes_rows(blocks, x, out, 50, _iq1_block, False, None, _iq1_scratch)


@njit(parallel=True, cache=True, nogil=True)
def matvec_iq1_m(blocks, x, out):
    lanes_rows(blocks, x, out, 56, _iq1_block, True, None, _iq1_scratch)


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
INT8_MATVECS = {
    GGMLType.IQ1_S: matvec_iq1_s_int8,
    GGMLType.IQ1_M: matvec_iq1_m_int8,
}
