"""Mat-vec kernels for the 32-weight block formats: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0,
IQ4_NL (ggml-common.h block structs, dequantize_row_* in ggml-quants.c).

Float32 activations here (prompt GEMM tiles are decoded by the codecs' dequantizers, quants/; the
mat-vecs serve `set_activations("float")`); token generation multiplies all of them with 8-bit
activations in int8.py. Q8_0, Q4_0 and Q5_0 (the demo model's output
and most of its layers) run each row as one explicit vector loop (`simd.row_dot`); Q4_1 and Q5_1
use the "lanes" shape of common.py with `simd.fma_lanes` as the step; IQ4_NL keeps a plain loop
(a table lookup per lane).
Nibble formats split a block in two halves: byte j holds weight j (low nibble) and weight j+16
(high nibble), so their activation view is x[block, half, 16].
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ...gguf.constants import GGMLType
from ...quants.half import read_fp16
from ...quants.iquants import IQ4_GRID, iq4_xs_scale
from .simd import fma_lanes, lanes_sum, row_dot
from .common import ROW_TILE, Format, columns, lanes_rows_min, row_dots


# ---------------------------------------------------------------------------------------------
# Q8_0: 34 bytes, 32 weights            weight k = d * qs[k]
#   byte  0    2                                  34
#         | d  | qs[0..31] int8                   |
#         fp16
# ---------------------------------------------------------------------------------------------
@njit(parallel=True, cache=True, nogil=True)
def matvec_q8_0(blocks, x, out):
    # the demo's output matrix: a whole-row vector loop (simd.row_dot), ~15 % over fma_lanes
    _whole_rows(blocks, x, out, 34, "q8_0")


@njit(inline="always")
def _whole_rows(blocks, x, out, block_bytes, kind):
    """Q8_0, Q4_0 or Q5_0 rows (kind), each one `simd.row_dot`."""
    X, Y = columns(x, out)
    n_rows, n_blocks = blocks.shape[0], blocks.shape[1]
    row_dots(blocks.reshape(n_rows, n_blocks * block_bytes), Y, _row_dot, kind, (X, n_blocks))


@njit(inline="always")
def _row_dot(row, operands, kind, Y, r, t0, n_t):  # common.row_dots' step
    X, n_blocks = operands
    row_dot(row, X, n_blocks, kind, Y, r, t0, n_t)


# ---------------------------------------------------------------------------------------------
# Q4_0: 18 bytes, 32 weights            weight j    = d * ((qs[j] & 15) - 8)
#   byte  0    2                  18    weight j+16 = d * ((qs[j] >> 4) - 8)
#         | d  | qs[0..15]        |
# ---------------------------------------------------------------------------------------------
@njit(parallel=True, cache=True, nogil=True)
def matvec_q4_0(blocks, x, out):
    # one vector loop per row (simd.row_dot); in cache ~30 % over fma_lanes steps
    _whole_rows(blocks, x, out, 18, "q4_0")


# ---------------------------------------------------------------------------------------------
# Q4_1: 20 bytes, 32 weights            weight j    = d * (qs[j] & 15) + m
#   byte  0    2    4                  20  weight j+16 = d * (qs[j] >> 4) + m
#         | d  | m  | qs[0..15]        |
# The "+ m" part is m * sum(x over the block), added once per block instead of per lane.
# ---------------------------------------------------------------------------------------------
@njit(parallel=True, cache=True, nogil=True)
def matvec_q4_1(blocks, x, out):
    lanes_rows_min(blocks, x, out, 20, _affine_block, False, 32)


@njit(inline="always")
def _affine_block(blocks, r, b, row, base, five_bits, x_sum, scratch, acc, offset, xf, n_t, n_cols):
    """A Q4_1 block, or Q5_1 (five_bits: qh at byte 4, the nibbles at 8 instead of 4): one
    fma_lanes step (a nibble lane each, and Q5_1's bit j of qh as bit 4)."""
    qs = 8 if five_bits else 4
    qh_mask, qh_weight = (1, 16) if five_bits else (0, 0)  # Q4_1: no second source
    d = read_fp16(blocks[r, b], 0)
    m = read_fp16(blocks[r, b], 2)
    for t in range(n_t):
        offset[t] += m * x_sum[t, b, 0]
    fma_lanes(acc=acc, acc_off=32 * (b & 1), scale=d, scale2=d, x=xf, x_off=32 * b,
              src=row, src_off=base + qs, shift=0, mask=0,  # nibbles: shift and mask unused
              src2=row, src2_off=base + 4, shift2=0, mask2=qh_mask, mul2=qh_weight, bias=0,
              n=32, signed=False, src2_bits=five_bits, nibbles=True,
              n_columns=n_t, acc_stride=64, x_stride=n_cols)


# ---------------------------------------------------------------------------------------------
# Q5_0: 22 bytes, 32 weights            weight j    = d * ((qs[j] & 15 | bit j of qh << 4) - 16)
#   byte  0    2        6                  22  weight j+16 = d * ((qs[j] >> 4 | bit j+16 of qh << 4) - 16)
#         | d  | qh u32 | qs[0..15]        |
# The high bit is tested against a constant table (`vptestmd` + blend); `(qh >> j) & 1` gets
# widened to 64 bits and was ~35 % slower.
# ---------------------------------------------------------------------------------------------
@njit(parallel=True, cache=True, nogil=True)
def matvec_q5_0(blocks, x, out):
    # one vector loop per row (simd.row_dot); in cache ~15 % over fma_lanes steps
    _whole_rows(blocks, x, out, 22, "q5_0")


# ---------------------------------------------------------------------------------------------
# Q5_1: 24 bytes, 32 weights            weight j    = d * (qs[j] & 15 | bit j of qh << 4) + m
#   byte  0    2    4        8                  24  weight j+16 = d * (qs[j] >> 4 | bit j+16 << 4) + m
#         | d  | m  | qh u32 | qs[0..15]        |
# ---------------------------------------------------------------------------------------------
@njit(parallel=True, cache=True, nogil=True)
def matvec_q5_1(blocks, x, out):
    lanes_rows_min(blocks, x, out, 24, _affine_block, True, 32)


# ---------------------------------------------------------------------------------------------
# IQ4_NL: 18 bytes, 32 weights          weight j    = d * VALUES[qs[j] & 15]
#   byte  0    2                  18    weight j+16 = d * VALUES[qs[j] >> 4]
#         | d  | qs[0..15]        |
# ---------------------------------------------------------------------------------------------
@njit(parallel=True, cache=True, nogil=True)
def matvec_iq4_nl(blocks, x, out):
    iq4_rows(blocks, x, out, 1)


@njit(inline="always")
def iq4_rows(blocks, x, out, sub_blocks):
    """IQ4_NL rows (sub_blocks = 1: the nibbles at byte 2, scale d) or IQ4_XS rows (8 sub-blocks of
    32 weights, the nibbles at byte 8, scale d * its 6-bit scale): a plain loop, a table lookup per
    lane; a sub-block's 32 weights are decoded once, then acc[t, k] += w[k] * x[t, ...] per column."""
    X, Y = columns(x, out)
    n_t = X.shape[0]
    n_rows, n_blocks = blocks.shape[0], blocks.shape[1]
    qs = 2 if sub_blocks == 1 else 8
    for tile in prange((n_rows + ROW_TILE - 1) // ROW_TILE):
        acc = np.empty((n_t, 32), np.float32)
        w = np.empty(32, np.float32)
        for r in range(tile * ROW_TILE, min(n_rows, (tile + 1) * ROW_TILE)):
            acc[:] = 0.0
            for b in range(n_blocks):
                d = read_fp16(blocks[r, b], 0)
                for ib in range(sub_blocks):
                    dl = d if sub_blocks == 1 else d * np.float32(iq4_xs_scale(blocks[r, b], ib))
                    for j in range(16):
                        q = np.int32(blocks[r, b, qs + 16 * ib + j])
                        w[j] = dl * IQ4_GRID[q & 15]
                        w[16 + j] = dl * IQ4_GRID[q >> 4]
                    for t in range(n_t):
                        for k in range(32):
                            acc[t, k] += w[k] * X[t, 32 * (sub_blocks * b + ib) + k]
            for t in range(n_t):
                Y[t, r] = lanes_sum(acc[t], 32)


FORMATS = {
    GGMLType.Q8_0: Format((32,), matvec_q8_0),
    GGMLType.Q4_0: Format((2, 16), matvec_q4_0),
    GGMLType.Q4_1: Format((2, 16), matvec_q4_1),
    GGMLType.Q5_0: Format((2, 16), matvec_q5_0),
    GGMLType.Q5_1: Format((2, 16), matvec_q5_1),
    GGMLType.IQ4_NL: Format((2, 16), matvec_iq4_nl),
}
