"""Mat-vec kernels for the 3-bit lattice i-quants IQ3_XXS and IQ3_S (ggml-common.h block_iq3_xxs,
block_iq3_s): float32 activations (the "lanes" shape of common.py) and 8-bit activations with
llama.cpp's arithmetic (ggml's `ggml_vec_dot_iq3_xxs_q8_K` / `ggml_vec_dot_iq3_s_q8_K`).

Both types hold 256 weights as 8 sub-blocks of 32 = 64 groups of 4; a group is an index into a grid
of 4-byte points (quants/iq_grids.py) with the signs stored apart. The grid lookups and sign bits are
decoded by the codecs' own block decoders (`quants.iq3.iq3_xxs_block`, `iq3_s_block`: signed
integer values q and the sub-blocks' 4-bit scales ls), so each layout is read in one place.

Float32 activations: per sub-block the decoded q go through `simd.fma_lanes` (signed bytes, one
scale), acc[k] += (db * q[k]) * x[k], db the sub-block's float scale exactly as the dequantizer
computes it (so the weights are the dequantizer's bits); two 32-lane halves of a 64-lane
accumulator alternate by sub-block.

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
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

from ...gguf.constants import GGMLType
from ...quants.half import read_fp16
from ...quants.iq3 import iq3_s_block, iq3_xxs_block
from .common import ROW_TILE, Format, columns
from .int8 import HAS_AVX2, HAS_VNNI, madd_pairs
from .int8_kquants import _q8_k_columns
from .llvm_ir import I8, I8_PTR, I16, I32, as_i64, data_ptr, halves, i64, indices, load_at, tree_reduce, vector
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
def _decode(blk, xxs, codes, ls):
    """Decode an IQ3_XXS (xxs) or IQ3_S block into codes (uint64 (32,) = int8 (256,)) and ls
    (int32 (8,)); returns its fp16 scale d."""
    if xxs:
        iq3_xxs_block(blk, codes, ls)
    else:
        iq3_s_block(blk, codes, ls)
    return read_fp16(blk, 0)


@njit(inline="always")
def _iq3_rows(blocks, x, out, xxs):
    """Float32 activations: IQ3_XXS rows (xxs) or IQ3_S rows, "lanes" shape, all columns at once."""
    X, Y = columns(x, out)
    n_t, n_cols = X.shape
    n_rows, n_blocks = blocks.shape[0], blocks.shape[1]
    xf = X.reshape(-1)
    for tile in prange((n_rows + ROW_TILE - 1) // ROW_TILE):
        acc = np.empty((n_t, 64), np.float32)
        codes = np.empty(32, np.uint64)
        code_bytes = codes.view(np.uint8)
        ls = np.empty(8, np.int32)
        for r in range(tile * ROW_TILE, min(n_rows, (tile + 1) * ROW_TILE)):
            acc[:] = 0.0
            for b in range(n_blocks):
                d = _decode(blocks[r, b], xxs, codes, ls)
                for s in range(8):
                    # the dequantizer's float scale of the sub-block
                    db = d * (F32(0.5) + F32(ls[s])) * F32(0.5) if xxs else d * F32(1 + 2 * ls[s])
                    fma_lanes(acc=acc.reshape(-1), acc_off=32 * (s & 1), scale=db, scale2=db, x=xf,
                              x_off=QK_K * b + 32 * s, src=code_bytes, src_off=32 * s, shift=0, mask=-1,  # as is
                              src2=code_bytes, src2_off=0, shift2=0, mask2=0, mul2=0, bias=0,  # no second source
                              n=32, signed=True, src2_bits=False, nibbles=False,
                              n_columns=n_t, acc_stride=64, x_stride=n_cols)
            for t in range(n_t):
                Y[t, r] = lanes_sum(acc[t], 64)


@intrinsic
def scaled_dot_s8(typingctx, w, xq, x_off, scales):
    """sum over k < 256 of scales[k // 16] * w[k] * xq[x_off + k], exact, as int32: one super-block
    of signed weight codes (w: 256 bytes read as int8, |w| <= 127) dotted with its Q8_K activation
    codes (xq int8 1-D), each 16 weights scaled by an int16 (|scale * w * xq| summed must fit
    int32). Per 64 bytes: the products as int16 (|w xq| <= 16129), then vpmaddwd with the scales
    (pairs of products times their scale, summed into 16 int32 lanes); a tree sum at the end.
    Shared by the IQ3 and IQ1 kernels (iq1.py)."""
    if not (all(isinstance(a, types.Array) for a in (w, xq, scales)) and isinstance(x_off, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        tys = signature.args
        v64i8, v64i16, v16i32 = vector(I8, 64), vector(I16, 64), vector(I32, 16)
        w_p = builder.bitcast(data_ptr(context, builder, tys[0], args[0]), I8_PTR)
        x_p = builder.gep(builder.bitcast(data_ptr(context, builder, tys[1], args[1]), I8_PTR),
                          [as_i64(context, builder, args[2], tys[2])])
        sc = load_at(builder, builder.bitcast(data_ptr(context, builder, tys[3], args[3]), I8_PTR), i64(0),
                     vector(I16, 16), align=2)
        acc = ir.Constant(v16i32, [0] * 16)
        for h in range(4):  # weights 64h .. 64h + 63 = sub-blocks of 16: 4h .. 4h + 3
            products = builder.mul(builder.sext(load_at(builder, w_p, i64(64 * h), v64i8), v64i16),
                                   builder.sext(load_at(builder, x_p, i64(64 * h), v64i8), v64i16))
            for half, pairs in enumerate(halves(builder, products)):
                lane_scales = builder.shuffle_vector(sc, sc, indices([4 * h + 2 * half + j // 16 for j in range(32)]))
                if HAS_VNNI or HAS_AVX2:
                    acc = builder.add(acc, madd_pairs(builder, pairs, lane_scales))
                else:  # portable: widen, multiply, add neighbours
                    v32i32 = vector(I32, 32)
                    scaled = builder.mul(builder.sext(pairs, v32i32), builder.sext(lane_scales, v32i32))
                    undef = ir.Constant(v32i32, ir.Undefined)
                    acc = builder.add(acc, builder.add(builder.shuffle_vector(scaled, undef, indices(range(0, 32, 2))),
                                                       builder.shuffle_vector(scaled, undef, indices(range(1, 32, 2)))))
        return tree_reduce(builder, acc, builder.add)

    return types.int32(w, xq, x_off, scales), codegen


@njit(inline="always")
def _iq3_int8_rows(blocks, x, out, xxs):
    """8-bit activations (Q8_K blocks), ggml's integer sums: per super-block the weights are decoded
    once (signed codes, odd scales 2 ls + 1 per 32), then per column bsum = `scaled_dot_s8`."""
    X, Y = columns(x, out)
    n_t = X.shape[0]
    n_rows, n_blocks = blocks.shape[0], blocks.shape[1]
    xq, xd, _ = _q8_k_columns(X, False, False)
    for tile in prange((n_rows + ROW_TILE - 1) // ROW_TILE):
        acc = np.empty(n_t, np.float32)
        codes = np.empty(32, np.uint64)  # 256 int8 codes
        ls = np.empty(8, np.int32)
        scales = np.empty(16, np.int16)  # per 16 codes
        for r in range(tile * ROW_TILE, min(n_rows, (tile + 1) * ROW_TILE)):
            acc[:] = 0.0
            for b in range(n_blocks):
                d = _decode(blocks[r, b], xxs, codes, ls)
                for s in range(8):
                    scales[2 * s] = scales[2 * s + 1] = 2 * ls[s] + 1
                for t in range(n_t):
                    acc[t] += d * xd[t, b] * F32(scaled_dot_s8(codes, xq[t], QK_K * b, scales))
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
INT8_MATVECS = {
    GGMLType.IQ3_XXS: matvec_iq3_xxs_int8,
    GGMLType.IQ3_S: matvec_iq3_s_int8,
}
