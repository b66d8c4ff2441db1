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

in LLVM IR on iq2.py's row loop and block step (`signed_dots`): the grid entries of 32 groups
looked up in registers (the grid as 16-bit words of level ranks, vpermi2w over zmm constants, then
one vpshufb back to magnitudes: see the diagram below; a vpgatherdd of 16 entries, the previous
way, made the 8-bit IQ3_S / IQ3_XXS mat-vecs ~2.5x slower on this Zen 4), the magnitudes the unsigned
bytes of vpmaddubsw, the sign bits a mask negating the activations, the scales 2 ls + 1 by
vpdpwssd. The integer sums are exact (|q| <= 62, |xq| <= 127, odd scales <= 31), so results equal
ggml's to float32 rounding of the per-block scaling and of the sum over blocks (16 lanes here;
ggml's AVX2 code sums the blocks in 8 lanes, its generic code in one).

`scaled_dot_s8` (one super-block of decoded signed codes against Q8_K, scales per 16) serves
iq1.py's 8-bit kernels.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from ...gguf.constants import GGMLType
from ...quants.half import read_fp16
from ...quants.iq3 import IQ3S_POINTS, IQ3XXS_POINTS, iq3_s_block, iq3_xxs_block
from ...quants.iq_grids import grid_bytes, quantizer_grid
from ...quants.kquants import QK_K
from .common import Format, lanes_rows
from .int8 import HAS_AVX2, HAS_AVX512, HAS_AVX512BW, HAS_VNNI, lookup16, madd_pairs
from .int8_kquants import row_of_blocks
from .iq2 import ROW_CODEGEN, _iq2_int8_rows, ksign_bytes, nibbles, odd_scales, sign_zmms, signed_dots
from .llvm_ir import F32 as F32_IR
from .llvm_ir import I8, I8_PTR, I16, I32, I64, as_i64, const_vector, data_ptr, declare, float_tree_sum, halves, \
    i64, indices, load_at, tree_reduce, vector
from .simd import fma_lanes

F32 = np.float32


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
def _iq3_scratch():
    codes = np.empty(32, np.uint64)
    return codes, codes.view(np.uint8), np.empty(8, np.int32)


@njit(inline="always")
def _iq3_block(blocks, r, b, row, base, xxs, x_sums, scratch, acc, offset, xf, n_t, n_cols):
    """Float32 activations: an IQ3_XXS block (xxs) or IQ3_S block, one fma_lanes step a sub-block."""
    codes, code_bytes, ls = scratch
    d = _decode(blocks[r, b], xxs, codes, ls)
    for s in range(8):
        # the dequantizer's float scale of the sub-block
        db = d * (F32(0.5) + F32(ls[s])) * F32(0.5) if xxs else d * F32(1 + 2 * ls[s])
        fma_lanes(acc=acc, acc_off=32 * (s & 1), scale=db, scale2=db, x=xf,
                  x_off=QK_K * b + 32 * s, src=code_bytes, src_off=32 * s, shift=0, mask=-1,  # as is
                  src2=code_bytes, src2_off=0, shift2=0, mask2=0, mul2=0, bias=0,  # no second source
                  n=32, signed=True, src2_bits=False, nibbles=False,
                  n_columns=n_t, acc_stride=64, x_stride=n_cols)


@intrinsic
def scaled_dot_s8(typingctx, w, xq, x_off, scales):
    """sum over k < 256 of scales[k // 16] * w[k] * xq[x_off + k], exact, as int32: one super-block
    of signed weight codes (w: 256 bytes read as int8, |w| <= 127) dotted with its Q8_K activation
    codes (xq int8 1-D), each 16 weights scaled by an int16 (|scale * w * xq| summed must fit
    int32). Per 64 bytes: the products as int16 (|w xq| <= 16129), then vpmaddwd with the scales
    (pairs of products times their scale, summed into 16 int32 lanes); a tree sum at the end.
    Used by the IQ1 kernels (iq1.py)."""
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


