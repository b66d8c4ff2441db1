"""Integer GEMM for prompt processing with 8-bit activations (`vpdpbusd`), llama.cpp's arithmetic
at GEMM speed: out[t, col0 + r] = W[r] . X[t] for a tile of weight rows, X rounded to 8 bits as
the int8 mat-vecs round it (int8.py: Q8_0 blocks for Q8_0/Q4_0/Q5_0/IQ4_NL weights;
int8_kquants.py: Q8_K blocks for Q4_K/Q5_K/Q6_K/IQ4_XS), so a prompt's products carry the same
activation rounding as token generation's and llama.cpp's.

Every supported weight is w = s * u + m with u an unsigned 8-bit code and s, m float32 per row and
sub-block (`SPECS`):

    type   sub-block  u                         s          m
    Q4_K   32         nibble 0..15              d * sc     -dmin * min     (`has_min`)
    Q5_K   32         nibble | 5th bit 0..31    d * sc     -dmin * min
    Q6_K   16         6-bit code 0..63          d * sc     -32 s           (`offset` 32)
    Q8_0   32         q ^ 0x80 0..255           d          -128 s
    Q4_0   32         nibble 0..15              d          -8 s
    Q5_0   32         nibble | 5th bit 0..31    d          -16 s
    IQ4_NL 32         grid value + 128 1..241   d          -128 s
    IQ4_XS 32         grid value + 128 1..241   d * (ls-32) -128 s
    IQ3_XXS 32        signed grid value + 64    d * (2ls+1) / 4  -64 s
    IQ3_S  32         signed grid value + 16    d * (2ls+1) -16 s
    IQ2_XXS 32        signed grid value + 43    d * (2ls+1) / 8  -43 s
    IQ2_XS, IQ2_S 16  signed grid value + 43    d * (2ls+1) / 8  -43 s

A weight tile is decoded once per call (`DECODERS`) into 16-row panels, VNNI order, so one zmm
holds 16 rows x 4 consecutive k:

    codes (P, K * 16) uint8:  panel p, bytes 64 k4 .. 64 k4 + 63 = rows 16p .. 16p+15, each its
                              codes k = 4 k4 .. 4 k4 + 3 (row j at bytes 64 k4 + 4 j)
    scales (P, n_sub * 16) float32:  [p, 16 s + j] = s of row 16p + j, sub-block s
    mins   (P, n_sub * 16) float32:  the same for m (has_min types only)

Rows past the matrix's last one (the tile padded to whole panel pairs) are zero.

Activations, per token t and sub-block s (`activations`): xq int8 (T, K); xscale (T, n_sub) the
activation block's scale d_x; for offset types xinit (T, n_sub) = -offset * (sum of xq over s)
(int32); for has_min types xmin (T, n_sub) = d_x * (sum of xq over s) (float32). Then

    out[t, r] = sum_s  float(xinit[t, s] + u[r, s] . xq[t, s]) * xscale[t, s] * s[r, s]
                       (+ m[r, s] * xmin[t, s])

`gemm_int8_micro` runs that for 2 panels (32 rows) x up to 6 tokens: per sub-block 12 int32
accumulators start at xinit and take sub/4 `vpdpbusd` each (a zmm of codes x 4 activation bytes
broadcast), then become float and are FMA'd into 12 float accumulators that stay in registers
over the sub-block loop. No horizontal sums. Each token's arithmetic is its own (the same
operations in the same order whatever tokens run with it), so a sequence's results never depend
on the batch.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

from ...gguf.constants import GGMLType
from ...quants.half import read_fp16
from ...quants.iq2 import GRID_S, GRID_XS, GRID_XXS
from ...quants.iq3 import IQ3S_POINTS, IQ3XXS_POINTS
from ...quants.iquants import iq4_xs_scale
from ...quants.legacy import read_u32
from ...quants.kquants import scale_min_k4
from .int8 import IQ4_CODES, lookup16
from .int8_kquants import Q4_K_KERNEL_ORDER_BYTES, QK_K, quantize_q8_k_into, shifted_pair
from .iq2 import Iq2Decoder
from .iq3 import Iq3Decoder
from .llvm_ir import (F16, F32, I8, I32, as_i64, call_fma, carried_loop, concat, const_vector, data_ptr, declare,
                      i64, indices, load_at, row_ptr, splat, tree_reduce, vector)

ROWS_PER_PANEL = 16
# The micro-kernel: 2 panels (32 rows) x 6 tokens = 12 zmm float accumulators + 12 int32 ones.
PANELS_PER_MICRO = 2
ROWS_PER_MICRO = ROWS_PER_PANEL * PANELS_PER_MICRO
TOKENS_PER_MICRO = 6
# k is walked in chunks of K_CHUNK per panel pair: the pair's codes for a chunk (8 KB) stay in L1
# while every token group of a work item passes over them.
K_CHUNK = 256
# Token groups (of TOKENS_PER_MICRO) per parallel work item: their xq rows stay in L1/L2 across panels.
GROUPS_PER_BLOCK = 4


class Spec(NamedTuple):
    """How one weight type enters the integer GEMM (module docstring's table)."""
    kind: str         # the block decoder's name (`_block_codes`)
    block_size: int   # weights per block
    block_bytes: int
    sub_len: int      # weights per sub-block (one s, m)
    offset: int       # m = -offset * s (0: has_min)
    has_min: bool
    q8_k: bool        # activations as Q8_K blocks (K-quants) rather than Q8_0


SPECS = {
    GGMLType.Q4_K: Spec("q4_k", 256, 144, 32, 0, True, True),
    GGMLType.Q5_K: Spec("q5_k", 256, 176, 32, 0, True, True),
    GGMLType.Q6_K: Spec("q6_k", 256, 210, 16, 32, False, True),
    GGMLType.Q8_0: Spec("q8_0", 32, 34, 32, 128, False, False),
    GGMLType.Q4_0: Spec("q4_0", 32, 18, 32, 8, False, False),
    GGMLType.Q5_0: Spec("q5_0", 32, 22, 32, 16, False, False),
    GGMLType.IQ4_NL: Spec("iq4_nl", 32, 18, 32, 128, False, False),
    GGMLType.IQ4_XS: Spec("iq4_xs", 256, 136, 32, 128, False, True),
    GGMLType.IQ3_XXS: Spec("iq3_xxs", 256, 98, 32, 64, False, True),
    GGMLType.IQ3_S: Spec("iq3_s", 256, 110, 32, 16, False, True),
    GGMLType.IQ2_XXS: Spec("iq2_xxs", 256, 66, 32, 43, False, True),
    GGMLType.IQ2_XS: Spec("iq2_xs", 256, 74, 16, 43, False, True),
    GGMLType.IQ2_S: Spec("iq2_s", 256, 82, 16, 43, False, True),
}
# Q4_K layer matrices repacked into the 8-bit mat-vec's order (int8_kquants.q4_k_kernel_order):
# the same tiles as Q4_K's, decoded from 148-byte blocks.
Q4_K_KERNEL_ORDER = Spec("q4_k_ko", 256, Q4_K_KERNEL_ORDER_BYTES, 32, 0, True, True)
_DECODE_SPECS = list(SPECS.values()) + [Q4_K_KERNEL_ORDER]
# the lattice types' grids (quants' arrays: one integer per entry, its magnitudes as bytes) as
# constants of the decoders' LLVM modules
GRIDS = {"iq3_xxs": IQ3XXS_POINTS, "iq3_s": IQ3S_POINTS, "iq2_xxs": GRID_XXS.view(np.uint64).ravel(),
         "iq2_xs": GRID_XS.view(np.uint64).ravel(), "iq2_s": GRID_S.view(np.uint64).ravel()}


# ---------------------------------------------------------------------------------------------
# Decoding a tile: codes in VNNI panel order (an intrinsic per block), scales and mins (numba)
# ---------------------------------------------------------------------------------------------
def _block_codes(builder, kind, base):
    """The unsigned codes of the block at `base` (i8*) in weight order, as a list of <n x i8>
    vectors (n a multiple of 4). Block layouts: simd.py / int8.py / int8_kquants.py diagrams."""
    v16i8, v32i8, v64i8 = vector(I8, 16), vector(I8, 32), vector(I8, 64)

    def bytes_of(value, n):
        return const_vector(I8, [value] * n)

    def nibbles(qs, n):  # (low nibbles, high nibbles) of an <n x i8>
        return builder.and_(qs, bytes_of(15, n)), builder.and_(builder.lshr(qs, bytes_of(4, n)), bytes_of(15, n))

    if kind in ("q4_k", "q5_k"):
        # qs[32g .. 32g+31]: low nibbles = weights 64g + l, high = 64g + 32 + l; Q5_K: bit 2g (2g+1)
        # of qh[l] is the 5th bit of the low (high) one
        qs_offset = 16 if kind == "q4_k" else 48
        qh = load_at(builder, base, i64(16), v32i8) if kind == "q5_k" else None
        out = []
        for g in range(4):
            lo, hi = nibbles(load_at(builder, base, i64(qs_offset + 32 * g), v32i8), 32)
            if qh is not None:
                lo = builder.or_(lo, builder.shl(builder.and_(builder.lshr(qh, bytes_of(2 * g, 32)), bytes_of(1, 32)),
                                                 bytes_of(4, 32)))
                hi = builder.or_(hi, builder.shl(builder.and_(builder.lshr(qh, bytes_of(2 * g + 1, 32)),
                                                              bytes_of(1, 32)), bytes_of(4, 32)))
            out.append(concat(builder, lo, hi))
        return out
    if kind == "q4_k_ko":
        # int8_kquants.q4_k_kernel_order: byte 8 (2g + h) + b of u_k (the low / high nibbles of the
        # zmm at 20 + 64 (k // 2)) is weight 64g + 32h + 8k + b
        u = []
        for half in range(2):
            lo, hi = nibbles(load_at(builder, base, i64(20 + 64 * half), v64i8), 64)
            u += [lo, hi]
        both = [concat(builder, u[0], u[1]), concat(builder, u[2], u[3])]
        order = [[128 * (k // 2) + 64 * (k % 2) + 8 * (2 * g + h) + b for h in range(2) for k in range(4)
                  for b in range(8)] for g in range(4)]
        return [builder.shuffle_vector(both[0], both[1], indices(weights)) for weights in order]
    if kind == "q6_k":  # int8_kquants.py's Q6_K diagram: u_a, u_b per half n
        out = []
        for n in range(2):
            ql = load_at(builder, base, i64(64 * n), v64i8)
            h = load_at(builder, base, i64(128 + 32 * n), v32i8)
            high_a = builder.and_(shifted_pair(builder, h, 4, 2, left=True), bytes_of(0x30, 64))
            high_b = builder.and_(shifted_pair(builder, h, 0, 2, left=False), bytes_of(0x30, 64))
            lo, hi = nibbles(ql, 64)
            out += [builder.or_(lo, high_a), builder.or_(hi, high_b)]
        return out
    if kind == "q8_0":
        return [builder.xor(load_at(builder, base, i64(2), v32i8), bytes_of(0x80, 32))]
    if kind in GRIDS:  # iq2.py's / iq3.py's diagrams: grid magnitude, negated where its sign bit is set, + offset
        decoder = Iq3Decoder if kind.startswith("iq3") else Iq2Decoder
        block = decoder(builder, kind, _grid_constant(builder, kind))
        offset = bytes_of(next(s.offset for s in SPECS.values() if s.kind == kind), 64)
        out = []
        for k, mask in enumerate(block.sign_masks(base)):
            magnitude = block.magnitudes(base, k)
            out.append(builder.add(builder.select(mask, builder.sub(bytes_of(0, 64), magnitude), magnitude), offset))
        return out
    if kind == "iq4_xs":  # sub-block s: byte 8 + 16s + j, low nibble weight 32s + j, high 32s + 16 + j
        return [lookup16(builder, IQ4_CODES,
                         concat(builder, *nibbles(load_at(builder, base, i64(8 + 16 * s), v16i8), 16)))
                for s in range(8)]
    lo, hi = nibbles(load_at(builder, base, i64(6 if kind == "q5_0" else 2), v16i8), 16)
    codes = concat(builder, lo, hi)
    if kind == "q4_0":
        return [codes]
    if kind == "iq4_nl":  # q4_0's nibbles, looked up in the grid as unsigned codes
        return [lookup16(builder, IQ4_CODES, codes)]
    # q5_0: bit j of the little-endian u32 qh is the 5th bit of weight j
    qh = splat(builder, load_at(builder, base, i64(2), I32), 32)
    bits = builder.and_(builder.lshr(qh, const_vector(I32, range(32))), const_vector(I32, [1] * 32))
    return [builder.or_(codes, builder.shl(builder.trunc(bits, v32i8), bytes_of(4, 32)))]


def _grid_constant(builder, kind):
    """i32* to the grid of `kind` as an internal constant of the function's module (made once)."""
    name = f"llmcli_{kind}_grid"
    elem = ir.IntType(8 * GRIDS[kind].itemsize)
    try:
        var = builder.module.get_global(name)
    except KeyError:
        values = [int(v) for v in GRIDS[kind]]
        var = ir.GlobalVariable(builder.module, ir.ArrayType(elem, len(values)), name)
        var.initializer = ir.Constant(var.type.pointee, values)
        var.global_constant = True
        var.linkage = "internal"
    return builder.bitcast(var, elem.as_pointer())


@intrinsic
def store_block_codes(typingctx, row, b, kind, codes, p, lane):
    """Block b of a weight row (`row` uint8 (n_blocks * block bytes,), `kind` a literal: a Spec's
    kind) decoded to unsigned codes and stored in VNNI panel order: codes (P, K * 16) uint8,
    code k at codes[p, 64 (k // 4) + 4 lane + k % 4]. One 4-byte store per 4 codes."""
    if not isinstance(kind, types.StringLiteral):
        return None
    spec = next(s for s in _DECODE_SPECS if s.kind == kind.literal_value)

    def codegen(context, builder, signature, args):
        tys = signature.args
        row_p = builder.bitcast(context.make_array(tys[0])(context, builder, args[0]).data, I8.as_pointer())
        blk = as_i64(context, builder, args[1], tys[1])
        base = builder.gep(row_p, [builder.mul(blk, i64(spec.block_bytes))])
        dst = builder.bitcast(row_ptr(context, builder, tys[3], args[3], as_i64(context, builder, args[4], tys[4])),
                              I8.as_pointer())
        lane = as_i64(context, builder, args[5], tys[5])
        # byte offset of code k = block_size * blk + 4 k4: 64 (block_size/4 * blk + k4) + 4 lane
        start = builder.add(builder.mul(blk, i64(16 * spec.block_size)), builder.shl(lane, i64(2)))
        k4 = 0
        for vec in _block_codes(builder, spec.kind, base):
            words = builder.bitcast(vec, vector(I32, vec.type.count // 4))
            for e in range(vec.type.count // 4):
                p = builder.gep(dst, [builder.add(start, i64(64 * (k4 + e)))])
                builder.store(builder.extract_element(words, ir.Constant(I32, e)),
                              builder.bitcast(p, I32.as_pointer()), align=1)
            k4 += vec.type.count // 4
        return context.get_dummy_value()

    return types.void(row, b, kind, codes, p, lane), codegen


@njit(inline="always")
def store_row_codes(flat, r, n_blocks, kind, codes, p, j):
    """Row r of `flat` (rows, n_blocks * block bytes) into row j of panel p of `codes` (module
    docstring), every block; a row past the matrix's end as zeros, and False for it."""
    if r >= flat.shape[0]:
        for k4 in range(codes.shape[1] // 64):
            for i in range(4):
                codes[p, 64 * k4 + 4 * j + i] = 0
        return False
    for b in range(n_blocks):
        store_block_codes(flat[r], b, kind, codes, p, j)
    return True


@njit(inline="always")
def _decode_tile(blocks, r0, codes, scales, mins, kind, subs_per_block):
    """Rows r0 .. of `blocks` (rows, n_blocks, block bytes) into the tile arrays (module
    docstring), one panel per parallel work item; rows past the matrix's end stay zero."""
    n_rows, n_blocks = blocks.shape[0], blocks.shape[1]
    flat = blocks.reshape(n_rows, -1)
    for p in prange(codes.shape[0]):
        for j in range(ROWS_PER_PANEL):
            r = r0 + ROWS_PER_PANEL * p + j
            if store_row_codes(flat, r, n_blocks, kind, codes, p, j):
                for b in range(n_blocks):
                    _block_scales(blocks, r, b, scales, mins, p, j, kind, subs_per_block)
            else:
                for s in range(scales.shape[1] // ROWS_PER_PANEL):
                    scales[p, ROWS_PER_PANEL * s + j] = 0.0
                    mins[p, ROWS_PER_PANEL * s + j] = 0.0


@njit(inline="always")
def _block_scales(blocks, r, b, scales, mins, p, j, kind, subs_per_block):
    """s (and m) of block (r, b)'s sub-blocks into scales[p, 16 s + j] (mins[p, 16 s + j])."""
    s0 = subs_per_block * b
    if kind == "q4_k" or kind == "q5_k":
        block = blocks[r, b]
        d, dmin = read_fp16(block, 0), read_fp16(block, 2)
        for i in range(8):
            sc, mn = scale_min_k4(i, block[4:16])
            scales[p, ROWS_PER_PANEL * (s0 + i) + j] = d * np.float32(sc)
            mins[p, ROWS_PER_PANEL * (s0 + i) + j] = -(dmin * np.float32(mn))
    elif kind == "q4_k_ko":  # the same values, the scales and mins as bytes at 4 and 12
        block = blocks[r, b]
        d, dmin = read_fp16(block, 0), read_fp16(block, 2)
        for i in range(8):
            scales[p, ROWS_PER_PANEL * (s0 + i) + j] = d * np.float32(block[4 + i])
            mins[p, ROWS_PER_PANEL * (s0 + i) + j] = -(dmin * np.float32(block[12 + i]))
    elif kind == "q6_k":
        block = blocks[r, b]
        d = read_fp16(block, 208)
        for i in range(16):  # int8 scales: the byte reinterpreted as signed
            scales[p, ROWS_PER_PANEL * (s0 + i) + j] = d * np.float32(np.int8(block[192 + i]))
    elif kind == "iq3_xxs" or kind == "iq3_s":
        block = blocks[r, b]
        d = read_fp16(block, 0)
        for i in range(8):  # IQ3_XXS: d (2 ls + 1) / 4, ggml's final 0.25 folded in (exact)
            if kind == "iq3_xxs":
                sc = d * np.float32(2 * (read_u32(block, 66 + 4 * i) >> np.uint32(28)) + 1) * np.float32(0.25)
            else:
                sc = d * np.float32(2 * ((np.int32(block[106 + i // 2]) >> (4 * (i % 2))) & 15) + 1)
            scales[p, ROWS_PER_PANEL * (s0 + i) + j] = sc
    elif kind == "iq2_xxs" or kind == "iq2_xs" or kind == "iq2_s":
        block = blocks[r, b]
        d = read_fp16(block, 0)
        for i in range(subs_per_block):  # d (2 ls + 1) / 8, ggml's final 0.125 folded in (exact)
            if kind == "iq2_xxs":
                ls = np.int32(read_u32(block, 6 + 8 * i) >> np.uint32(28))
            else:
                ls = (np.int32(block[(66 if kind == "iq2_xs" else 74) + i // 2]) >> (4 * (i % 2))) & 15
            scales[p, ROWS_PER_PANEL * (s0 + i) + j] = d * np.float32(2 * ls + 1) * np.float32(0.125)
    elif kind == "iq4_xs":
        block = blocks[r, b]
        d = read_fp16(block, 0)
        for i in range(8):
            scales[p, ROWS_PER_PANEL * (s0 + i) + j] = d * np.float32(iq4_xs_scale(block, i))
    else:
        scales[p, ROWS_PER_PANEL * s0 + j] = read_fp16(blocks[r, b], 0)


# One decoder per type: `kind` must be a literal for the intrinsic, and numba caches by function.
@njit(parallel=True, cache=True, nogil=True)
def decode_q4_k(blocks, r0, codes, scales, mins):
    _decode_tile(blocks, r0, codes, scales, mins, "q4_k", 8)


@njit(parallel=True, cache=True, nogil=True)
def decode_q4_k_kernel_order(blocks, r0, codes, scales, mins):  # blocks (rows, n_blocks, 148)
    _decode_tile(blocks, r0, codes, scales, mins, "q4_k_ko", 8)


@njit(parallel=True, cache=True, nogil=True)
def decode_q5_k(blocks, r0, codes, scales, mins):
    _decode_tile(blocks, r0, codes, scales, mins, "q5_k", 8)


@njit(parallel=True, cache=True, nogil=True)
def decode_q6_k(blocks, r0, codes, scales, mins):
    _decode_tile(blocks, r0, codes, scales, mins, "q6_k", 16)


@njit(parallel=True, cache=True, nogil=True)
def decode_q8_0(blocks, r0, codes, scales, mins):
    _decode_tile(blocks, r0, codes, scales, mins, "q8_0", 1)


@njit(parallel=True, cache=True, nogil=True)
def decode_q4_0(blocks, r0, codes, scales, mins):
    _decode_tile(blocks, r0, codes, scales, mins, "q4_0", 1)


@njit(parallel=True, cache=True, nogil=True)
def decode_q5_0(blocks, r0, codes, scales, mins):
    _decode_tile(blocks, r0, codes, scales, mins, "q5_0", 1)


@njit(parallel=True, cache=True, nogil=True)
def decode_iq4_nl(blocks, r0, codes, scales, mins):
    _decode_tile(blocks, r0, codes, scales, mins, "iq4_nl", 1)


@njit(parallel=True, cache=True, nogil=True)
def decode_iq4_xs(blocks, r0, codes, scales, mins):
    _decode_tile(blocks, r0, codes, scales, mins, "iq4_xs", 8)


@njit(parallel=True, cache=True, nogil=True)
def decode_iq3_xxs(blocks, r0, codes, scales, mins):
    _decode_tile(blocks, r0, codes, scales, mins, "iq3_xxs", 8)


@njit(parallel=True, cache=True, nogil=True)
def decode_iq3_s(blocks, r0, codes, scales, mins):
    _decode_tile(blocks, r0, codes, scales, mins, "iq3_s", 8)


@njit(parallel=True, cache=True, nogil=True)
def decode_iq2_xxs(blocks, r0, codes, scales, mins):
    _decode_tile(blocks, r0, codes, scales, mins, "iq2_xxs", 8)


@njit(parallel=True, cache=True, nogil=True)
def decode_iq2_xs(blocks, r0, codes, scales, mins):
    _decode_tile(blocks, r0, codes, scales, mins, "iq2_xs", 16)


@njit(parallel=True, cache=True, nogil=True)
def decode_iq2_s(blocks, r0, codes, scales, mins):
    _decode_tile(blocks, r0, codes, scales, mins, "iq2_s", 16)


DECODERS = {
    GGMLType.Q4_K: decode_q4_k,
    GGMLType.Q5_K: decode_q5_k,
    GGMLType.Q6_K: decode_q6_k,
    GGMLType.Q8_0: decode_q8_0,
    GGMLType.Q4_0: decode_q4_0,
    GGMLType.Q5_0: decode_q5_0,
    GGMLType.IQ4_NL: decode_iq4_nl,
    GGMLType.IQ4_XS: decode_iq4_xs,
    GGMLType.IQ3_XXS: decode_iq3_xxs,
    GGMLType.IQ3_S: decode_iq3_s,
    GGMLType.IQ2_XXS: decode_iq2_xxs,
    GGMLType.IQ2_XS: decode_iq2_xs,
    GGMLType.IQ2_S: decode_iq2_s,
}


# ---------------------------------------------------------------------------------------------
# Activations
# ---------------------------------------------------------------------------------------------
@njit(parallel=True, cache=True, nogil=True)
def activations_q8_k(X, sub_len, offset, xq, xscale, xinit, xmin):
    """Each row of X (T, K) as ggml's Q8_K blocks (quantize_q8_k_into: scale per 256, sums per 16),
    into the per-sub-block arrays (module docstring) for sub-blocks of sub_len (16 or 32)."""
    n_t, n = X.shape
    n_sub = n // sub_len
    per = sub_len // 16
    xd = np.empty((n_t, n // QK_K), np.float32)
    bsums = np.empty((n_t, n // 16), np.int32)
    for t in prange(n_t):
        quantize_q8_k_into(X[t], xq[t], xd[t], bsums[t], n // QK_K)
        for s in range(n_sub):
            total = np.int32(0)
            for i in range(per):
                total += bsums[t, per * s + i]
            d = xd[t, (sub_len * s) // QK_K]
            xscale[t, s] = d
            xinit[t, s] = -offset * total
            xmin[t, s] = d * np.float32(total)


@intrinsic
def quantize_q8_0_into(typingctx, x, xq, xd, xsum, n_blocks):
    """x float32 (32 n,) -> xq int8 (32 n,), xd float32 (n,), xsum int32 (n,) = sum of each block's
    xq: ggml's x86 quantize_row_q8_0 as int8.quantize_activations_into computes it (the same bits),
    one LLVM loop over the blocks (that scalar loop took ~10 % of a prompt's integer GEMMs):

        amax = max |x|,  d = fp16(amax / 127),  q = rint(x * (127 / amax))   (amax 0: q = 0)
    """
    if not (all(isinstance(a, types.Array) for a in (x, xq, xd, xsum)) and isinstance(n_blocks, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        tys = signature.args
        v32f, v32i32, v32i8 = vector(F32, 32), vector(I32, 32), vector(I8, 32)
        x_p, xq_p, xd_p, xs_p = (data_ptr(context, builder, tys[k], args[k]) for k in range(4))
        fabs = declare(builder, "llvm.fabs.v32f32", v32f, [v32f])
        rint = declare(builder, "llvm.rint.v32f32", v32f, [v32f])

        def block(b, _):
            v = load_at(builder, builder.gep(x_p, [builder.mul(b, i64(32))]), i64(0), v32f, align=4)
            amax = tree_reduce(builder, builder.call(fabs, [v]),
                               lambda a, c: builder.call(declare(builder, f"llvm.maxnum.v{a.type.count}f32", a.type,
                                                                 [a.type] * 2), [a, c]))
            d = builder.fpext(builder.fptrunc(builder.fdiv(amax, ir.Constant(F32, 127.0)), F16), F32)
            builder.store(d, builder.gep(xd_p, [b]))
            nonzero = builder.fcmp_unordered("!=", amax, ir.Constant(F32, 0.0))
            inv = builder.select(nonzero, builder.fdiv(ir.Constant(F32, 127.0), amax), ir.Constant(F32, 0.0))
            q = builder.fptosi(builder.call(rint, [builder.fmul(v, splat(builder, inv, 32))]), v32i32)
            builder.store(builder.trunc(q, v32i8),
                          builder.bitcast(builder.gep(xq_p, [builder.mul(b, i64(32))]), v32i8.as_pointer()), align=1)
            builder.store(tree_reduce(builder, q, builder.add), builder.gep(xs_p, [b]))
            return []

        carried_loop(builder, "q8_0", as_i64(context, builder, args[4], tys[4]), [], block)
        return context.get_dummy_value()

    return types.void(x, xq, xd, xsum, n_blocks), codegen


@njit(parallel=True, cache=True, nogil=True)
def activations_q8_0(X, offset, xq, xscale, xinit):
    """Each row of X (T, K) as ggml's Q8_0 blocks (`quantize_q8_0_into`), xinit per block."""
    n_t, n = X.shape
    for t in prange(n_t):
        quantize_q8_0_into(X[t], xq[t], xscale[t], xinit[t], n // 32)
        for s in range(n // 32):
            xinit[t, s] *= -offset


# ---------------------------------------------------------------------------------------------
# The micro-kernel
# ---------------------------------------------------------------------------------------------
@intrinsic
def gemm_int8_micro(typingctx, xq, xscale, xinit, xmin, t0, n_t, codes, scales, mins, p0, out, col0,
                    s_lo, s_hi, sub_len, has_min, accumulate):
    """out[t0 + i, col0 + j] for i < n_t, j < 32 (panels p0, p0 + 1): the module docstring's sum
    over sub-blocks s_lo .. s_hi - 1, added to what out holds if `accumulate` (a later k chunk).
    n_t (1..6), sub_len (16 or 32), has_min, accumulate are literals."""
    literals = (n_t, sub_len, has_min, accumulate)
    if not all(isinstance(a, (types.IntegerLiteral, types.BooleanLiteral)) for a in literals):
        return None
    n_tok, sub, with_min, acc_in = (a.literal_value for a in literals)
    sig = types.void(xq, xscale, xinit, xmin, t0, n_t, codes, scales, mins, p0, out, col0, s_lo, s_hi, sub_len,
                     has_min, accumulate)

    def codegen(context, builder, signature, args):
        tys = signature.args
        (xq_v, xs_v, xi_v, xm_v, t0_v, _, codes_v, sc_v, mn_v, p0_v, out_v, col0_v, lo_v, hi_v) = args[:14]
        v16f, v16i = vector(F32, 16), vector(I32, 16)
        t0_, p0_, col0_ = (as_i64(context, builder, args[k], tys[k]) for k in (4, 9, 11))
        s_lo_, s_hi_ = as_i64(context, builder, lo_v, tys[12]), as_i64(context, builder, hi_v, tys[13])
        ts = [builder.add(t0_, i64(i)) for i in range(n_tok)]
        ps = [builder.add(p0_, i64(j)) for j in range(PANELS_PER_MICRO)]
        xq_rows = [builder.bitcast(row_ptr(context, builder, tys[0], xq_v, t), I8.as_pointer()) for t in ts]
        xs_rows = [row_ptr(context, builder, tys[1], xs_v, t) for t in ts]
        xi_rows = [row_ptr(context, builder, tys[2], xi_v, t) for t in ts]
        xm_rows = [row_ptr(context, builder, tys[3], xm_v, t) for t in ts]
        code_rows = [builder.bitcast(row_ptr(context, builder, tys[6], codes_v, p), I8.as_pointer()) for p in ps]
        sc_rows = [row_ptr(context, builder, tys[7], sc_v, p) for p in ps]
        mn_rows = [row_ptr(context, builder, tys[8], mn_v, p) for p in ps]
        out_ptrs = [[builder.gep(row_ptr(context, builder, tys[10], out_v, t), [builder.add(col0_, i64(16 * j))])
                     for j in range(PANELS_PER_MICRO)] for t in ts]
        dpbusd = declare(builder, "llvm.x86.avx512.vpdpbusd.512", v16i, [v16i] * 3)
        if acc_in:
            starts = [builder.load(builder.bitcast(p, v16f.as_pointer()), align=4) for row in out_ptrs for p in row]
        else:
            starts = [ir.Constant(v16f, [0.0] * 16)] * (n_tok * PANELS_PER_MICRO)

        def sub_block(i, accs):
            s = builder.add(s_lo_, i)
            k = builder.mul(s, i64(sub))              # first weight of the sub-block
            w_at = builder.shl(k, i64(4))             # its byte in a panel: 64 * k / 4
            zero = ir.Constant(v16i, [0] * 16)
            iaccs = [[zero if with_min else splat(builder, builder.load(builder.gep(xi_rows[a], [s])), 16)]
                     * PANELS_PER_MICRO for a in range(n_tok)]
            for g in range(sub // 4):
                w = [load_at(builder, code_rows[j], builder.add(w_at, i64(64 * g)), v16i)
                     for j in range(PANELS_PER_MICRO)]
                for a in range(n_tok):
                    xb = splat(builder, load_at(builder, xq_rows[a], builder.add(k, i64(4 * g)), I32), 16)
                    iaccs[a] = [builder.call(dpbusd, [iaccs[a][j], w[j], xb]) for j in range(PANELS_PER_MICRO)]
            sv = [load_at(builder, sc_rows[j], builder.shl(s, i64(4)), v16f, align=4) for j in range(PANELS_PER_MICRO)]
            mv = ([load_at(builder, mn_rows[j], builder.shl(s, i64(4)), v16f, align=4)
                   for j in range(PANELS_PER_MICRO)] if with_min else None)
            new = []
            for a in range(n_tok):
                xs = splat(builder, builder.load(builder.gep(xs_rows[a], [s])), 16)
                xm = splat(builder, builder.load(builder.gep(xm_rows[a], [s])), 16) if with_min else None
                for j in range(PANELS_PER_MICRO):
                    acc = accs[PANELS_PER_MICRO * a + j]
                    scaled = builder.fmul(builder.sitofp(iaccs[a][j], v16f), xs)
                    acc = call_fma(builder, scaled, sv[j], acc)
                    if with_min:
                        acc = call_fma(builder, mv[j], xm, acc)
                    new.append(acc)
            return new

        finals = carried_loop(builder, "gemm_int8", builder.sub(s_hi_, s_lo_), starts, sub_block)
        for a in range(n_tok):
            for j in range(PANELS_PER_MICRO):
                builder.store(finals[PANELS_PER_MICRO * a + j],
                              builder.bitcast(out_ptrs[a][j], v16f.as_pointer()), align=4)
        return context.get_dummy_value()

    return sig, codegen


@njit(inline="always")
def _gemm_tile(xq, xscale, xinit, xmin, codes, scales, mins, out, col0, n_rows, scratch, sub_len, has_min):
    """out[t, col0 + r] for r < n_rows (the tile's real rows) and every token t; columns of a last,
    partly filled panel pair go through `scratch` (T, 32)."""
    n_tokens = xq.shape[0]
    n_sub = xscale.shape[1]
    n_pairs = codes.shape[0] // PANELS_PER_MICRO
    full_pairs = n_rows // ROWS_PER_MICRO
    subs_per_chunk = K_CHUNK // sub_len
    n_groups = n_tokens // TOKENS_PER_MICRO
    n_blocks = (n_groups + GROUPS_PER_BLOCK - 1) // GROUPS_PER_BLOCK
    for item in prange(n_blocks + n_tokens % TOKENS_PER_MICRO):
        if item < n_blocks:
            g_lo = item * GROUPS_PER_BLOCK
            g_hi = min(n_groups, g_lo + GROUPS_PER_BLOCK)
            for pair in range(n_pairs):
                p0 = PANELS_PER_MICRO * pair
                target, col = (out, col0 + ROWS_PER_MICRO * pair) if pair < full_pairs else (scratch, 0)
                for s0 in range(0, n_sub, subs_per_chunk):
                    s1 = min(n_sub, s0 + subs_per_chunk)
                    for g in range(g_lo, g_hi):
                        t0 = TOKENS_PER_MICRO * g
                        if s0 == 0:
                            gemm_int8_micro(xq, xscale, xinit, xmin, t0, 6, codes, scales, mins, p0, target, col,
                                            s0, s1, sub_len, has_min, False)
                        else:
                            gemm_int8_micro(xq, xscale, xinit, xmin, t0, 6, codes, scales, mins, p0, target, col,
                                            s0, s1, sub_len, has_min, True)
        else:  # one of the last n_tokens % 6 tokens
            t = TOKENS_PER_MICRO * n_groups + (item - n_blocks)
            for pair in range(n_pairs):
                target, col = (out, col0 + ROWS_PER_MICRO * pair) if pair < full_pairs else (scratch, 0)
                gemm_int8_micro(xq, xscale, xinit, xmin, t, 1, codes, scales, mins, PANELS_PER_MICRO * pair, target,
                                col, 0, n_sub, sub_len, has_min, False)
    rest = n_rows - ROWS_PER_MICRO * full_pairs
    if rest:
        c = col0 + ROWS_PER_MICRO * full_pairs
        for t in range(n_tokens):
            for j in range(rest):
                out[t, c + j] = scratch[t, j]


# One kernel per (sub_len, has_min): literals for the micro-kernel.
@njit(parallel=True, cache=True, nogil=True)
def gemm_int8_sub32_min(xq, xscale, xinit, xmin, codes, scales, mins, out, col0, n_rows, scratch):
    _gemm_tile(xq, xscale, xinit, xmin, codes, scales, mins, out, col0, n_rows, scratch, 32, True)


@njit(parallel=True, cache=True, nogil=True)
def gemm_int8_sub32(xq, xscale, xinit, xmin, codes, scales, mins, out, col0, n_rows, scratch):
    _gemm_tile(xq, xscale, xinit, xmin, codes, scales, mins, out, col0, n_rows, scratch, 32, False)


@njit(parallel=True, cache=True, nogil=True)
def gemm_int8_sub16(xq, xscale, xinit, xmin, codes, scales, mins, out, col0, n_rows, scratch):
    _gemm_tile(xq, xscale, xinit, xmin, codes, scales, mins, out, col0, n_rows, scratch, 16, False)


def gemm_kernel(spec: Spec):
    """The tile GEMM for a Spec's sub-block length and min."""
    if spec.has_min:
        return gemm_int8_sub32_min
    return gemm_int8_sub16 if spec.sub_len == 16 else gemm_int8_sub32


def activations(spec: Spec, X: np.ndarray, xq, xscale, xinit, xmin) -> None:
    """X float32 (T, K) into xq int8 (T, K) and the per-sub-block arrays (T, K / sub_len)."""
    if spec.q8_k:
        activations_q8_k(X, spec.sub_len, np.int32(spec.offset), xq, xscale, xinit, xmin)
    else:
        activations_q8_0(X, np.int32(spec.offset), xq, xscale, xinit)
