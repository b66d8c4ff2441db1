"""Mat-vec kernels for the 2-bit i-quants IQ2_XXS, IQ2_XS and IQ2_S (quants/iq2.py has the codecs):
float32 activations, and 8-bit activations with llama.cpp's arithmetic.

Each super-block holds 256 weights in 32 groups of 8; a group is one entry of a fixed grid (8
magnitudes from {8, 25, 43}: quants/iq2.py's GRID_XXS / GRID_XS / GRID_S, the same arrays its
decoder reads) with 8 sign bits, and a 4-bit scale ls per 32 (IQ2_XXS) or 16 weights:

    weight = d * (0.5 + ls) / 4 * grid[index][j] * sign_j  =  d * (2 ls + 1) / 8 * grid[index][j] * sign_j

Float activations: a group is decoded by the codec's own helpers (`iq2_*_group`,
`iq2_group_values`: the dequantizer's arithmetic, so a row's weights are the decoded rows' bits) into
32 floats per 32 weights, then `acc[t, k] += w[k] * x[t, ...]` per column, as legacy.iq4_rows (a
table lookup per group does not fit `simd.fma_lanes`).

8-bit activations (ggml's `ggml_vec_dot_iq2_xxs_q8_K` / `_iq2_xs_q8_K` / `_iq2_s_q8_K`): x quantized
once per call to Q8_K blocks (int8_kquants.quantize_q8_k_into), then per super-block b, exactly in
integers as ggml's generic C code,

    bsum_b = sum over sub-blocks s of (2 ls_s + 1) * sum over its weights of grid * sign * xq
    row    = 0.125 * sum_b (fp16 d_b * xd_b) * bsum_b

One zmm k < 4 per block holds groups 8k .. 8k+7 (weights 64k .. 64k+63): their 8 grid entries
(each a little-endian uint64 of 8 magnitudes <= 43) as the unsigned bytes of `vpmaddubsw`, the
signs applied to the activations instead (8 sign bytes = a 64-bit mask, a masked negate: ggml's
`_mm256_sign_epi8` with its keven_signs table), the scales 2 ls + 1 per int32 lane with `vpdpwssd`
(int8_kquants.dot_scaled: a pair of products <= 2 * 43 * 127 fits int16). Per block the 16
int32 lanes become float once and are FMA'd with d_w * xd; the lanes stay exact in float32
(4 zmm x 4 products x 43 x 127 x 31 < 2^24). Results equal ggml's up to the order of the float
additions.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

from ...gguf.constants import GGMLType
from ...quants.half import read_fp16
from ...quants.iq2 import (GRID_S, GRID_XS, GRID_XXS, iq2_group_values, iq2_s_group, iq2_xs_group,
                           iq2_xxs_group)
from ...quants.kquants import QK_K
from .common import ROW_TILE, Format, columns, row_dots
from .int8_kquants import q8_k_columns, row_of_blocks, dot_scaled
from .llvm_ir import F32, I8, I16, I32, I64, call_fma, const_vector, data_ptr, float_tree_sum, i64, load_at, \
    load_half, splat, vector
from .simd import lanes_sum


# ---------------------------------------------------------------------------------------------
# Float activations. Block layouts (quants/iq2.py reads them in `iq2_*_group`):
#
# IQ2_XXS: 66 bytes, 8 sub-blocks of 32 weights, two little-endian uint32 each
#   byte 0      2 + 8s                   2 + 8s + 4                                      66
#        | d    | idx[4]: grid index      | u32: bits 7l..7l+6 = sign bits of group 4s+l  |
#        | fp16 | of groups 4s .. 4s+3    |      (8th = parity, KSIGNS), bits 28..31 = ls  |
#
# IQ2_XS: 74 bytes
#   byte 0      2                                        66                    74
#        | d    | qs[32] u16: bits 0..8 grid index (512), | scales[8]: byte s = |
#        | fp16 |   bits 9..15 sign bits (KSIGNS)          | ls of groups 4s,4s+1 (lo), 4s+2,4s+3 (hi)
#
# IQ2_S: 82 bytes
#   byte 0      2              34               66                 74          82
#        | d    | qs[32]: index | signs[32]: the | qh[8]: bits 2l,  | scales[8] |
#        | fp16 | low 8 bits    | 8 sign bits of | 2l+1 of qh[s] =  | as IQ2_XS |
#        |      | of group g    | group g        | index bits 8, 9  |           |
#        |      |               |                | of group 4s + l  |           |
# ---------------------------------------------------------------------------------------------
@njit(inline="always")
def _iq2_rows(blocks, x, out, group_of, grid):
    """Rows of IQ2 blocks (group_of: the codec's group decoder of the type, grid its table):
    32 weights decoded at a time, then acc[t, k] += w[k] * X[t, ...] for every column."""
    X, Y = columns(x, out)
    n_t = X.shape[0]
    n_rows, n_blocks = blocks.shape[0], blocks.shape[1]
    for tile in prange((n_rows + ROW_TILE - 1) // ROW_TILE):
        acc = np.empty((n_t, 32), np.float32)
        w = np.empty(32, np.float32)
        for r in range(tile * ROW_TILE, min(n_rows, (tile + 1) * ROW_TILE)):
            acc[:] = 0.0
            for b in range(n_blocks):
                blk = blocks[r, b]
                d = read_fp16(blk, 0)
                for s in range(8):
                    for l in range(4):
                        index, signs, ls = group_of(blk, 4 * s + l)
                        iq2_group_values(d, ls, grid, index, signs, w, 8 * l)
                    for t in range(n_t):
                        for k in range(32):
                            acc[t, k] += w[k] * X[t, 256 * b + 32 * s + k]
            for t in range(n_t):
                Y[t, r] = lanes_sum(acc[t], 32)


@njit(parallel=True, cache=True, nogil=True)
def matvec_iq2_xxs(blocks, x, out):
    _iq2_rows(blocks, x, out, iq2_xxs_group, GRID_XXS)


@njit(parallel=True, cache=True, nogil=True)
def matvec_iq2_xs(blocks, x, out):
    _iq2_rows(blocks, x, out, iq2_xs_group, GRID_XS)


@njit(parallel=True, cache=True, nogil=True)
def matvec_iq2_s(blocks, x, out):
    _iq2_rows(blocks, x, out, iq2_s_group, GRID_S)


# ---------------------------------------------------------------------------------------------
# 8-bit activations. Per block the row intrinsic builds, for zmm k < 4 (groups g = 8k + m, m < 8):
#
#   u_k  (64 x u8)  = grid[index(8k)] ++ grid[index(8k+1)] ++ ... ++ grid[index(8k+7)]   (8 bytes each)
#   sign_k (i64)    = signs(8k) | signs(8k+1) << 8 | ... | signs(8k+7) << 56    (bit 8m+j: weight 64k+8m+j)
#   s_k  (64 x i8)  = sign_k ? -xq : xq   over xq[256b + 64k .. +63]
#   int32 lane i of u_k . s_k (4 products, weights 64k + 4i ..) belongs to group 8k + i/2, so to
#       IQ2_XXS sub-block (32 weights) 2k + i/8,   IQ2_XS / IQ2_S sub-block (16 weights) 4k + i/4
#
#   where (group g = 4s + l, s < 8, l < 4; KSIGNS expands 7 stored bits to 8):
#   IQ2_XXS  index = byte 2+8s+l          signs = KSIGNS[u32(6+8s) >> 7l & 127]   ls = u32(6+8s) >> 28
#   IQ2_XS   q = u16(2+2g): index = q & 511, signs = KSIGNS[q >> 9]               ls = nibble g/2 of bytes 66..73
#   IQ2_S    index = byte 2+g | (byte 66+s << (8-2l)) & 0x300, signs = byte 34+g   ls = nibble g/2 of bytes 74..81
# ---------------------------------------------------------------------------------------------
BLOCK_BYTES = {"iq2_xxs": 66, "iq2_xs": 74, "iq2_s": 82}


# IR pieces every lattice i-quant's 8-bit kernel needs (iq3.py uses them too)
def ksign_bytes(builder, seven):
    """<n x i8> sign bytes from <n x i32> lanes whose bits 0..6 are 7 stored sign bits (higher
    bits ignored): the 8th bit is their parity (ggml's ksigns_iq2xs table), computed in lanes."""
    n = seven.type.count
    seven = builder.and_(seven, const_vector(I32, [127] * n))
    parity = seven
    for shift in (4, 2, 1):
        parity = builder.xor(parity, builder.lshr(parity, const_vector(I32, [shift] * n)))
    top = builder.shl(builder.and_(parity, const_vector(I32, [1] * n)), const_vector(I32, [7] * n))
    return builder.trunc(builder.or_(seven, top), vector(I8, n))


def sign_zmms(builder, sign_bytes):
    """The 256 sign bits of a block (<32 x i8>, bit j of byte m = weight 8m + j) as 4 <64 x i1>
    masks, mask k for weights 64k .. 64k + 63."""
    masks = builder.bitcast(sign_bytes, vector(ir.IntType(1), 256))
    return [builder.shuffle_vector(masks, masks, const_vector(I32, range(64 * k, 64 * k + 64))) for k in range(4)]


def nibbles(builder, base, offset: int, n_bytes: int):
    """<2 n_bytes x i32>: the 4-bit values packed in bytes offset .. offset + n_bytes - 1 of an i8*
    block, low nibble first (the i-quants' sub-block scales)."""
    packed = builder.zext(load_at(builder, base, i64(offset), vector(I8, n_bytes)), vector(I32, n_bytes))
    both = builder.shuffle_vector(packed, packed, const_vector(I32, [i // 2 for i in range(2 * n_bytes)]))
    return builder.and_(builder.lshr(both, const_vector(I32, [0, 4] * n_bytes)), const_vector(I32, [15] * 2 * n_bytes))


def odd_scales(builder, ls):
    """2 ls + 1 per lane of an i32 vector: the i-quants' integer sub-block scales."""
    n = ls.type.count
    return builder.or_(builder.shl(ls, const_vector(I32, [1] * n)), const_vector(I32, [1] * n))


def signed_dots(builder, blk, base, cols, accs, codes, scales, per_sub):
    """One block of a lattice i-quant row against every column: accs (one <16 x float> per
    column) + d_w * xd * (the block's integer sum), d_w the fp16 at byte 0 of `base`. codes: per
    zmm k < 4 (u_k <64 x u8> the grid magnitudes of weights 64k .. 64k + 63, their sign mask
    <64 x i1>), the signs applied to the activations; scales <n x i32> the odd sub-block scales,
    per_sub the int32 lanes (4 weights each) a sub-block spans."""
    v16i32, v64i8 = vector(I32, 16), vector(I8, 64)
    zero8 = ir.Constant(v64i8, [0] * 64)
    lane_scales = [[(16 * k + i) // per_sub for i in range(16)] for k in range(4)]
    d_w = load_half(builder, base, 0)
    new = []
    for col, acc in zip(cols, accs):
        xs = builder.gep(col.xq, [builder.mul(blk, i64(QK_K))])
        iacc = ir.Constant(v16i32, [0] * 16)
        for k, (u, mask) in enumerate(codes):
            xq = load_at(builder, xs, i64(64 * k), v64i8)
            signed = builder.select(mask, builder.sub(zero8, xq), xq)
            iacc = dot_scaled(builder, iacc, u, signed, scales, lane_scales[k])
        d = builder.fmul(d_w, builder.load(builder.gep(col.xd, [blk])))
        new.append(call_fma(builder, builder.sitofp(iacc, vector(F32, 16)), splat(builder, d, 16), acc))
    return new


class Iq2Decoder:
    """IR readers of one IQ2_XXS / IQ2_XS / IQ2_S block (the diagram above) at an i8* `base`, for
    the 8-bit mat-vec here and the integer GEMM's tile decoder (gemm_int8.py); grid_p an i64* to
    the type's grid (quants.iq2's GRID_*: one little-endian uint64 of 8 magnitudes per entry)."""

    def __init__(self, builder, kind: str, grid_p):
        self.builder, self.kind, self.grid_p = builder, kind, grid_p

    def _byte(self, base, offset):  # a block byte as i64
        return self.builder.zext(self.builder.load(self.builder.gep(base, [i64(offset)])), I64)

    def index(self, base, g):
        """The grid index of group g, as i64."""
        b, kind = self.builder, self.kind
        s, l = divmod(g, 4)
        if kind == "iq2_xxs":
            return self._byte(base, 2 + 8 * s + l)
        if kind == "iq2_xs":
            return b.and_(b.zext(load_at(b, base, i64(2 + 2 * g), I16), I64), i64(511))
        high = b.and_(b.shl(self._byte(base, 66 + s), i64(8 - 2 * l)), i64(0x300))
        return b.or_(self._byte(base, 2 + g), high)

    def sign_masks(self, base):
        """Per zmm k < 4 the 64 sign bits of groups 8k .. 8k+7 (<64 x i1>). IQ2_XXS and IQ2_XS
        store 7 bits a group: the 8th, their parity (KSIGNS), is computed for the 32 groups as
        vectors rather than looked up one by one."""
        b, kind = self.builder, self.kind
        if kind == "iq2_s":
            return sign_zmms(b, load_at(b, base, i64(34), vector(I8, 32)))
        if kind == "iq2_xxs":  # group 4s + l: bits 7l .. 7l+6 of the u32 at 6 + 8s
            aux = load_at(b, base, i64(2), vector(I32, 16))
            spread = b.shuffle_vector(aux, aux, const_vector(I32, [2 * (g // 4) + 1 for g in range(32)]))
            seven = b.lshr(spread, const_vector(I32, [7 * (g % 4) for g in range(32)]))
        else:  # bits 9 .. 15 of the u16 of group g
            seven = b.lshr(b.zext(load_at(b, base, i64(2), vector(I16, 32)), vector(I32, 32)),
                           const_vector(I32, [9] * 32))
        return sign_zmms(b, ksign_bytes(b, seven))

    def scales(self, base):
        """2 ls + 1 per sub-block: <8 x i32> (IQ2_XXS, sub-blocks of 32) or <16 x i32> (of 16)."""
        b = self.builder
        if self.kind == "iq2_xxs":
            aux = load_at(b, base, i64(2), vector(I32, 16))
            ls = b.lshr(b.shuffle_vector(aux, aux, const_vector(I32, range(1, 16, 2))), const_vector(I32, [28] * 8))
            return odd_scales(b, ls)
        return odd_scales(b, nibbles(b, base, 66 if self.kind == "iq2_xs" else 74, 8))

    def magnitudes(self, base, k):
        """<64 x i8>: the grid magnitudes of weights 64k .. 64k + 63 (groups 8k .. 8k + 7)."""
        b = self.builder
        entries = ir.Constant(vector(I64, 8), ir.Undefined)
        for m in range(8):
            entry = b.load(b.gep(self.grid_p, [self.index(base, 8 * k + m)]))
            entries = b.insert_element(entries, entry, ir.Constant(I32, m))
        return b.bitcast(entries, vector(I8, 64))


def _iq2_int8_codegen(kind: str):
    block_bytes = BLOCK_BYTES[kind]

    def codegen(context, builder, signature, args):
        tys = signature.args
        block = Iq2Decoder(builder, kind, builder.bitcast(data_ptr(context, builder, tys[10], args[10]),
                                                          I64.as_pointer()))

        def body(blk, base, cols, accs):
            codes = [(block.magnitudes(base, k), mask) for k, mask in enumerate(block.sign_masks(base))]
            per_sub = 8 if kind == "iq2_xxs" else 4  # int32 lanes per sub-block
            return signed_dots(builder, blk, base, cols, accs, codes, block.scales(base), per_sub)

        def finish(accs):
            return builder.fmul(ir.Constant(F32, 0.125), float_tree_sum(builder, accs[0]))

        row_of_blocks(context, builder, signature, args, name=f"{kind}_int8", block_bytes=block_bytes,
                       prefetch_lines=2, inits=[ir.Constant(vector(F32, 16), [0.0] * 16)], body=body, finish=finish)
        return context.get_dummy_value()

    return codegen


ROW_CODEGEN = {kind: _iq2_int8_codegen(kind) for kind in BLOCK_BYTES}


@intrinsic
def row_dot_iq2_int8(typingctx, row, xq, xd, bsums, n_blocks, kind, out, r, t0, n_t, grid):
    """One row of IQ2 super-blocks (`kind` a literal "iq2_xxs" | "iq2_xs" | "iq2_s"; row uint8
    (n_blocks * block bytes,)) dotted with every column's Q8_K activation blocks (xq int8 (B, n),
    xd float32 (B, n/256); bsums unused, the argument order of int8_kquants' rows), stored to
    out[t, r] for t0 <= t < t0 + n_t; grid the type's table (entries, 8) uint8."""
    arrays_ok = all(isinstance(a, types.Array) for a in (row, xq, xd, bsums, grid))
    if not (arrays_ok and isinstance(kind, types.StringLiteral) and kind.literal_value in ROW_CODEGEN):
        return None
    return (types.void(row, xq, xd, bsums, n_blocks, kind, out, r, t0, n_t, grid),
            ROW_CODEGEN[kind.literal_value])


@njit(inline="always")
def _iq2_int8_rows(blocks, x, out, block_bytes, kind, grid):
    X, Y = columns(x, out)
    n_rows, n_blocks = blocks.shape[0], blocks.shape[1]
    xq, xd, bsums = q8_k_columns(X, 0, False)
    row_dots(blocks.reshape(n_rows, n_blocks * block_bytes), Y, _int8_row, kind, (xq, xd, bsums, n_blocks, grid))


@njit(inline="always")
def _int8_row(row, operands, kind, Y, r, t0, n_t):  # common.row_dots' step
    xq, xd, bsums, n_blocks, grid = operands
    row_dot_iq2_int8(row, xq, xd, bsums, n_blocks, kind, Y, r, t0, n_t, grid)


# Same signature as the float kernels above. One kernel per type: `kind` must be a literal.
@njit(parallel=True, cache=True, nogil=True)
def matvec_iq2_xxs_int8(blocks, x, out):
    _iq2_int8_rows(blocks, x, out, 66, "iq2_xxs", GRID_XXS)


@njit(parallel=True, cache=True, nogil=True)
def matvec_iq2_xs_int8(blocks, x, out):
    _iq2_int8_rows(blocks, x, out, 74, "iq2_xs", GRID_XS)


@njit(parallel=True, cache=True, nogil=True)
def matvec_iq2_s_int8(blocks, x, out):
    _iq2_int8_rows(blocks, x, out, 82, "iq2_s", GRID_S)


FORMATS = {
    GGMLType.IQ2_XXS: Format((8, 32), matvec_iq2_xxs),
    GGMLType.IQ2_XS: Format((8, 32), matvec_iq2_xs),
    GGMLType.IQ2_S: Format((8, 32), matvec_iq2_s),
}

INT8_MATVECS = {
    GGMLType.IQ2_XXS: matvec_iq2_xxs_int8,
    GGMLType.IQ2_XS: matvec_iq2_xs_int8,
    GGMLType.IQ2_S: matvec_iq2_s_int8,
}