# ---------------------------------------------------------------------------------------------
# 8-bit activations, in LLVM IR (iq2.py's row loop and block step): per block, for zmm k < 4
# (groups g = 16k + m, m < 16, of 4 weights each):
#
#   u_k  (64 x u8)  = grid[index(16k)] ++ grid[index(16k+1)] ++ ... ++ grid[index(16k+15)]   (4 bytes each)
#   sign_k (i64)    = sign bytes 8k .. 8k+7 of the block (bit j of byte m: weight 8m + j)
#   s_k  (64 x i8)  = sign_k ? -xq : xq   over xq[256b + 64k .. +63]
#   int32 lane i of u_k . s_k (weights 64k + 4i ..) = group 16k + i, of sub-block 2k + i/8
#
#   where (group g = 8s + j, s < 8 the sub-block, j < 8; sign byte m = 4s + l, l < 4):
#   IQ3_XXS  index = byte 2+g                        sign byte m = KSIGNS[u32(66+4s) >> 7l & 127]
#            ls = u32(66+4s) >> 28
#   IQ3_S    index = byte 2+g | bit j of byte 66+s << 8,   sign byte m = byte 74+m
#            ls = nibble s of bytes 106..109 (low nibble first)
#
# The scales 2 ls + 1 (<= 31) times a pair of products (<= 2 * 62 * 127) fit vpdpwssd's int16
# operands; a lane (4 products x 62 x 127 x 31 < 2^24) stays exact as float32.
#
# The grid lookup without a gather (AVX-512BW; demo-sized 640 x 2048 IQ3_S mat-vec, 1 thread:
# 190 -> 76 us against vpgatherdd, IQ3_XXS 130-190 -> 71-77 us, the same bits): each grid entry
# as a 16-bit word of its 4 magnitudes' level ranks (a grid has 8 levels), one nibble each,
# r0 | r1 << 4 | r2 << 8 | r3 << 12 (`RANK_WORDS`), the table in zmm constants of 32 words:
#
#   idx   <32 x i16>  grid indices of groups 32p .. 32p + 31 (p < 2)
#   slice c = vpermi2w(words[64c .. 64c + 31], idx, words[64c + 32 .. 64c + 63])   (idx bits 0-5)
#   word  = the slice idx >> 6 picks: blends on bit 6, then 7 (, 8)   256 entries: 4 slices, 512: 8
#   zmm 2p + h, bytes 4j .. 4j + 3 = nibbles 0, 1, 2, 3 of word 16h + j   (a byte shuffle, & 15 / >> 4)
#                                  -> LEVELS[rank] by vpshufb             (the same bytes as the grid's)
# ---------------------------------------------------------------------------------------------
BLOCK_BYTES = {"iq3_xxs": 98, "iq3_s": 110}


def _rank_words(grid_name: str) -> tuple[list[int], list[int]]:
    """(the grid's 8 magnitudes in rising order, one rank word per entry as int16 values)."""
    ranks = (quantizer_grid(grid_name).astype(np.int64) - 1) // 2  # its 2l + 1 form -> l
    words = ranks[:, 0] | ranks[:, 1] << 4 | ranks[:, 2] << 8 | ranks[:, 3] << 12
    return [int(v) for v in np.unique(grid_bytes(grid_name))], [int(w) - (1 << 16) if w >= 1 << 15 else int(w)
                                                                  for w in words]


RANK_WORDS = {"iq3_xxs": _rank_words("iq3xxs_grid"), "iq3_s": _rank_words("iq3s_grid")}


