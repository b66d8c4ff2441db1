"""Mat-vec kernels for the ternary formats TQ1_0 and TQ2_0 (every weight d * t, t in {-1, 0, 1},
one fp16 d per 256 weights; quants/ternary.py has the codecs), with float32 activations and with
8-bit ones (llama.cpp's `ggml_vec_dot_tq1_0_q8_K` / `_tq2_0_q8_K` arithmetic).

Float32 activations: the "lanes" shape of common.py, `simd.fma_lanes` steps of 32 lanes over a
block's codes c = t + 1 (bias -1, scale d). TQ2_0's 2-bit fields are read from the row in place;
TQ1_0's base-3 digits have no shift-and-mask form, so each block is first decoded into a 256-byte
scratch block by `quants.ternary.tq1_0_codes` (the codec's own walk over the layout).

8-bit activations: x is quantized once per call to ggml's Q8_K blocks (`int8_kquants.quantize_q8_k`)
and each weight block is dotted with them in integers, as ggml's vec_dot does:

    per block b:  sum_k t_k xq_k = sum_k c_k xq_k - sum_k xq_k
    term = float(that integer) * (d_w * d_x)

the codes c (0..2, unsigned) going through `vpdpbusd` (int8.dot_u8_s8), four zmm of 64 codes a
block, in the activations' natural order. Each of the 16 int32 lanes starts at minus the sum of the
16 activations it multiplies (`int8_kquants.lane_sums`, once per call), so it ends as an exact
partial sum of t * xq: the float32 rounding is then relative to the terms. (ggml subtracts its
bsums, sums of 16 consecutive values, from lanes that hold other positions: its lanes carry c * xq
for the t = 0 weights too, and on real ternary rows, mostly zeros, its result was 4e-5 of the terms'
magnitude off the exact sum, ours 9e-8; ours and ggml's agree to ggml's rounding.)
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from ...gguf.constants import GGMLType
from ...quants.half import read_fp16
from ...quants.ternary import POW3, tq1_0_codes
from .common import Format, columns, lanes_rows, no_scratch, row_dots
from .int8 import dot_u8_s8
from .int8_kquants import QK_K, q8_k_columns, row_of_blocks, lane_sums, shifted_pair
from .llvm_ir import (F32, I8, I16, I32, call_fma, concat, const_vector, float_tree_sum, i64, indices, load_at,
                      load_half, splat, vector)
from .simd import fma_lanes


# ---------------------------------------------------------------------------------------------
# TQ1_0: 54 bytes, 256 weights, five base-3 digits (trits) per byte
#   byte 0                    32             48        52     54
#        | qs[0:32]           | qs[32:48]    | qh[4]   |  d   |
#        | weights 0..159     | 160..239     | 240..255| fp16 |
#   qs[m], m < 32:       trit n (n < 5, 0 = most significant) = weight 32n + m
#   qs[32 + m], m < 16:  trit n = weight 160 + 16n + m
#   qh[j], j < 4:        trit n (n < 4) = weight 240 + 4n + j
#   trit n of a byte, as its code c = t + 1:  ((byte * 3^n) & 255) * 3 >> 8
# ---------------------------------------------------------------------------------------------
@njit(inline="always")
def _tq1_0_block(blocks, r, b, row, base, variant, x_sums, codes, acc, offset, xf, n_t, n_cols):
    d = read_fp16(blocks[r, b], 52)
    tq1_0_codes(blocks[r, b], codes)
    for g in range(8):  # 32 weights a step
        fma_lanes(acc=acc, acc_off=32 * (g & 1), scale=d, scale2=d, x=xf,
                  x_off=256 * b + 32 * g, src=codes, src_off=32 * g, shift=0, mask=3,
                  src2=codes, src2_off=0, shift2=0, mask2=0, mul2=0, bias=-1,  # no second source
                  n=32, signed=False, src2_bits=False, nibbles=False,
                  n_columns=n_t, acc_stride=64, x_stride=n_cols)


@njit(inline="always")
def _tq1_0_scratch():
    return np.empty(QK_K, np.uint8)  # one block's codes, in weight order


@njit(parallel=True, cache=True, nogil=True)
def matvec_tq1_0(blocks, x, out):
    lanes_rows(blocks, x, out, 54, _tq1_0_block, False, None, _tq1_0_scratch)


# ---------------------------------------------------------------------------------------------
# TQ2_0: 66 bytes, 256 weights, a 2-bit code c = t + 1 per weight
#   byte 0                          32                          64     66
#        | qs[0:32]: weights 0..127 | qs[32:64]: weights 128..255 |  d   |
#   qs[32h + m], bits 2l..2l+1 = c of weight 128h + 32l + m      (c = 3 reads as t = 2, as in ggml)
# ---------------------------------------------------------------------------------------------
@njit(inline="always")
def _tq2_0_block(blocks, r, b, row, base, variant, x_sums, scratch, acc, offset, xf, n_t, n_cols):
    d = read_fp16(blocks[r, b], 64)
    for h in range(2):
        for n in range(4):
            fma_lanes(acc=acc, acc_off=32 * (n & 1), scale=d, scale2=d, x=xf,
                      x_off=256 * b + 128 * h + 32 * n, src=row, src_off=base + 32 * h,
                      shift=2 * n, mask=3,
                      src2=row, src2_off=0, shift2=0, mask2=0, mul2=0, bias=-1,  # no second source
                      n=32, signed=False, src2_bits=False, nibbles=False,
                      n_columns=n_t, acc_stride=64, x_stride=n_cols)


@njit(parallel=True, cache=True, nogil=True)
def matvec_tq2_0(blocks, x, out):
    lanes_rows(blocks, x, out, 66, _tq2_0_block, False, None, no_scratch)


# ---------------------------------------------------------------------------------------------
# 8-bit activations. A block's 256 codes as four <64 x i8> u_0..u_3, u_k = weights 64k .. 64k+63,
# lined up with the Q8_K activations xq[256b + 64k ..] (natural order):
#
#   TQ1_0  each code is one byte of the block times a power of 3 (diagram above): the byte is
#          picked by a shuffle of (qs[0:32] ++ qs[32:48] ++ qh[0:4]), q = byte * 3^n mod 256,
#          code = (q * 3) >> 8 = (q >= 86) + (q >= 171)   (the 16-bit-word form: ~1.3x slower)
#             u_0 = qs[0:32]*1    ++ qs[0:32]*3      u_1 = qs[0:32]*9 ++ qs[0:32]*27
#             u_2 = qs[0:32]*81   ++ qs[32:48]*1 ++ qs[32:48]*3
#             u_3 = qs[32:48]*9, *27, *81 ++ qh[0:4]*1, *3, *9, *27
#   TQ2_0  u_k = qs[32h : 32h+32] >> 2l & 3 ++ the same >> 2(l+1) & 3, h = k/2, l = 2(k%2)
# ---------------------------------------------------------------------------------------------
def _tq1_0_sources():
    """Per zmm k < 4: (byte index into qs ++ qh for each of its 64 codes, the power of 3)."""
    picks, powers = [], []
    for w in range(QK_K):
        if w < 160:
            byte, n = w % 32, w // 32
        elif w < 240:
            byte, n = 32 + (w - 160) % 16, (w - 160) // 16
        else:
            byte, n = 48 + (w - 240) % 4, (w - 240) // 4
        picks.append(byte)
        powers.append(int(POW3[n]))
    return [(picks[64 * k: 64 * k + 64], powers[64 * k: 64 * k + 64]) for k in range(4)]


TQ1_0_SOURCES = _tq1_0_sources()


def _tq1_0_codes(builder, base):
    """The four <64 x i8> code vectors of the TQ1_0 block at `base` (i8*)."""
    v64i8 = vector(I8, 64)
    first = load_at(builder, base, i64(0), vector(I8, 32))
    second = load_at(builder, base, i64(32), vector(I8, 16))
    qh = load_at(builder, base, i64(48), vector(I8, 4))
    tail = builder.shuffle_vector(second, builder.shuffle_vector(qh, qh, indices(list(range(4)) + [0] * 12)),
                                  indices(range(32)))
    all_bytes = concat(builder, first, tail)  # qs[0:48] ++ qh ++ 12 unused bytes
    v32i16 = vector(I16, 32)
    low_byte, high_byte = const_vector(I16, [0x00FF] * 32), const_vector(I16, [0xFF00] * 32)
    codes = []
    for picks, powers in TQ1_0_SOURCES:
        words = builder.bitcast(builder.shuffle_vector(all_bytes, all_bytes, indices(picks)), v32i16)
        # byte * 3^n mod 256 in place: the even bytes' products in the low bytes of one 16-bit
        # multiply, the odd bytes' in the high bytes of another (no widening to 64 words)
        even = builder.mul(builder.and_(words, low_byte), const_vector(I16, powers[0::2]))
        odd = builder.mul(builder.and_(words, high_byte), const_vector(I16, powers[1::2]))
        q = builder.bitcast(builder.or_(builder.and_(even, low_byte), builder.and_(odd, high_byte)), v64i8)
        # (q * 3) >> 8 for a byte q: 1 from q >= 86, 2 from q >= 171
        one = builder.zext(builder.icmp_unsigned(">=", q, const_vector(I8, [86] * 64)), v64i8)
        two = builder.zext(builder.icmp_unsigned(">=", q, const_vector(I8, [171] * 64)), v64i8)
        codes.append(builder.add(one, two))
    return codes


def _tq2_0_codes(builder, base):
    """The four <64 x i8> code vectors of the TQ2_0 block at `base` (i8*)."""
    three = const_vector(I8, [3] * 64)
    codes = []
    for k in range(4):
        qs = load_at(builder, base, i64(32 * (k // 2)), vector(I8, 32))
        l = 2 * (k % 2)
        codes.append(builder.and_(shifted_pair(builder, qs, 2 * l, 2 * l + 2, left=False), three))
    return codes


# kind -> (block bytes, offset of d, the code vectors of a block)
TERNARY_KINDS = {"tq1_0": (54, 52, _tq1_0_codes), "tq2_0": (66, 64, _tq2_0_codes)}


def _ternary_codegen(kind: str):
    block_bytes, d_offset, decode = TERNARY_KINDS[kind]

    def codegen(context, builder, signature, args):
        v16i32, v64i8 = vector(I32, 16), vector(I8, 64)
        zero = ir.Constant(v16i32, [0] * 16)

        def body(blk, base, cols, accs):
            codes = decode(builder, base)
            d_w = load_half(builder, base, d_offset)
            new = []
            for col, acc in zip(cols, accs):
                sums = load_at(builder, col.bsums, builder.mul(blk, i64(16)), v16i32, align=4)
                iacc = builder.sub(zero, sums)  # t = c - 1: minus the lane's activations (`lane_sums`)
                xs = builder.gep(col.xq, [builder.mul(blk, i64(QK_K))])
                for k, u in enumerate(codes):
                    iacc = dot_u8_s8(builder, iacc, u, load_at(builder, xs, i64(64 * k), v64i8), 3)
                d = builder.fmul(d_w, builder.load(builder.gep(col.xd, [blk])))
                new.append(call_fma(builder, builder.sitofp(iacc, vector(F32, 16)), splat(builder, d, 16), acc))
            return new

        row_of_blocks(context, builder, signature, args, name=f"{kind}_int8", block_bytes=block_bytes,
                       prefetch_lines=1, inits=[ir.Constant(vector(F32, 16), [0.0] * 16)], body=body,
                       finish=lambda accs: float_tree_sum(builder, accs[0]))
        return context.get_dummy_value()

    return codegen


ROW_CODEGEN = {kind: _ternary_codegen(kind) for kind in TERNARY_KINDS}


@intrinsic
def row_dot_ternary_int8(typingctx, row, xq, xd, bsums, n_blocks, kind, out, r, t0, n_t):
    """One row of TQ1_0 or TQ2_0 blocks (`kind` a literal "tq1_0" | "tq2_0"; row uint8
    (n_blocks * block bytes,)) dotted with every column's Q8_K activation blocks (xq int8 (B, n),
    xd float32 (B, n/256) from `int8_kquants.quantize_q8_k_into`; `bsums` here int32 (B, n/16) from
    `lane_sums`), stored as float32 to out[t, r] (out (B, n_rows))."""
    arrays_ok = all(isinstance(a, types.Array) for a in (row, xq, xd, bsums)) and isinstance(n_blocks, types.Integer)
    if not (arrays_ok and isinstance(kind, types.StringLiteral) and kind.literal_value in ROW_CODEGEN):
        return None
    return types.void(row, xq, xd, bsums, n_blocks, kind, out, r, t0, n_t), ROW_CODEGEN[kind.literal_value]


@njit(inline="always")
def _ternary_int8_rows(blocks, x, out, block_bytes, kind):
    """Each activation row quantized once to Q8_K blocks, then every weight row dotted with all of
    them (`row_dot_ternary_int8`)."""
    X, Y = columns(x, out)
    n_rows, n_blocks = blocks.shape[0], blocks.shape[1]
    xq, xd, _ = q8_k_columns(X, 0, False)
    row_dots(blocks.reshape(n_rows, n_blocks * block_bytes), Y, _int8_row, kind, (xq, xd, lane_sums(xq), n_blocks))


@njit(inline="always")
def _int8_row(row, operands, kind, Y, r, t0, n_t):  # common.row_dots' step
    xq, xd, bsums, n_blocks = operands
    row_dot_ternary_int8(row, xq, xd, bsums, n_blocks, kind, Y, r, t0, n_t)


# Same signature as matvec_tq1_0 / matvec_tq2_0; one kernel per type (`kind` a literal).
@njit(parallel=True, cache=True, nogil=True)
def matvec_tq1_0_int8(blocks, x, out):
    _ternary_int8_rows(blocks, x, out, 54, "tq1_0")


@njit(parallel=True, cache=True, nogil=True)
def matvec_tq2_0_int8(blocks, x, out):
    _ternary_int8_rows(blocks, x, out, 66, "tq2_0")


FORMATS = {
    GGMLType.TQ1_0: Format((8, 32), matvec_tq1_0),
    GGMLType.TQ2_0: Format((8, 32), matvec_tq2_0),
}
INT8_MATVECS = {
    GGMLType.TQ1_0: matvec_tq1_0_int8,
    GGMLType.TQ2_0: matvec_tq2_0_int8,
}
