"""Mat-vec with 8-bit activations, as llama.cpp computes a token: x is quantized once per call to
ggml's Q8_0 activation blocks and each weight block is dotted with it in integers.

Why: decoding weights to float32 and FMA-ing costs ~2 vector instructions per 16 weights more
than one `vpdpbusd` (64 byte products summed 4 at a time into 16 int32 lanes). On the demo
model's 178 MB Q8_0 output matrix that took a token's mat-vec from 18.2 to 12.2 ms at 2 threads
(9.8 -> 14.6 GB/s of a ~19.5 GB/s machine), 25.8 -> 23.3 ms at 1 thread. It is also llama.cpp's
own arithmetic (its CPU backend quantizes activations for every quantized weight type), so the
logits move towards llama.cpp's, by its activation-rounding noise.

Activation blocks (ggml's x86 `quantize_row_q8_0`, bit for bit):

    for each 32 values of x:   amax = max |x|,  d = fp16(amax / 127),  q = rint(x * 127 / amax)
    xq int8 (n,)    xd float32 (n/32,) = d as float    xbias int32 (n/32 * 8,): see below

`vpdpbusd` multiplies unsigned by signed bytes, so weights enter as unsigned codes u with the
format's offset removed afterwards: w = u - OFFSET (Q8_0: u = w ^ 0x80, OFFSET 128; Q4_0: the
nibble, 8; Q5_0: nibble | 5th bit << 4, 16; IQ4_NL: its grid value + 128, looked up by nibble with a
byte shuffle, 128 - ggml's `ggml_vec_dot_iq4_nl_q8_0`, whose activations are these Q8_0 blocks).
Then  sum w*x = sum u*x - OFFSET * sum x; the correction -OFFSET * sum(xq of the block) starts
lane 0 of the block's 8 int32 lanes (`xbias`), so the integer sum needs no extra instruction.

One block = 8 int32 lanes; a zmm holds two consecutive blocks:

    lanes  0..7  block b   (bytes u[0..31] . xq[32b .. 32b+31], 4 products per lane)
    lanes  8..15 block b+1
    acc(float32 x16) += float(lanes) * [d_w(b) xd(b)] x8 ++ [d_w(b+1) xd(b+1)] x8

Without VNNI (`dot_u8_s8`): AVX2's vpmaddubsw (u8 * s8 pairs -> int16) + vpmaddwd (pairs -> int32),
exact while two products fit int16 (codes u <= 127: every format but Q8_0 and IQ4_NL, whose
weights go in signed, |w| * sign(xq, w), with 128 * (each lane's xq sum) added to its xbias lanes),
else plain vector IR. Every path leaves the same int32 in every lane, so the results are the same
bits on every CPU (tests/test_kernels_int8_iq4.py runs the AVX2 and generic paths here). On this AMD Zen 3 (AVX2) the AVX2 form made the demo's mat-vecs 3-5x faster.

Q4_1 and Q5_1 (a scale d and a minimum m per block: w = d * u + m) dot with ggml's Q8_1 blocks, as
`ggml_vec_dot_q4_1_q8_1` / `_q5_1_q8_1`: the same codes and d as the Q8_0 blocks above plus
s = fp16(d' * sum(xq)), d' = amax / 127 before its fp16 rounding (ggml's x86 `quantize_row_q8_1`),
so a block adds

    d_w * d_x * (u . xq)   +   m_w * s_x          u = the nibble (| 5th bit << 4), no offset

the first term in the lanes as above (xbias all zero), the second in a <2 x float> accumulator per
column (one lane per block of the pair), added to the lanes' sum at the end of the row.

Columns (llvm_ir.py): each row dot takes B activation rows, each quantized once per call; a pair of
weight blocks is decoded once and dotted with every row.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from llvmlite import binding as llvm
from numba import config, njit, types
from numba.extending import intrinsic, overload

from ...gguf.constants import TYPE_INFO, GGMLType
from ...quants.half import fp32_round_fp16
from ...quants.iquants import IQ4_GRID
from .common import columns, row_dots
from .llvm_ir import (F16, F32, I8, I16, I32, I64, PREFETCH_BYTES, as_i64, call_fma, carried_loop, column_groups,
                      concat, const_vector, data_ptr, declare, emit_prefetch, float_tree_sum, halves, i64, if_odd,
                      indices, load_at, row_ptr, store_columns, vector)


def _host_features() -> dict:
    # numba compiles for the host CPU unless NUMBA_CPU_NAME asks for a portable target
    if config.CPU_NAME not in (None, "host"):
        return {}
    try:
        return dict(llvm.get_host_cpu_features())
    except Exception:  # an llvmlite without feature detection: the generic code is always correct
        return {}


HAS_VNNI = bool(_host_features().get("avx512vnni", False))
HAS_AVX512 = bool(_host_features().get("avx512f", False))
# Without VNNI, AVX2's vpmaddubsw (u8 * s8 pairs -> i16) + vpmaddwd (pairs -> i32) where the pair
# sums cannot saturate int16; the portable vector IR (bytes widened to 64 int32 lanes) otherwise.
HAS_AVX2 = not HAS_VNNI and bool(_host_features().get("avx2", False))
# vpshufb (a 16-entry table lookup per byte, `lookup16`) on 64 bytes, or on 32
HAS_AVX512BW = bool(_host_features().get("avx512bw", False))
HAS_PSHUFB_256 = bool(_host_features().get("avx2", False))
# vgf2p8affineqb: any bit-linear map of each byte, with a matrix per 64-bit lane - a nibble
# pulled out of every byte in one instruction (`nibbles`) where AVX-512 needs a word shift and a
# mask. The K-quant rows use it; the panel kernels keep the shift (with 8 columns' accumulators in
# registers, GFNI measured 3-5 % slower there at B = 4-8 on the demo's Q4_0 file).
HAS_GFNI = HAS_AVX512BW and bool(_host_features().get("gfni", False))

# Per weight type (simd.py has the block diagrams): how the unsigned codes u are read, the offset
# subtracted from them (the matvec_*_int8 kernels pass it, with the block bytes as literals: the
# reshape then multiplies by a constant) and their largest value (U_MAX).
#   q8_0  | d | qs[32] int8 |                   u = qs ^ 0x80                              offset 128
#   q4_0  | d | qs[16] |                        u[j] = qs[j] & 15, u[j+16] = qs[j] >> 4    offset 8
#   q5_0  | d | qh u32 | qs[16] |               as q4_0, | (bit j of qh) << 4              offset 16
#   iq4_nl | d | qs[16] |                       u = IQ4_GRID[nibble] + 128 (q4_0's nibbles)  offset 128
#   q4_1  | d | m | qs[16] |                    as q4_0 (w = d u + m: the m term apart)      offset 0
#   q5_1  | d | m | qh u32 | qs[16] |           as q5_0                                      offset 0
U_MAX = {"q8_0": 255, "q4_0": 15, "q5_0": 31, "iq4_nl": 241, "q4_1": 15, "q5_1": 31}
CODE_OFFSET = {"q8_0": 128, "q4_0": 8, "q5_0": 16, "iq4_nl": 128, "q4_1": 0, "q5_1": 0}
# byte offsets of the nibbles and of the 5th bits (qh) in a block
QS_AT = {"q4_0": 2, "q5_0": 6, "iq4_nl": 2, "q4_1": 4, "q5_1": 8}
QH_AT = {"q5_0": 2, "q5_1": 4}
# kinds with a minimum per block (w = d u + m): the fp16 m sits at byte 2, the activations carry s
AFFINE_KINDS = ("q4_1", "q5_1")
# Q8_0's and IQ4_NL's codes reach 255 / 241, too big for vpmaddubsw: on AVX2 they multiply the
# signed weights (u ^ 0x80) instead.
SIGNED_Q8_0 = HAS_AVX2
SIGNED_KINDS = ("q8_0", "iq4_nl")
# IQ4_NL's grid as unsigned codes: value + 128 (1 .. 241)
IQ4_CODES = [int(v) + 128 for v in IQ4_GRID]


def dot_u8_s8(builder, acc, u, s, u_max=255):
    """acc <16 x i32> + (sum of 4 adjacent u8*s8 products per lane) for u, s <64 x i8>, |s| <= 127,
    u <= u_max (the AVX2 form needs u_max <= 127: two products then fit int16)."""
    v16i32 = vector(I32, 16)
    if HAS_VNNI:
        fn = declare(builder, "llvm.x86.avx512.vpdpbusd.512", v16i32, [v16i32] * 3)
        return builder.call(fn, [acc, builder.bitcast(u, v16i32), builder.bitcast(s, v16i32)])
    if HAS_AVX2 and u_max <= 127:
        return builder.add(acc, madd_pairs(builder, maddubs(builder, u, s), None))
    v64i32 = vector(I32, 64)
    prod = builder.mul(builder.zext(u, v64i32), builder.sext(s, v64i32))
    undef = ir.Constant(v64i32, ir.Undefined)
    for k in range(4):
        acc = builder.add(acc, builder.shuffle_vector(prod, undef, indices(range(k, 64, 4))))
    return acc


def dot_s8_s8(builder, acc, w, s):
    """acc <16 x i32> + (sum of 4 adjacent w*s products per lane) for signed w, s <64 x i8> with
    |s| <= 127: AVX2's |w| * (s with w's sign) (llama.cpp's trick), |w| <= 128 so two products fit
    int16. Only where HAS_AVX2."""
    v64i8, v32i8 = vector(I8, 64), vector(I8, 32)
    zero = ir.Constant(v64i8, [0] * 64)
    negative = builder.icmp_signed("<", w, zero)
    magnitude = builder.select(negative, builder.sub(zero, w), w)  # -(-128) wraps to 128 as u8: right
    # vpsignb: s negated where w < 0, zeroed where w == 0 (one instruction; LLVM made two of the select)
    psign = declare(builder, "llvm.x86.avx2.psign.b", v32i8, [v32i8, v32i8])
    signed_s = concat(builder, *(builder.call(psign, [a, b]) for a, b in zip(halves(builder, s), halves(builder, w))))
    return builder.add(acc, madd_pairs(builder, maddubs(builder, magnitude, signed_s), None))


def maddubs(builder, u, s):
    """AVX2 vpmaddubsw on <64 x i8> u (unsigned), s (signed) as two ymm halves: <32 x i16>, lane j =
    u[2j] s[2j] + u[2j+1] s[2j+1] (saturated: callers keep it in range)."""
    v32i8, v16i16 = vector(I8, 32), vector(I16, 16)
    fn = declare(builder, "llvm.x86.avx2.pmadd.ub.sw", v16i16, [v32i8, v32i8])
    return concat(builder, *(builder.call(fn, [a, b]) for a, b in zip(halves(builder, u), halves(builder, s))))


def madd_pairs(builder, pairs, weights):
    """AVX2 vpmaddwd on <32 x i16>: <16 x i32>, lane k = pairs[2k] w[2k] + pairs[2k+1] w[2k+1]
    (weights None: all ones, i.e. the sum of two pairs)."""
    v16i16 = vector(I16, 16)
    fn = declare(builder, "llvm.x86.avx2.pmadd.wd", vector(I32, 8), [v16i16, v16i16])
    ones = ir.Constant(v16i16, [1] * 16)
    w_halves = halves(builder, weights) if weights is not None else [ones, ones]
    return concat(builder, *(builder.call(fn, [p, w]) for p, w in zip(halves(builder, pairs), w_halves)))


def _pair_codes(builder, kind, base0, base1):
    """The 64 unsigned codes of the blocks at base0 and base1 (i8*) as <64 x i8>: 32 per block.

    Nibbles are split with shifts that are the same for every lane (a per-lane shift amount on
    bytes has no x86 instruction: LLVM widened it to words, ~3x the instructions)."""
    v32i8, v16i8, v64i8 = vector(I8, 32), vector(I8, 16), vector(I8, 64)

    def both(offset, vty):
        return concat(builder, load_at(builder, base0, i64(offset), vty), load_at(builder, base1, i64(offset), vty))

    if kind == "q8_0":
        return builder.xor(both(2, v32i8), const_vector(I8, [0x80] * 64))
    qs = both(QS_AT[kind], v16i8)  # <32 x i8>
    lo = builder.and_(qs, const_vector(I8, [15] * 32))
    hi = builder.and_(builder.lshr(qs, const_vector(I8, [4] * 32)), const_vector(I8, [15] * 32))
    # block k: weights j < 16 = lo[16k + j], weights 16 + j = hi[16k + j]
    order = [i for k in range(2) for i in list(range(16 * k, 16 * k + 16)) + list(range(32 + 16 * k, 32 + 16 * k + 16))]
    u = builder.shuffle_vector(lo, hi, indices(order))
    if kind == "iq4_nl":
        return lookup16(builder, IQ4_CODES, u)
    if kind not in QH_AT:  # q4_0, q4_1
        return u
    # 5th bit: weight j of block k is bit j of that block's little-endian u32 qh,
    # i.e. bit (j % 8) of qh byte 4k + j // 8
    qh = both(QH_AT[kind], vector(I8, 4))  # <8 x i8>
    spread = builder.shuffle_vector(qh, qh, indices([4 * (i // 32) + (i % 32) // 8 for i in range(64)]))
    bit = builder.and_(spread, const_vector(I8, [1 << (i % 8) for i in range(64)]))
    is_set = builder.icmp_unsigned("!=", bit, ir.Constant(v64i8, [0] * 64))
    return builder.or_(u, builder.select(is_set, ir.Constant(v64i8, [16] * 64), ir.Constant(v64i8, [0] * 64)))


def bit_matrix(moves) -> int:
    """vgf2p8affineqb's matrix for one 64-bit lane (byte 7 - o selects the input bits whose parity
    is output bit o) of the byte map that moves input bit i to output bit o for each (i, o) of
    `moves` and clears every other bit."""
    return sum((1 << i) << (8 * (7 - o)) for i, o in moves)


LOW_NIBBLE, HIGH_NIBBLE = bit_matrix((i, i) for i in range(4)), bit_matrix((4 + i, i) for i in range(4))


def byte_affine(builder, v64, matrices):
    """<64 x i8>: each byte of v64 (<64 x i8>) mapped by matrices[q] (`bit_matrix`) in 64-bit lane q:
    one vgf2p8affineqb (HAS_GFNI CPUs only)."""
    v64i8 = vector(I8, 64)
    affine = declare(builder, "llvm.x86.vgf2p8affineqb.512", v64i8, [v64i8, v64i8, I8])
    return builder.call(affine, [v64, builder.bitcast(const_vector(I64, matrices), v64i8), ir.Constant(I8, 0)])


def nibbles(builder, v64, high_by_qword):
    """<64 x i8>: every byte of v64 (<64 x i8>) reduced to its low nibble, or in the 64-bit lanes q
    where high_by_qword[q] is true to its high nibble (0..15 either way)."""
    if HAS_GFNI:
        return byte_affine(builder, v64, [HIGH_NIBBLE if high else LOW_NIBBLE for high in high_by_qword])
    shifts = const_vector(I16, [4 if high else 0 for high in high_by_qword for _ in range(4)])
    shifted = builder.lshr(builder.bitcast(v64, vector(I16, 32)), shifts)
    return builder.and_(builder.bitcast(shifted, vector(I8, 64)), const_vector(I8, [15] * 64))


def bit_moved(builder, v64, source_by_qword, to):
    """<64 x i8>: in each byte of v64 (<64 x i8>) in 64-bit lane q, bit source_by_qword[q] moved to
    bit `to`, every other bit cleared (Q5_K's fifth bits: bit s of the qh bytes in lane s)."""
    if HAS_GFNI:
        return byte_affine(builder, v64, [bit_matrix([(source, to)]) for source in source_by_qword])
    v64i8 = vector(I8, 64)
    mask = const_vector(I8, [1 << source for source in source_by_qword for _ in range(8)])
    is_set = builder.icmp_unsigned("!=", builder.and_(v64, mask), ir.Constant(v64i8, [0] * 64))
    return builder.select(is_set, ir.Constant(v64i8, [1 << to] * 64), ir.Constant(v64i8, [0] * 64))


def lookup16(builder, table, idx):
    """<n x i8>: table[idx[i]] per byte for a 16-entry byte table (a list of ints 0..255) and
    indices idx <n x i8> (n 32 or 64) in 0..15: vpshufb (the table in every 16-byte lane; AVX-512BW
    or AVX2), else a select per table entry."""
    n = idx.type.count
    table_bytes = [v - 256 if v > 127 else v for v in table]
    if HAS_AVX512BW and n == 64:
        fn = declare(builder, "llvm.x86.avx512.pshuf.b.512", idx.type, [idx.type] * 2)
        return builder.call(fn, [const_vector(I8, table_bytes * 4), idx])
    if HAS_PSHUFB_256:  # ymm halves
        v32i8 = vector(I8, 32)
        fn = declare(builder, "llvm.x86.avx2.pshuf.b", v32i8, [v32i8, v32i8])
        parts = halves(builder, idx) if n == 64 else [idx]
        looked = [builder.call(fn, [const_vector(I8, table_bytes * 2), part]) for part in parts]
        return concat(builder, *looked) if n == 64 else looked[0]
    out = ir.Constant(idx.type, [0] * n)
    for i, value in enumerate(table_bytes):
        hit = builder.icmp_unsigned("==", idx, ir.Constant(idx.type, [i] * n))
        out = builder.select(hit, ir.Constant(idx.type, [value] * n), out)
    return out


# Columns per group (llvm_ir.py, "Columns"): one <16 x float> accumulator per column, so a weight
# block pair is decoded once per group. 8 with AVX-512's 32 zmm registers (demo output matrix,
# 8 columns, 1 thread: 38.9 -> 33.2 ms); 4 where a <16 x float> takes two of 16 ymm registers.
INT8_GROUP = 8 if HAS_AVX512 else 4


@intrinsic
def row_dot_int8(typingctx, row, xq, xd8, xbias, n_blocks, kind, out, r, t0, n_t):
    """out[t, r] = sum over blocks b of d_w(b) * xd[t, b] * (w_b . xq[t]_b) for one row of
    Q8_0/Q4_0/Q5_0/IQ4_NL blocks (diagrams in simd.py, legacy.py and above) and every column t (`kind` a literal
    string; row uint8 (n_blocks * block_bytes,), xq int8 (B, n), xd8 float32 (B, n/4): each
    activation block's scale repeated 8 times, one per int32 lane of its block, xbias int32
    (B, n/4), as made by `quantize_activations_into` / `_int8_rows`, out float32 (B, n_rows)).
    Q4_1/Q5_1 (AFFINE_KINDS): + m_w(b) * s[t, b], and xbias is s instead: float32 (B, n/32), each
    Q8_1 block's s (`q8_1_sums_into`; the codes have no offset, so no lane corrections).
    Two blocks per loop trip, decoded once per group of INT8_GROUP columns, each column's float
    accumulator in a register for the whole row, a prefetch PREFETCH_BYTES ahead."""
    if not isinstance(kind, types.StringLiteral) or kind.literal_value not in U_MAX:
        return None
    fmt = kind.literal_value
    affine = fmt in AFFINE_KINDS
    block_bytes = TYPE_INFO[GGMLType[fmt.upper()]].block_bytes

    def codegen(context, builder, signature, args):
        row_v, xq_v, xd_v, xb_v, nb_v, _, out_v, r_v = args[:8]
        tys = signature.args
        v16f, v16i32, v32i8, v64i8 = vector(F32, 16), vector(I32, 16), vector(I8, 32), vector(I8, 64)
        v8i32, v8f, v2f = vector(I32, 8), vector(F32, 8), vector(F32, 2)
        row_p = builder.bitcast(data_ptr(context, builder, tys[0], row_v), I8.as_pointer())
        nb = as_i64(context, builder, nb_v, tys[4])
        r = as_i64(context, builder, r_v, tys[7])
        zero_f = ir.Constant(v16f, [0.0] * 16)
        per_column = 2 if affine else 1  # accumulators: the lanes (and the m * s pair)

        def fp16_pair(base0, base1, count, offset):
            """<2 x float>: the fp16 at `offset` of both blocks (the second 0 for a lone block); both
            in one i32, widened together (an insert and a conversion per scale kept the shuffle
            port busy)."""
            halves_i32 = [builder.zext(load_at(builder, base, i64(offset), I16), I32) for base in (base0, base1)[:count]]
            pair = halves_i32[0] if count == 1 else builder.or_(halves_i32[0],
                                                                builder.shl(halves_i32[1], ir.Constant(I32, 16)))
            return builder.fpext(builder.bitcast(pair, vector(F16, 2)), v2f)

        def group(t0, n_cols):
            cols = [builder.add(t0, i64(i)) for i in range(n_cols)]
            xq_rows = [builder.bitcast(row_ptr(context, builder, tys[1], xq_v, t), I8.as_pointer()) for t in cols]
            xd_rows = [row_ptr(context, builder, tys[2], xd_v, t) for t in cols]
            xb_rows = [row_ptr(context, builder, tys[3], xb_v, t) for t in cols]

            def blocks_step(b, count, accs):
                """accs + the `count` (1 or 2) blocks starting at block b, per column. A lone last
                block is read as a pair with itself, its second half's activations, bias and
                scale set to 0."""
                base0 = builder.gep(row_p, [builder.mul(b, i64(block_bytes))])
                base1 = builder.gep(base0, [i64(block_bytes)]) if count == 2 else base0
                u = _pair_codes(builder, fmt, base0, base1)
                signed_w = builder.xor(u, const_vector(I8, [0x80] * 64)) if fmt in SIGNED_KINDS else None
                # [d_w(b)] x 8 ++ [d_w(b+1)] x 8, once for the group's columns
                d_pair = fp16_pair(base0, base1, count, 0)
                d_w16 = builder.shuffle_vector(d_pair, d_pair, indices([0] * 8 + [1] * 8))
                m_pair = fp16_pair(base0, base1, count, 2) if affine else None
                new = []
                for i, (xq_p, xd_p, xb_p) in enumerate(zip(xq_rows, xd_rows, xb_rows)):
                    acc = accs[per_column * i]
                    xs = builder.gep(xq_p, [builder.shl(b, i64(5))])
                    xd8_p = builder.gep(xd_p, [builder.shl(b, i64(3))])
                    if affine:  # no lane corrections; s of the pair's blocks
                        bias = ir.Constant(v16i32, [0] * 16)
                        s_p = builder.gep(xb_p, [b])
                        s_pair = (load_at(builder, s_p, i64(0), v2f, align=4) if count == 2 else
                                  builder.insert_element(ir.Constant(v2f, [0.0, 0.0]), builder.load(s_p),
                                                         ir.Constant(I32, 0)))
                    else:
                        bias_p = builder.gep(xb_p, [builder.shl(b, i64(3))])
                    if count == 2:
                        s = load_at(builder, xs, i64(0), v64i8)
                        if not affine:
                            bias = load_at(builder, bias_p, i64(0), v16i32, align=4)
                        x_d = load_at(builder, xd8_p, i64(0), v16f, align=4)
                    else:  # one block: the upper half of each vector zero
                        s = builder.shuffle_vector(load_at(builder, xs, i64(0), v32i8), ir.Constant(v32i8, [0] * 32),
                                                   indices(range(64)))
                        if not affine:
                            bias = builder.shuffle_vector(load_at(builder, bias_p, i64(0), v8i32, align=4),
                                                          ir.Constant(v8i32, [0] * 8), indices(range(16)))
                        x_d = builder.shuffle_vector(load_at(builder, xd8_p, i64(0), v8f, align=4),
                                                     ir.Constant(v8f, [0.0] * 8), indices(range(16)))
                    if SIGNED_Q8_0 and fmt in SIGNED_KINDS:  # u > 127: the signed form (xbias has the rest)
                        dots = dot_s8_s8(builder, bias, signed_w, s)
                    else:
                        dots = dot_u8_s8(builder, bias, u, s, U_MAX[fmt])
                    scales = builder.fmul(d_w16, x_d)  # d_w(b) * xd(b) per lane, as ggml rounds it
                    new.append(call_fma(builder, builder.sitofp(dots, v16f), scales, acc))
                    if affine:
                        new.append(call_fma(builder, m_pair, s_pair, accs[per_column * i + 1]))
                return new

            def pair(i, accs):
                b0 = builder.shl(i, i64(1))
                if PREFETCH_BYTES:
                    emit_prefetch(builder, builder.gep(row_p, [builder.mul(b0, i64(block_bytes))]), PREFETCH_BYTES)
                return blocks_step(b0, 2, accs)

            inits = [zero_f, ir.Constant(v2f, [0.0, 0.0])][:per_column] * n_cols
            totals = carried_loop(builder, "row_dot_int8", builder.ashr(nb, i64(1)), inits, pair)
            totals = if_odd(builder, nb, totals, lambda accs: blocks_step(builder.sub(nb, i64(1)), 1, accs))
            sums = [float_tree_sum(builder, totals[per_column * i]) for i in range(n_cols)]
            if affine:  # the lanes' sum + the m * s terms
                sums = [builder.fadd(v, float_tree_sum(builder, totals[2 * i + 1])) for i, v in enumerate(sums)]
            store_columns(context, builder, tys[6], out_v, r, t0, sums)

        column_groups(context, builder, (tys[8], args[8]), (tys[9], args[9]), INT8_GROUP, group)
        return context.get_dummy_value()

    return types.void(row, xq, xd8, xbias, n_blocks, kind, out, r, t0, n_t), codegen


def code_offset(kind):
    """CODE_OFFSET[kind] for a literal kind, inside njit."""
    raise NotImplementedError("code_offset is only available in numba-compiled code")


@overload(code_offset, inline="always")
def _code_offset(kind):
    if isinstance(kind, types.StringLiteral) and kind.literal_value in CODE_OFFSET:
        offset = np.int32(CODE_OFFSET[kind.literal_value])
        return lambda kind: offset
    return None


def signed_form(kind):
    """Whether `kind`'s activations carry the signed form's lane corrections (SIGNED_KINDS on AVX2),
    inside njit."""
    raise NotImplementedError("signed_form is only available in numba-compiled code")


@overload(signed_form, inline="always")
def _signed_form(kind):
    if isinstance(kind, types.StringLiteral):
        signed = SIGNED_Q8_0 and kind.literal_value in SIGNED_KINDS
        return lambda kind: signed
    return None


def affine_kind(kind):
    """Whether `kind` (a literal) is one of AFFINE_KINDS (Q8_1 activations with their s), inside njit."""
    raise NotImplementedError("affine_kind is only available in numba-compiled code")


@overload(affine_kind, inline="always")
def _affine_kind(kind):
    if isinstance(kind, types.StringLiteral):
        affine = kind.literal_value in AFFINE_KINDS
        return lambda kind: affine
    return None


@njit(inline="always")
def _block_abs_max(x, first):
    """max |x[first:first + 32]| as ggml's x86 quantizers take it (0 for an all-zero block)."""
    amax = np.float32(0.0)
    for k in range(32):
        amax = max(amax, abs(x[first + k]))
    return amax


@njit(inline="always")
def activation_block_scale(x, first):
    """ggml's x86 quantize_row_q8_0 for the block x[first:first + 32]: (d, the scale rounded to
    fp16 as float32, and the multiplier 127 / amax that makes the codes)."""
    amax = _block_abs_max(x, first)
    inv = np.float32(127.0) / amax if amax != 0 else np.float32(0.0)
    return fp32_round_fp16(amax / np.float32(127.0)), inv


@njit(inline="always")
def activation_code(v, inv):
    """The int8 code of v in its block (`activation_block_scale`): v * 127/amax, halves to even."""
    return np.int32(np.rint(v * inv))


@njit(inline="always")
def quantize_activations_into(x, xq, xd, xbias, offset, signed_form):
    """x float32 (32 n,) -> xq int8 (32 n,), xd float32 (n,), xbias int32 (8 n,) as ggml's x86
    quantize_row_q8_0 (d rounded to fp16, multiplier 127/amax, round half to even), with
    xbias[8b] = -offset * sum(xq of block b) and the other 7 lanes of each block 0.

    signed_form (Q8_0 on AVX2, `dot_s8_s8`: lanes of w . xq = u . xq - 128 * (lane's xq sum)):
    each lane l also gets + offset * sum(xq[32b + 4l .. 32b + 4l + 3]), so every int32 lane ends
    where vpdpbusd's ends, and the float sums are the same bits."""
    n_blocks = x.size // 32
    for k in range(xbias.size):  # a loop: `xbias[:] = 0` would be a parallel region of its own
        xbias[k] = 0
    for b in range(n_blocks):
        xd[b], inv = activation_block_scale(x, 32 * b)
        total = np.int32(0)
        for k in range(32):
            q = activation_code(x[32 * b + k], inv)
            xq[32 * b + k] = q
            total += q
            if signed_form:
                xbias[8 * b + k // 4] += offset * q
        xbias[8 * b] -= offset * total


@njit(inline="always")
def q8_1_sums_into(x, xq, xs):
    """xs float32 (n,): the s of ggml's x86 quantize_row_q8_1 for each block of x (32 n,) whose
    codes `quantize_activations_into` put in xq: fp16(d' * sum(xq of the block)) with d' = amax / 127
    in float32 (not the fp16-rounded d), the sum an exact integer converted to float."""
    for b in range(x.size // 32):
        total = np.int32(0)
        for k in range(32):
            total += xq[32 * b + k]
        xs[b] = fp32_round_fp16(_block_abs_max(x, 32 * b) / np.float32(127.0) * np.float32(total))


@njit(inline="always")
def quantize_activations(x, offset):
    """`quantize_activations_into` with new arrays: (xq, xd, xbias) of one activation row x."""
    xq = np.empty(x.size, np.int8)
    xd = np.empty(x.size // 32, np.float32)
    xbias = np.empty(x.size // 4, np.int32)
    quantize_activations_into(x, xq, xd, xbias, offset, False)
    return xq, xd, xbias


@njit(inline="always")
def _int8_rows(blocks, x, out, block_bytes, kind):
    """The Q8_0/Q4_0/Q5_0/IQ4_NL/Q4_1/Q5_1 kernels: each activation row quantized once (Q4_1, Q5_1:
    as Q8_1 blocks, their s in place of the unused xbias), then every weight row dotted with all of
    them (`row_dot_int8`)."""
    X, Y = columns(x, out)
    n_t, n = X.shape
    n_rows, n_blocks = blocks.shape[0], blocks.shape[1]
    xq = np.empty((n_t, n), np.int8)
    xd = np.empty((n_t, n // 32), np.float32)
    xbias = np.empty((n_t, n // 4), np.int32)
    xs = np.empty((n_t, n // 32 if affine_kind(kind) else 0), np.float32)
    xd8 = np.empty((n_t, n // 4), np.float32)  # each block's scale once per int32 lane of it
    for t in range(n_t):
        quantize_activations_into(X[t], xq[t], xd[t], xbias[t], code_offset(kind), signed_form(kind))
        if affine_kind(kind):
            q8_1_sums_into(X[t], xq[t], xs[t])
        for k in range(n // 4):
            xd8[t, k] = xd[t, k // 8]
    row_dots(blocks.reshape(n_rows, n_blocks * block_bytes), Y, _int8_row, kind,
             (xq, xd8, lane_terms(kind, xbias, xs), n_blocks))


@njit(inline="always")
def _int8_row(row, operands, kind, Y, r, t0, n_t):  # common.row_dots' step
    xq, xd8, terms, n_blocks = operands
    row_dot_int8(row, xq, xd8, terms, n_blocks, kind, Y, r, t0, n_t)


def lane_terms(kind, xbias, xs):
    """What `row_dot_int8` takes as its xbias for a literal kind: xs for AFFINE_KINDS, else xbias."""
    raise NotImplementedError("lane_terms is only available in numba-compiled code")


@overload(lane_terms, inline="always")
def _lane_terms(kind, xbias, xs):
    if isinstance(kind, types.StringLiteral):
        if kind.literal_value in AFFINE_KINDS:
            return lambda kind, xbias, xs: xs
        return lambda kind, xbias, xs: xbias
    return None


# One kernel per weight type: `kind` must be a literal for the intrinsic, and numba caches by function.
@njit(parallel=True, cache=True, nogil=True)
def matvec_q8_0_int8(blocks, x, out):
    _int8_rows(blocks, x, out, 34, "q8_0")


@njit(parallel=True, cache=True, nogil=True)
def matvec_q4_0_int8(blocks, x, out):
    _int8_rows(blocks, x, out, 18, "q4_0")


@njit(parallel=True, cache=True, nogil=True)
def matvec_q5_0_int8(blocks, x, out):
    _int8_rows(blocks, x, out, 22, "q5_0")


@njit(parallel=True, cache=True, nogil=True)
def matvec_iq4_nl_int8(blocks, x, out):
    _int8_rows(blocks, x, out, 18, "iq4_nl")


@njit(parallel=True, cache=True, nogil=True)
def matvec_q4_1_int8(blocks, x, out):
    _int8_rows(blocks, x, out, 20, "q4_1")


@njit(parallel=True, cache=True, nogil=True)
def matvec_q5_1_int8(blocks, x, out):
    _int8_rows(blocks, x, out, 24, "q5_1")


INT8_MATVECS = {
    GGMLType.Q8_0: matvec_q8_0_int8,
    GGMLType.Q4_0: matvec_q4_0_int8,
    GGMLType.Q5_0: matvec_q5_0_int8,
    GGMLType.IQ4_NL: matvec_iq4_nl_int8,
    GGMLType.Q4_1: matvec_q4_1_int8,
    GGMLType.Q5_1: matvec_q5_1_int8,
}