class Iq3Decoder:
    """IR readers of one IQ3_XXS / IQ3_S block (the diagram above) at an i8* `base`, for the 8-bit
    mat-vec here and the integer GEMM's tile decoder (gemm_int8.py); grid_p an i32* to the type's
    grid (quants.iq3's IQ3XXS_POINTS / IQ3S_POINTS)."""

    def __init__(self, builder, kind: str, grid_p):
        self.builder, self.xxs, self.grid_p = builder, kind == "iq3_xxs", grid_p

    def _byte(self, base, offset):  # a block byte as i64
        return self.builder.zext(self.builder.load(self.builder.gep(base, [i64(offset)])), I64)

    def index(self, base, g):
        """The grid index of group g, as i64."""
        b = self.builder
        if self.xxs:
            return self._byte(base, 2 + g)
        s, j = divmod(g, 8)
        high = b.and_(b.shl(self._byte(base, 66 + s), i64(8 - j)), i64(0x100))
        return b.or_(self._byte(base, 2 + g), high)

    def sign_masks(self, base):
        """Per zmm k < 4 the sign bits of weights 64k .. 64k + 63 (<64 x i1>); IQ3_XXS's 7
        stored bits per 8 weights get their parity bit in lanes (`ksign_bytes`)."""
        b = self.builder
        if not self.xxs:
            return sign_zmms(b, load_at(b, base, i64(74), vector(I8, 32)))
        aux = load_at(b, base, i64(66), vector(I32, 8))
        spread = b.shuffle_vector(aux, aux, indices([m // 4 for m in range(32)]))
        seven = b.lshr(spread, const_vector(I32, [7 * (m % 4) for m in range(32)]))
        return sign_zmms(b, ksign_bytes(b, seven))

    def scales(self, base):
        """2 ls + 1 per sub-block, <8 x i32>."""
        b = self.builder
        if self.xxs:
            aux = load_at(b, base, i64(66), vector(I32, 8))
            return odd_scales(b, b.lshr(aux, const_vector(I32, [28] * 8)))
        return odd_scales(b, nibbles(b, base, 106, 4))

    def group_indices(self, base, first, count, element):
        """<count x element> (count a multiple of 8, element an int type of 16 bits or more): the
        grid indices of groups first .. first + count - 1, first a multiple of 8 (IQ3_S: their 9th
        bits, bit j of byte 66 + s for group 8s + j, from count / 8 bytes)."""
        b = self.builder
        lanes = vector(element, count)
        low = b.zext(load_at(b, base, i64(2 + first), vector(I8, count)), lanes)
        if self.xxs:
            return low
        qh = b.zext(load_at(b, base, i64(66 + first // 8), vector(I8, count // 8)), vector(element, count // 8))
        spread = b.shuffle_vector(qh, qh, indices([m // 8 for m in range(count)]))
        high = b.and_(b.shl(spread, const_vector(element, [8 - m % 8 for m in range(count)])),
                      const_vector(element, [0x100] * count))
        return b.or_(low, high)

    def rank_words(self, base, p):
        """<32 x i16>: the rank words (RANK_WORDS) of groups 32p .. 32p + 31, by vpermi2w slices."""
        b = self.builder
        v32i16 = vector(I16, 32)
        idx = self.group_indices(base, 32 * p, 32, I16)  # as 16-bit words for vpermi2w
        words = RANK_WORDS["iq3_xxs" if self.xxs else "iq3_s"][1]
        permute = declare(b, "llvm.x86.avx512.vpermi2var.hi.512", v32i16, [v32i16] * 3)
        slices = [b.call(permute, [const_vector(I16, words[at:at + 32]), idx, const_vector(I16, words[at + 32:at + 64])])
                  for at in range(0, len(words), 64)]
        bit = 64
        while len(slices) > 1:  # pick by index bits 6, 7, 8
            upper = b.icmp_unsigned("!=", b.and_(idx, const_vector(I16, [bit] * 32)), ir.Constant(v32i16, [0] * 32))
            slices = [b.select(upper, hi, lo) for lo, hi in zip(slices[0::2], slices[1::2])]
            bit <<= 1
        return slices[0]

    def magnitudes(self, base, k):
        """<64 x i8>: the grid magnitudes of weights 64k .. 64k + 63 (groups 16k .. 16k + 15): from
        the rank words (AVX-512BW; two calls for k = 2p, 2p + 1 share them after LLVM's CSE), else
        one vpgatherdd (AVX-512), else 16 loads."""
        b = self.builder
        if HAS_AVX512BW:
            v64i8 = vector(I8, 64)
            word_bytes = b.bitcast(self.rank_words(base, k // 2), v64i8)
            h = k % 2  # byte i of group j's 4: nibble i of word 16h + j, i.e. of its byte i // 2
            spread = b.shuffle_vector(word_bytes, ir.Constant(v64i8, ir.Undefined),
                                      indices([2 * (16 * h + j) + i // 2 for j in range(16) for i in range(4)]))
            low = b.and_(spread, const_vector(I8, [15] * 64))
            high = b.lshr(spread, const_vector(I8, [4] * 64))
            ranks = b.shuffle_vector(low, high, indices([i if i % 2 == 0 else 64 + i for i in range(64)]))
            levels = RANK_WORDS["iq3_xxs" if self.xxs else "iq3_s"][0]
            return lookup16(b, levels + [0] * (16 - len(levels)), ranks)
        if HAS_AVX512:
            gather = declare(b, "llvm.x86.avx512.mask.gather.dpi.512", vector(I32, 16),
                             [vector(I32, 16), I8_PTR, vector(I32, 16), vector(ir.IntType(1), 16), I32])
            lanes = b.call(gather, [ir.Constant(vector(I32, 16), [0] * 16), b.bitcast(self.grid_p, I8_PTR),
                                    self.group_indices(base, 16 * k, 16, I32),
                                    ir.Constant(vector(ir.IntType(1), 16), [1] * 16), ir.Constant(I32, 4)])
        else:
            lanes = ir.Constant(vector(I32, 16), ir.Undefined)
            for m in range(16):
                entry = b.load(b.gep(self.grid_p, [self.index(base, 16 * k + m)]))
                lanes = b.insert_element(lanes, entry, ir.Constant(I32, m))
        return b.bitcast(lanes, vector(I8, 64))


def _iq3_int8_codegen(kind: str):
    xxs = kind == "iq3_xxs"

    def codegen(context, builder, signature, args):
        tys = signature.args
        block = Iq3Decoder(builder, kind, builder.bitcast(data_ptr(context, builder, tys[10], args[10]),
                                                          I32.as_pointer()))

        def body(blk, base, cols, accs):
            codes = [(block.magnitudes(base, k), mask) for k, mask in enumerate(block.sign_masks(base))]
            return signed_dots(builder, blk, base, cols, accs, codes, block.scales(base), 8)

        def finish(accs):
            total = float_tree_sum(builder, accs[0])
            return builder.fmul(ir.Constant(F32_IR, 0.25), total) if xxs else total

        row_of_blocks(context, builder, signature, args, name=f"{kind}_int8", block_bytes=BLOCK_BYTES[kind],
                       prefetch_lines=2, inits=[ir.Constant(vector(F32_IR, 16), [0.0] * 16)], body=body, finish=finish)
        return context.get_dummy_value()

    return codegen


# the row loop (iq2._iq2_int8_rows) dispatches on the kind: one registry for the lattice types
ROW_CODEGEN.update({kind: _iq3_int8_codegen(kind) for kind in BLOCK_BYTES})


# Signature of every mat-vec kernel (common.Format): blocks uint8 (rows, n_blocks, 98 | 110),
# x float32 (n_blocks, 8, 32) or X (B, n_cols), out float32 (rows,) or (B, rows).
@njit(parallel=True, cache=True, nogil=True)
def matvec_iq3_xxs(blocks, x, out):
    lanes_rows(blocks, x, out, 98, _iq3_block, True, None, _iq3_scratch)


@njit(parallel=True, cache=True, nogil=True)
def matvec_iq3_s(blocks, x, out):
    lanes_rows(blocks, x, out, 110, _iq3_block, False, None, _iq3_scratch)


@njit(parallel=True, cache=True, nogil=True)
def matvec_iq3_xxs_int8(blocks, x, out):
    _iq2_int8_rows(blocks, x, out, 98, "iq3_xxs", IQ3XXS_POINTS)


@njit(parallel=True, cache=True, nogil=True)
def matvec_iq3_s_int8(blocks, x, out):
    _iq2_int8_rows(blocks, x, out, 110, "iq3_s", IQ3S_POINTS)


FORMATS = {
    GGMLType.IQ3_XXS: Format((8, 32), matvec_iq3_xxs),
    GGMLType.IQ3_S: Format((8, 32), matvec_iq3_s),
}
INT8_MATVECS = {
    GGMLType.IQ3_XXS: matvec_iq3_xxs_int8,
    GGMLType.IQ3_S: matvec_iq3_s_int8,
}
