"""Mat-vec with 8-bit activations for Q2_K, Q3_K, Q4_K, Q5_K, Q6_K and IQ4_XS weights, llama.cpp's Q8_K
path: x is quantized once per call to ggml's Q8_K activation blocks and every weight super-block is
dotted with them in integers (`vpdpbusd`, see int8.py), as ggml's `ggml_vec_dot_q2_K_q8_K` /
`_q3_K_q8_K` / `_q4_K_q8_K` / `_q5_K_q8_K` / `_q6_K_q8_K` / `_iq4_xs_q8_K`. Same signature as
kquants.matvec_q2_k ... matvec_q6_k / matvec_iq4_xs; `INT8_KQUANT_MATVECS` maps type -> kernel.

Activation blocks (ggml's `quantize_row_q8_K_ref`, which its x86 backend calls, bit for bit):

    per 256 values of x:  max = the value of largest |x| (the first one on a tie),
                          iscale = -127 / max,   q = min(127, nearest_int(iscale * x)),
                          d = 1 / iscale      (all zero: d = 0, q = 0)
    xq int8 (n,)   xd float32 (n/256,) = d (float32, not fp16)   bsums int32 (n/16,) = sum of q per 16

Per super-block b, with the integer sums exactly as ggml's generic C code defines them:

    Q2_K:  d_x * d * sum_s sc_s * (u_s . xq_s)  -  d_x * dmin * sum_s m_s * bsums_s
           u = the 2-bit code 0..3, s < 16 sub-blocks of 16
    Q3_K:  d_x * d * sum_s (sc_s - 32) * ((u_s . xq_s) - 4 * bsums_s)
           u = 2 low bits | hmask bit << 2, 0..7 (weight u - 4), s < 16 sub-blocks of 16
    Q4_K:  d_x * d * sum_s sc_s * (u_s . xq_s)  -  d_x * dmin * sum_s m_s * (bsums over sub-block s)
           u = the nibble 0..15 (unsigned, as vpdpbusd wants), s < 8 sub-blocks of 32
    Q5_K:  the same, u = nibble | 5th bit << 4, 0..31
    Q6_K:  d_x * d * sum_s sc_s * ((u_s - 32) . xq_s)
         = d_x * d * (sum_s sc_s * (u_s . xq_s)  -  32 * sum_s sc_s * bsums_s)
           u = the 6-bit code 0..63, sc int8, s < 16 sub-blocks of 16
    IQ4_XS: d_x * d * sum_s (ls_s - 32) * ((u_s . xq_s) - 128 * (sum of xq over sub-block s))
           u = IQ4 grid value + 128 (int8.IQ4_CODES, 1..241), s < 8 sub-blocks of 32; each int32
           lane starts at -128 * the sum of the activations it multiplies (`lane_sums`), so it ends
           as an exact partial sum of w * xq, the same integer on every CPU (AVX2: the signed
           product |w| * sign(xq, w) from 0)

Each block's integer sum lives in one <16 x i32> (its 16 lanes summed at the end of the row
with everything else); it becomes float once per block and is FMA'd with d * d_x into a float32
accumulator that stays in a register for the whole row (Q4_K: a second <8 x float> for the mins).
Results equal ggml's to float32 rounding of the scaling and the sums (~5e-8 relative to the sum
of magnitudes; the integer parts are exact).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

from ...gguf.constants import GGMLType
from ...quants.kquants import q3_k_scale_bits, scale_min_k4
from .common import ROW_TILE, columns, row_dots, serial_twin
from .int8 import (HAS_AVX2, HAS_VNNI, INT8_GROUP, IQ4_CODES, bit_moved, dot_s8_s8, dot_u8_s8, lookup16, madd_pairs,
                   maddubs, nibbles)
from .llvm_ir import (F16, F32, I8, I8_PTR, I16, I32, I64, as_i64, block_loop, call_fma, carried_loop, const_vector,
                      data_ptr, declare, float_tree_sum, i64, indices, load_at, load_half, pairwise, row_ptr, splat,
                      tree_reduce, vector)
from .simd import q4_k_scales_mins

# Columns per group (llvm_ir.py, "Columns"): Q4_K/Q5_K 1 zmm + 1 ymm accumulator per column, Q6_K 1 zmm;
# as int8.py's (demo attn_output Q4_K, 8 columns, 1 thread: 0.141 -> 0.100 ms with 8 on AVX-512).
INT8_K_GROUP = INT8_GROUP

QK_K = 256


@njit(inline="always")
def quantize_q8_k(x):
    """x float32 (256 n,) -> (xq int8 (256 n,), xd float32 (n,), bsums int32 (16 n,)) exactly as
    ggml's quantize_row_q8_K_ref (`quantize_q8_k_into`)."""
    n_blocks = x.size // QK_K
    xq = np.empty(x.size, np.int8)
    xd = np.empty(n_blocks, np.float32)
    bsums = np.empty(n_blocks * 16, np.int32)
    quantize_q8_k_into(x, xq, xd, bsums, n_blocks)
    return xq, xd, bsums


@intrinsic
def quantize_q8_k_into(typingctx, x, xq, xd, bsums, n_blocks):
    """Fill xq, xd, bsums from x (all flat, contiguous) as ggml's quantize_row_q8_K_ref, one LLVM
    loop over the 256-value blocks (a plain numba loop ran scalar: ~8 us for 2048 values, a tenth
    of a 640 x 2048 mat-vec). Per block, the 256 values as 16 zmm v[0..15]:

        amax = max |x|;  top = x[first i with |x[i]| == amax]   (NaN never wins, as `ax > amax`)
        iscale = -127 / top  (0 if amax == 0: codes 0, d 0)
        q = min(127, nearest_int(iscale * x))   ggml's: mantissa bits of (v + 1.5 * 2^23), half to even
        d = 1 / iscale
        bsums: v[j] holds group j of 16; four rounds of "pair sums of a ++ pair sums of b" fold
               the 16 vectors into one whose lane j is the sum of group j.
    """
    if not (all(isinstance(a, types.Array) for a in (x, xq, xd, bsums)) and isinstance(n_blocks, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        tys = signature.args
        v16f, v16i32, v16i8 = vector(F32, 16), vector(I32, 16), vector(I8, 16)
        x_p, xq_p, xd_p, bs_p = (data_ptr(context, builder, tys[k], args[k]) for k in range(4))
        nb = as_i64(context, builder, args[4], tys[4])
        fabs = declare(builder, "llvm.fabs.v16f32", v16f, [v16f])

        def vmax(a, c):
            return builder.call(declare(builder, f"llvm.maxnum.v{a.type.count}f32", a.type, [a.type] * 2), [a, c])

        def block(b, _):
            xb = builder.gep(x_p, [builder.mul(b, i64(QK_K))])
            v = [load_at(builder, xb, i64(16 * j), v16f, align=4) for j in range(16)]
            mags = [builder.call(fabs, [vj]) for vj in v]
            amax = tree_reduce(builder, pairwise(mags, vmax), vmax)
            amax_v = splat(builder, amax, 16)
            first = None
            for j in range(16):  # lowest index where |x| == amax (256: none)
                hit = builder.fcmp_ordered("==", mags[j], amax_v)
                cand = builder.select(hit, indices(range(16 * j, 16 * j + 16)), indices([QK_K] * 16))
                first = cand if first is None else builder.select(builder.icmp_signed("<", cand, first), cand, first)
            first_i = tree_reduce(builder, first, lambda a, c: builder.select(builder.icmp_signed("<", a, c), a, c))
            # as ggml's `if (!amax)`; also all-NaN (amax NaN, no index found): not > 0
            is_zero = builder.not_(builder.fcmp_ordered(">", amax, ir.Constant(F32, 0.0)))
            top_i = builder.zext(builder.select(is_zero, ir.Constant(I32, 0), first_i), I64)
            top = builder.load(builder.gep(xb, [top_i]))
            iscale = builder.select(is_zero, ir.Constant(F32, 0.0), builder.fdiv(ir.Constant(F32, -127.0), top))
            d = builder.select(is_zero, ir.Constant(F32, 0.0), builder.fdiv(ir.Constant(F32, 1.0), iscale))
            builder.store(d, builder.gep(xd_p, [b]))
            iscale_v = splat(builder, iscale, 16)
            qb = builder.gep(xq_p, [builder.mul(b, i64(QK_K))])
            cap = const_vector(I32, [127] * 16)
            groups = []
            for j in range(16):
                # ggml's nearest_int: the float's mantissa after adding 1.5 * 2^23 (NaN -> 0, as ggml)
                shifted = builder.fadd(builder.fmul(iscale_v, v[j]), ir.Constant(v16f, [12582912.0] * 16))
                q = builder.sub(builder.and_(builder.bitcast(shifted, v16i32), const_vector(I32, [0x007FFFFF] * 16)),
                                const_vector(I32, [0x00400000] * 16))
                q = builder.select(builder.icmp_signed(">", q, cap), cap, q)
                builder.store(builder.trunc(q, v16i8),
                              builder.bitcast(builder.gep(qb, [i64(16 * j)]), v16i8.as_pointer()), align=1)
                groups.append(q)
            while len(groups) > 1:  # lane j of the result = sum of groups[j]
                groups = [builder.add(builder.shuffle_vector(a, c, indices(range(0, 32, 2))),
                                      builder.shuffle_vector(a, c, indices(range(1, 32, 2))))
                          for a, c in zip(groups[0::2], groups[1::2])]
            builder.store(groups[0], builder.bitcast(builder.gep(bs_p, [builder.mul(b, i64(16))]), v16i32.as_pointer()),
                          align=4)
            return []

        carried_loop(builder, "q8k", nb, [], block)
        return context.get_dummy_value()

    return types.void(x, xq, xd, bsums, n_blocks), codegen


# ---------------------------------------------------------------------------------------------
# The rows below share the signature of `row_dot_k_int8` (row, xq, xd, bsums, n_blocks, kind, out,
# r, t0, n_t) and their loop (llvm_ir.block_loop): per group of columns one LLVM loop over a row's
# super-blocks, one block per trip, each block decoded once and dotted with every column of the
# group, whose float accumulators are carried in registers; a tree sum per column at the end.
# ---------------------------------------------------------------------------------------------
class _Activations(NamedTuple):
    """Pointers to one column's Q8_K activations: xq (i8*), xd (float*), bsums (i32*)."""
    xq: ir.Value
    xd: ir.Value
    bsums: ir.Value


def row_of_blocks(context, builder, signature, args, *, name, block_bytes, prefetch_lines, inits, body, finish):
    """llvm_ir.block_loop over the row intrinsic's arguments; body(b, base, columns, accs) gets
    each column's `_Activations`."""
    tys = signature.args

    def activations(t):
        xq = builder.bitcast(row_ptr(context, builder, tys[1], args[1], t), I8_PTR)
        return _Activations(xq, row_ptr(context, builder, tys[2], args[2], t),
                            row_ptr(context, builder, tys[3], args[3], t))

    def pointers(t0, count):
        return [activations(builder.add(t0, i64(i))) for i in range(count)]

    block_loop(context, builder, name=name, row=builder.bitcast(data_ptr(context, builder, tys[0], args[0]), I8_PTR),
               n_blocks=as_i64(context, builder, args[4], tys[4]), block_bytes=block_bytes,
               prefetch_lines=prefetch_lines, columns=((tys[8], args[8]), (tys[9], args[9])), group=INT8_K_GROUP,
               pointers=pointers, inits=inits, body=body, finish=finish,
               out=(tys[6], args[6], as_i64(context, builder, args[7], tys[7])))


def shifted_pair(builder, v32, shift_lo, shift_hi, left):
    """<64 x i8>: the 32 bytes v32 shifted by shift_lo (first half) ++ by shift_hi (second
    half). As 16-bit words (vpsllvw/vpsrlvw; AVX-512 has no byte shifts): bits cross into the
    neighbour byte, so callers mask afterwards."""
    words = builder.bitcast(v32, vector(I16, 16))
    both = builder.shuffle_vector(words, words, indices(list(range(16)) * 2))
    amounts = const_vector(I16, [shift_lo] * 16 + [shift_hi] * 16)
    shifted = builder.shl(both, amounts) if left else builder.lshr(both, amounts)
    return builder.bitcast(shifted, vector(I8, 64))


def dot_scaled(builder, acc, u, s, scale_src, lane_scale):
    """acc <16 x i32> + per lane k: scale_src[lane_scale[k]] * (sum of 4 adjacent u8 * s8
    products), for u, s <64 x i8> and scale_src an i32 vector.

    VNNI CPUs: vpmaddubsw (u8 * s8 pairs -> 32 x i16), the scales as i16, then vpdpwssd (pairs *
    scales summed into acc; llvmlite's LLVM 22 emits vpmaddwd + vpaddd for it here). Valid while
    a pair of products fits int16 (no saturation): u <= 63, |s| <= 127 gives <= 16002. Against
    vpdpbusd + a vpermd of the scales + vpmulld (2 uops) + vpaddd: Q6_K ~10 % faster on the
    demo's 640 x 2048 matrices (one thread, one process)."""
    v16i32 = vector(I32, 16)
    if HAS_VNNI or HAS_AVX2:
        src16 = builder.trunc(scale_src, vector(I16, scale_src.type.count))
        sc16 = builder.shuffle_vector(src16, src16, indices([lane_scale[k // 2] for k in range(32)]))
        if HAS_AVX2:  # vpmaddubsw, then vpmaddwd with the scales and an add
            return builder.add(acc, madd_pairs(builder, maddubs(builder, u, s), sc16))
        madd = declare(builder, "llvm.x86.avx512.pmaddubs.w.512", vector(I16, 32), [vector(I8, 64)] * 2)
        pairs = builder.call(madd, [u, s])
        dpwssd = declare(builder, "llvm.x86.avx512.vpdpwssd.512", v16i32, [v16i32] * 3)
        return builder.call(dpwssd, [acc, builder.bitcast(pairs, v16i32), builder.bitcast(sc16, v16i32)])
    dots = dot_u8_s8(builder, ir.Constant(v16i32, [0] * 16), u, s)  # its generic form here
    scales = builder.shuffle_vector(scale_src, scale_src, indices(lane_scale))
    return builder.add(acc, builder.mul(dots, scales))


# ---------------------------------------------------------------------------------------------
# Q4_K: 144 bytes, 256 weights in 8 sub-blocks of 32
#   byte 0    2      4            16                                 144
#        | d  | dmin | scales[12] | qs[128]                          |
#   group g < 4 = qs[32g .. 32g+31]: low nibbles = sub-block 2g, high nibbles = 2g+1.
#   One zmm k < 4 takes bytes 8k .. 8k+7 of every sub-block (8-byte word w of qs = 4g + k):
#
#       u_k (64 x u8) = lo(w 0) hi(w 0) lo(w 4) hi(w 4) lo(w 8) hi(w 8) lo(w 12) hi(w 12)  (+k)
#                       \ sub 0 / \ sub 1 / \ sub 2 / ...                    \ sub 7 /
#       (vpermt2q of qs's two zmm, then int8.nibbles: one GFNI vgf2p8affineqb with the low- or
#       high-nibble matrix per qword, where the CPU has it, else vpsrlvw by 0/4 per word and & 15.
#       1B-shaped ffn_gate, 1 thread, in cache: 23.2 -> 25.2 GB/s; a 1B token 38.6-39.1 -> 35.6-36.3 ms)
#       . xq interleaved the same way (`interleave_for_q4_k`: word 8k + s <- word 4s + k)
#       -> lanes 2s, 2s+1 belong to sub-block s for every k, so the four vpdpbusd accumulate
#          into one register and the scales multiply once per block: iacc * (sc[s] x2)
#   (the natural order, a zmm per group g = sub-blocks 2g and 2g+1, needs a scale multiply per
#   zmm: ~10 % slower on the demo's ffn_down in a noisy A/B)
#
#   6-bit scales/mins in 12 bytes, unpacked as two <8 x i32> (simd.q4_k_scales_mins).
#
# Q4_K in the kernel's order (`q4_k_kernel_order`: layer matrices repacked at load), 148 bytes, the
# bytes as the loop reads them - no vpermt2q, no 6-bit unpacking:
#   byte 0      4           12         20                     84                     148
#        | d dmin | scales[8] | mins[8] | u_0 | u_1 << 4  (64) | u_2 | u_3 << 4  (64) |
#
# Q5_K: 176 bytes, 256 weights in 8 sub-blocks of 32; Q4_K plus a 5th bit per weight
#   byte 0    2      4            16        48                       176
#        | d  | dmin | scales[12] | qh[32]  | qs[128]                |
#   code u = nibble (as Q4_K, qs at 48) | bit s of qh[l] << 4 for weight l of sub-block s: 0..31
#   zmm k < 4 holds bytes l = 8k .. 8k+7 of every sub-block s (Q4_K's order, same interleaved xq):
#
#       qh word k (qh[8k .. 8k+7]) x8:  | qhk | qhk | ... | qhk |      8-byte word s of the zmm
#       bit s of word s's bytes moved to bit 4 (int8.bit_moved: one vgf2p8affineqb with GFNI,
#       else & (1 << s), != 0 -> 16 by vptestmb + masked move), | the nibbles
#
#   u <= 31 stays unsigned, so vpdpbusd needs nothing more; mins and bsums exactly as Q4_K.
# ---------------------------------------------------------------------------------------------
Q4_K_KERNEL_ORDER_BYTES = 148


def _q4_k_like_codegen(block_bytes: int, qs_offset: int, qh_offset: int | None, name: str,
                       kernel_order: bool = False):
    """Code for a Q4_K-shaped row: Q4_K (no qh) or Q5_K (a 5th bit per weight from the 32 qh bytes
    at qh_offset). xq comes in `interleave_for_q4_k`'s order and `bsums` are the sums of xq per
    32-value sub-block (int32 (B, n/32), `sub_block_sums`)."""

    def codegen(context, builder, signature, args):
        v16i32, v8i32, v8i64 = vector(I32, 16), vector(I32, 8), vector(I64, 8)
        v64i8 = vector(I8, 64)

        def body(blk, base, cols, accs):
            if kernel_order:  # `q4_k_kernel_order`'s blocks: the scales and mins as bytes
                scales = builder.zext(load_at(builder, base, i64(4), vector(I8, 8)), v8i32)
                mins = builder.zext(load_at(builder, base, i64(12), vector(I8, 8)), v8i32)
            else:
                scales, mins = q4_k_scales_mins(builder, base)
            qs_words = [load_at(builder, base, i64(qs_offset + 64 * h), v8i64) for h in range(2)]
            qh = load_at(builder, base, i64(qh_offset), vector(I64, 4)) if qh_offset is not None else None
            codes = []
            for k in range(4):
                if kernel_order:  # u_k: the low (k even) or high (k odd) nibbles of zmm k // 2
                    u = nibbles(builder, builder.bitcast(qs_words[k // 2], v64i8), [k % 2 == 1] * 8)
                else:
                    # qwords 4g + k (g < 4) of qs, each twice: low nibbles of the first copy, high of the second
                    picked = builder.shuffle_vector(qs_words[0], qs_words[1],
                                                    indices([4 * g + k for g in range(4) for _ in range(2)]))
                    u = nibbles(builder, builder.bitcast(picked, v64i8), [q % 2 == 1 for q in range(8)])
                if qh is not None:  # + 16 where bit s of the weight's qh byte is set
                    qh_k = builder.bitcast(builder.shuffle_vector(qh, qh, indices([k] * 8)), v64i8)
                    u = builder.or_(u, bit_moved(builder, qh_k, range(8), 4))
                codes.append(u)
            lane_scales = builder.shuffle_vector(scales, ir.Constant(scales.type, ir.Undefined),
                                                 indices([j // 2 for j in range(16)]))
            # d and dmin side by side: one conversion and one multiply by d_x for both per column
            d_pair = builder.fpext(load_at(builder, base, i64(0), vector(F16, 2)), vector(F32, 2))
            new = []
            for col, acc, acc_min in zip(cols, accs[0::2], accs[1::2]):
                xs = builder.gep(col.xq, [builder.mul(blk, i64(QK_K))])
                iacc = ir.Constant(v16i32, [0] * 16)
                for k, u in enumerate(codes):
                    iacc = dot_u8_s8(builder, iacc, u, load_at(builder, xs, i64(64 * k), v64i8), 31)
                iacc = builder.mul(iacc, lane_scales)
                # sum_s m_s * (sum of xq over sub-block s)
                min_dots = builder.mul(mins, load_at(builder, col.bsums, builder.mul(blk, i64(8)), v8i32, align=4))
                scaled = builder.fmul(d_pair, splat(builder, builder.load(builder.gep(col.xd, [blk])), 2))
                d, dmin = (builder.extract_element(scaled, ir.Constant(I32, k)) for k in range(2))
                new.append(call_fma(builder, builder.sitofp(iacc, vector(F32, 16)), splat(builder, d, 16), acc))
                new.append(call_fma(builder, builder.sitofp(min_dots, vector(F32, 8)), splat(builder, dmin, 8),
                                    acc_min))
            return new

        row_of_blocks(context, builder, signature, args, name=name, block_bytes=block_bytes, prefetch_lines=3,
                       inits=[ir.Constant(vector(F32, 16), [0.0] * 16), ir.Constant(vector(F32, 8), [0.0] * 8)],
                       body=body, finish=lambda accs: builder.fsub(float_tree_sum(builder, accs[0]),
                                                                   float_tree_sum(builder, accs[1])))
        return context.get_dummy_value()

    return codegen


# ---------------------------------------------------------------------------------------------
# Q6_K: 210 bytes, 256 weights in 16 sub-blocks of 16
#   byte 0                  128             192               208  210
#        | ql[128]          | qh[64]        | scales[16] int8 | d  |
#   half n < 2: QL = ql[64n .. 64n+63], H = qh[32n .. 32n+31] hold weights 128n .. 128n+127:
#
#       u_a (64 x u8) = QL & 15  | (H & 3 ++ H >> 2 & 3) << 4          weights 128n      .. +63
#       u_b (64 x u8) = QL >> 4  | (H >> 4 & 3 ++ H >> 6) << 4          weights 128n + 64 .. +63
#       . xq[256b + 128n (+64) .. +63], as 16 int32 lanes of 4 products, 4 lanes per sub-block:
#       lanes 4i..4i+3 = sub-block 8n + i (u_a) or 8n + 4 + i (u_b)
#       iacc += lanes * (sc[s] x4 for its 4 sub-blocks)         sc sign-extended int8
#       (vpmaddubsw then vpdpwssd with the scales as int16: `dot_scaled`, fused)
#   weight = u - 32:  iacc starts at -32 * sc[s] * bsums[s] (lane s).
# ---------------------------------------------------------------------------------------------
def _q6_k_codegen(context, builder, signature, args):
    """Code for a Q6_K row (bsums int32 (B, n/16) as `quantize_q8_k_into` makes them)."""
    v16i32 = vector(I32, 16)
    v16i8, v32i8, v64i8 = vector(I8, 16), vector(I8, 32), vector(I8, 64)
    low4, two_bits = const_vector(I8, [15] * 64), const_vector(I8, [0x30] * 64)

    def body(blk, base, cols, accs):
        sc = builder.sext(load_at(builder, base, i64(192), v16i8), v16i32)
        codes = []  # (u, offset of its 64 activations in the block, lane -> sub-block)
        for n in range(2):
            ql = load_at(builder, base, i64(64 * n), v64i8)
            h = load_at(builder, base, i64(128 + 32 * n), v32i8)
            # bits 2j, 2j+1 of H moved to bits 4, 5: j=0 << 4, j=1 << 2, j=2 as is, j=3 >> 2
            high_a = builder.and_(shifted_pair(builder, h, 4, 2, left=True), two_bits)
            high_b = builder.and_(shifted_pair(builder, h, 0, 2, left=False), two_bits)
            u_a = builder.or_(builder.and_(ql, low4), high_a)
            u_b = builder.or_(builder.and_(builder.lshr(ql, const_vector(I8, [4] * 64)), low4), high_b)
            for half, u in enumerate((u_a, u_b)):
                codes.append((u, 128 * n + 64 * half, [8 * n + 4 * half + i // 4 for i in range(16)]))
        d_w = load_half(builder, base, 208)
        new = []
        for col, acc in zip(cols, accs):
            bs = load_at(builder, col.bsums, builder.mul(blk, i64(16)), v16i32, align=4)
            iacc = builder.sub(ir.Constant(v16i32, [0] * 16),
                               builder.shl(builder.mul(sc, bs), const_vector(I32, [5] * 16)))
            xs = builder.gep(col.xq, [builder.mul(blk, i64(QK_K))])
            for u, offset, lane_scale in codes:
                iacc = dot_scaled(builder, iacc, u, load_at(builder, xs, i64(offset), v64i8), sc, lane_scale)
            d = builder.fmul(d_w, builder.load(builder.gep(col.xd, [blk])))
            new.append(call_fma(builder, builder.sitofp(iacc, vector(F32, 16)), splat(builder, d, 16), acc))
        return new

    row_of_blocks(context, builder, signature, args, name="q6k_int8", block_bytes=210, prefetch_lines=4,
                   inits=[ir.Constant(vector(F32, 16), [0.0] * 16)], body=body,
                   finish=lambda accs: float_tree_sum(builder, accs[0]))
    return context.get_dummy_value()


# ---------------------------------------------------------------------------------------------
# IQ4_XS: 136 bytes, 256 weights in 8 sub-blocks of 32 (kquants.py has the float kernel)
#   byte 0    2              4             8                         136
#        | d  | scales_h u16 | scales_l[4] | qs[128]                 |
#   sub-block s: 16 bytes qs[16s ..]: low nibble = weight j, high nibble = weight 16 + j;
#   ls_s = (scales_l as u32 >> 4s) & 15 | ((scales_h >> 2s) & 3) << 4, scale ls_s - 32
#   One zmm k < 4 takes weights 8k .. 8k+7 of every sub-block, as Q4_K's (same interleaved xq):
#
#       qword 2s + (k & 1) of qs (bytes 8(k&1) .. of sub-block s), for s < 8, nibble k >> 1
#       u_k = lookup16(IQ4 grid + 128, those nibbles)         (one vpshufb)
#       -> lanes 2s, 2s+1 belong to sub-block s for every k: one integer accumulator a block,
#          lane l started at -128 * lane_sums[16b + l], times (ls_s - 32) x2 once
# ---------------------------------------------------------------------------------------------
def _iq4_xs_codegen(context, builder, signature, args):
    """Code for an IQ4_XS row (xq in `interleave_for_q4_k`'s order, `bsums` its `lane_sums`)."""
    v16i32, v8i32, v8i64, v64i8 = vector(I32, 16), vector(I32, 8), vector(I64, 8), vector(I8, 64)
    zero = ir.Constant(v16i32, [0] * 16)
    sign_bit = const_vector(I8, [0x80] * 64)

    def body(blk, base, cols, accs):
        qs_words = [load_at(builder, base, i64(8 + 64 * h), v8i64) for h in range(2)]
        codes = []
        for k in range(4):
            picked = builder.bitcast(builder.shuffle_vector(qs_words[0], qs_words[1],
                                                            indices([2 * s + (k & 1) for s in range(8)])), v64i8)
            codes.append(lookup16(builder, IQ4_CODES, nibbles(builder, picked, [k >> 1 == 1] * 8)))
        low = builder.lshr(splat(builder, load_at(builder, base, i64(4), I32), 8), indices(range(0, 32, 4)))
        high = builder.lshr(splat(builder, builder.zext(load_at(builder, base, i64(2), I16), I32), 8),
                            indices(range(0, 16, 2)))
        scales = builder.sub(builder.or_(builder.and_(low, const_vector(I32, [15] * 8)),
                                         builder.shl(builder.and_(high, const_vector(I32, [3] * 8)),
                                                     const_vector(I32, [4] * 8))),
                             const_vector(I32, [32] * 8))
        lane_scales = builder.shuffle_vector(scales, ir.Constant(v8i32, ir.Undefined),
                                             indices([j // 2 for j in range(16)]))
        d_w = load_half(builder, base, 0)
        new = []
        signed = [builder.xor(u, sign_bit) for u in codes] if HAS_AVX2 else None  # the grid values
        for col, acc in zip(cols, accs):
            xs = builder.gep(col.xq, [builder.mul(blk, i64(QK_K))])
            if HAS_AVX2:  # u up to 241, too big for vpmaddubsw: the signed weights, no offset
                iacc = zero
                for k, w in enumerate(signed):
                    iacc = dot_s8_s8(builder, iacc, w, load_at(builder, xs, i64(64 * k), v64i8))
            else:
                sums = load_at(builder, col.bsums, builder.mul(blk, i64(16)), v16i32, align=4)
                iacc = builder.sub(zero, builder.shl(sums, const_vector(I32, [7] * 16)))  # -128 * the lane's xq
                for k, u in enumerate(codes):
                    iacc = dot_u8_s8(builder, iacc, u, load_at(builder, xs, i64(64 * k), v64i8))
            iacc = builder.mul(iacc, lane_scales)
            d = builder.fmul(d_w, builder.load(builder.gep(col.xd, [blk])))
            new.append(call_fma(builder, builder.sitofp(iacc, vector(F32, 16)), splat(builder, d, 16), acc))
        return new

    row_of_blocks(context, builder, signature, args, name="iq4xs_int8", block_bytes=136, prefetch_lines=3,
                   inits=[ir.Constant(vector(F32, 16), [0.0] * 16)], body=body,
                   finish=lambda accs: float_tree_sum(builder, accs[0]))
    return context.get_dummy_value()


# ---------------------------------------------------------------------------------------------
# Q2_K: 84 bytes, 256 weights in 16 sub-blocks of 16 (kquants.py has the float kernel)
#   byte 0             16                          80    82     84
#        | scales[16]  | qs[64]                    | d   | dmin |
#   scales[s]: low nibble sc_s, high nibble m_s; sub-block s = 8n + 2j + h, its weight l < 16:
#        u = (qs[32n + 16h + l] >> 2j) & 3  (0..3)          w = d sc_s u - dmin m_s
#
# Q3_K: 110 bytes, 256 weights in 16 sub-blocks of 16
#   byte 0           32                 96           108  110
#        | hmask[32] | qs[64]           | scales[12] | d  |
#        u = (qs[32n + 16h + l] >> 2j) & 3 | (bit 4n + j of hmask[16h + l]) << 2  (0..7)
#        w = d (sc_s - 32) (u - 4),   sc_s 6 bits (`q3_k_scales`; quants.kquants.q3_k_scale_bits)
#
# One int32 lane per sub-block: zmm k < 4 holds weights 4k .. 4k+3 of every sub-block, lane s =
# sub-block s, whose 4 bytes are qs dword 8n + 4h + k shifted right by 2j (vpermd, vpsrlvd, & 3s):
#
#       lane (sub-block s)   0    1    2    3    4    5    6    7    8    9   ...  15
#       qs dword             k   4+k   k   4+k   k   4+k   k   4+k  8+k 12+k  ... 12+k
#       shift 2j             0    0    2    2    4    4    6    6    0    0   ...   6
#   Q3_K:  | 4 where bit 4n + j of the bytes of hmask dword 4h + k is set (vptestmb, masked or)
#   . xq interleaved the same way (`interleave_for_q2_k`: dword 16k + s <- dword 4s + k)
#   -> four vpdpbusd into one accumulator whose lane s is u_s . xq_s, exact; then per block
#   Q2_K:  acc += float(iacc * sc) * (d_w d_x),  acc_m += float(m * bsums) * (dmin_w d_x);  out = acc - acc_m
#   Q3_K:  iacc starts at -4 * bsums (w = u - 4);   acc += float(iacc * (sc - 32)) * (d_w d_x)
#   (ggml's integer sums per super-block, `ggml_vec_dot_q2_K_q8_K` / `_q3_K_q8_K`; |lane| < 2^24)
# ---------------------------------------------------------------------------------------------
def q3_k_scales(builder, base, offset):
    """The 16 signed scales sc_s - 32 of the Q3_K block at `base` (i8*; the 12 scale bytes at
    `offset`), <16 x i32>: each scale's low 4 and top 2 bits gathered by one shuffle and shift
    each, their bytes and shifts from quants.kquants.q3_k_scale_bits (the layout's one description)."""
    packed = builder.zext(load_at(builder, base, i64(offset), vector(I8, 12)), vector(I32, 12))
    undef = ir.Constant(packed.type, ir.Undefined)
    low_byte, low_shift, top_byte, top_shift = zip(*(q3_k_scale_bits(s) for s in range(16)))
    low = builder.and_(builder.lshr(builder.shuffle_vector(packed, undef, indices(low_byte)),
                                    const_vector(I32, low_shift)), const_vector(I32, [15] * 16))
    top = builder.and_(builder.lshr(builder.shuffle_vector(packed, undef, indices(top_byte)),
                                    const_vector(I32, top_shift)), const_vector(I32, [3] * 16))
    return builder.sub(builder.or_(low, builder.shl(top, const_vector(I32, [4] * 16))), const_vector(I32, [32] * 16))


def _q2_k_codes(builder, base, qs_offset, hmask_offset):
    """The four <64 x i8> code vectors of a Q2_K (hmask_offset None) or Q3_K block (diagram above)."""
    v16i32, v64i8 = vector(I32, 16), vector(I8, 64)
    qs = load_at(builder, base, i64(qs_offset), v16i32)
    undef = ir.Constant(v16i32, ir.Undefined)
    shifts = const_vector(I32, [2 * ((s >> 1) & 3) for s in range(16)])
    two_bits = const_vector(I32, [0x03030303] * 16)
    if hmask_offset is not None:
        hmask = load_at(builder, base, i64(hmask_offset), vector(I32, 8))
        # byte i of lane s tests bit 4n + j (as a signed byte: bit 7 is -128)
        bit = [1 << (4 * (s >> 3) + ((s >> 1) & 3)) for s in range(16) for _ in range(4)]
        bit = const_vector(I8, [b - 256 if b > 127 else b for b in bit])
        zero, four = ir.Constant(v64i8, [0] * 64), ir.Constant(v64i8, [4] * 64)
    codes = []
    for k in range(4):
        picked = builder.shuffle_vector(qs, undef, indices([8 * (s >> 3) + 4 * (s & 1) + k for s in range(16)]))
        u = builder.bitcast(builder.and_(builder.lshr(picked, shifts), two_bits), v64i8)
        if hmask_offset is not None:
            high = builder.bitcast(builder.shuffle_vector(hmask, ir.Constant(hmask.type, ir.Undefined),
                                                          indices([4 * (s & 1) + k for s in range(16)])), v64i8)
            has_bit = builder.icmp_unsigned("!=", builder.and_(high, bit), zero)
            u = builder.or_(u, builder.select(has_bit, four, zero))
        codes.append(u)
    return codes


def _q2_k_codegen(context, builder, signature, args):
    """Code for a Q2_K row (xq in `interleave_for_q2_k`'s order, bsums per 16 as Q8_K has them)."""
    v16i32, v16f = vector(I32, 16), vector(F32, 16)

    def body(blk, base, cols, accs):
        codes = _q2_k_codes(builder, base, 16, None)
        packed = builder.zext(load_at(builder, base, i64(0), vector(I8, 16)), v16i32)
        scales = builder.and_(packed, const_vector(I32, [15] * 16))
        mins = builder.lshr(packed, const_vector(I32, [4] * 16))
        d_w, dmin_w = load_half(builder, base, 80), load_half(builder, base, 82)
        new = []
        for col, acc, acc_min in zip(cols, accs[0::2], accs[1::2]):
            xs = builder.gep(col.xq, [builder.mul(blk, i64(QK_K))])
            iacc = ir.Constant(v16i32, [0] * 16)
            for k, u in enumerate(codes):
                iacc = dot_u8_s8(builder, iacc, u, load_at(builder, xs, i64(64 * k), vector(I8, 64)), 3)
            iacc = builder.mul(iacc, scales)
            bs = load_at(builder, col.bsums, builder.mul(blk, i64(16)), v16i32, align=4)
            xd = builder.load(builder.gep(col.xd, [blk]))
            d, dmin = builder.fmul(d_w, xd), builder.fmul(dmin_w, xd)
            new.append(call_fma(builder, builder.sitofp(iacc, v16f), splat(builder, d, 16), acc))
            new.append(call_fma(builder, builder.sitofp(builder.mul(mins, bs), v16f), splat(builder, dmin, 16),
                                acc_min))
        return new

    row_of_blocks(context, builder, signature, args, name="q2k_int8", block_bytes=84, prefetch_lines=2,
                   inits=[ir.Constant(v16f, [0.0] * 16)] * 2, body=body,
                   finish=lambda accs: builder.fsub(float_tree_sum(builder, accs[0]), float_tree_sum(builder, accs[1])))
    return context.get_dummy_value()


def _q3_k_codegen(context, builder, signature, args):
    """Code for a Q3_K row (xq in `interleave_for_q2_k`'s order, bsums per 16 as Q8_K has them)."""
    v16i32, v16f = vector(I32, 16), vector(F32, 16)

    def body(blk, base, cols, accs):
        codes = _q2_k_codes(builder, base, 32, 0)
        scales = q3_k_scales(builder, base, 96)
        d_w = load_half(builder, base, 108)
        new = []
        for col, acc in zip(cols, accs):
            xs = builder.gep(col.xq, [builder.mul(blk, i64(QK_K))])
            bs = load_at(builder, col.bsums, builder.mul(blk, i64(16)), v16i32, align=4)
            iacc = builder.sub(ir.Constant(v16i32, [0] * 16), builder.shl(bs, const_vector(I32, [2] * 16)))
            for k, u in enumerate(codes):
                iacc = dot_u8_s8(builder, iacc, u, load_at(builder, xs, i64(64 * k), vector(I8, 64)), 7)
            iacc = builder.mul(iacc, scales)
            d = builder.fmul(d_w, builder.load(builder.gep(col.xd, [blk])))
            new.append(call_fma(builder, builder.sitofp(iacc, v16f), splat(builder, d, 16), acc))
        return new

    row_of_blocks(context, builder, signature, args, name="q3k_int8", block_bytes=110, prefetch_lines=2,
                   inits=[ir.Constant(v16f, [0.0] * 16)], body=body,
                   finish=lambda accs: float_tree_sum(builder, accs[0]))
    return context.get_dummy_value()


ROW_CODEGEN = {
    "q4_k": _q4_k_like_codegen(144, 16, None, "q4k_int8"),
    "q4_k_ko": _q4_k_like_codegen(Q4_K_KERNEL_ORDER_BYTES, 20, None, "q4k_ko_int8", kernel_order=True),
    "q5_k": _q4_k_like_codegen(176, 48, 16, "q5k_int8"),
    "q6_k": _q6_k_codegen,
    "iq4_xs": _iq4_xs_codegen,
    "q2_k": _q2_k_codegen,
    "q3_k": _q3_k_codegen,
}


@intrinsic
def row_dot_k_int8(typingctx, row, xq, xd, bsums, n_blocks, kind, out, r, t0, n_t):
    """One row of Q2_K, Q3_K, Q4_K, Q5_K, Q6_K or IQ4_XS super-blocks (`kind` a literal, a key of
    ROW_CODEGEN; row uint8 (n_blocks * block bytes,)) dotted with every column's Q8_K activation blocks (xq int8
    (B, n), xd float32 (B, n/256), bsums int32 from `quantize_q8_k_into`, as each kind's diagram
    above reads them), stored as float32 to out[t, r] (out (B, n_rows))."""
    arrays_ok = all(isinstance(a, types.Array) for a in (row, xq, xd, bsums)) and isinstance(n_blocks, types.Integer)
    if not (arrays_ok and isinstance(kind, types.StringLiteral) and kind.literal_value in ROW_CODEGEN):
        return None
    return types.void(row, xq, xd, bsums, n_blocks, kind, out, r, t0, n_t), ROW_CODEGEN[kind.literal_value]


@njit(inline="always")
def _interleave_words(words, per_block):
    """Per 256-value block of `per_block` words (4 per sub-block): word (per_block / 4) k + s <- word
    4s + k, so that word k of every sub-block sits in one run (one zmm per k)."""
    subs = per_block // 4
    out = np.empty_like(words)
    for b in range(words.size // per_block):
        for k in range(4):
            for s in range(subs):
                out[per_block * b + subs * k + s] = words[per_block * b + 4 * s + k]
    return out


@njit(inline="always")
def interleave_for_q4_k(xq):
    """xq in the order the Q4_K/Q5_K/IQ4_XS rows read it: per block, zmm k < 4 = for each sub-block
    s < 8 its bytes 8k .. 8k+7, i.e. 8-byte word 8k + s <- word 4s + k."""
    return _interleave_words(xq.view(np.int64), 32).view(np.int8)


@njit(inline="always")
def interleave_for_q2_k(xq):
    """xq in the order the Q2_K/Q3_K rows read it: per block, zmm k < 4 = for each sub-block s < 16
    its bytes 4k .. 4k+3, i.e. 4-byte word 16k + s <- word 4s + k."""
    return _interleave_words(xq.view(np.int32), 64).view(np.int8)


@njit(inline="always")
def sub_block_sums(bsums):
    """Q8_K's sums per 16 -> sums per 32 (Q4_K's sub-blocks), once per call rather than per row."""
    out = np.empty(bsums.size // 2, np.int32)
    for j in range(out.size):
        out[j] = bsums[2 * j] + bsums[2 * j + 1]
    return out


@njit(inline="always")
def q8_k_columns(X, word_bytes, per_32):
    """Each activation row of X (B, n) as Q8_K blocks: (xq int8 (B, n), xd float32 (B, n/256),
    sums int32 (B, n/16), or (B, n/32) with per_32); xq in `interleave_for_q4_k`'s order
    (word_bytes 8) or `interleave_for_q2_k`'s (4), or as is (0). The sums are of the blocks in
    their natural order."""
    n_t, n = X.shape
    xq = np.empty((n_t, n), np.int8)
    xd = np.empty((n_t, n // QK_K), np.float32)
    bsums = np.empty((n_t, n // 16), np.int32)
    for t in range(n_t):
        quantize_q8_k_into(X[t], xq[t], xd[t], bsums[t], n // QK_K)
    if word_bytes:
        for t in range(n_t):
            row = interleave_for_q4_k(xq[t]) if word_bytes == 8 else interleave_for_q2_k(xq[t])
            for k in range(n):  # a loop: `xq[t] = row` would be a parallel region of its own
                xq[t, k] = row[k]
    if per_32:
        return xq, xd, sub_block_sums(bsums.reshape(-1)).reshape(n_t, n // 32)
    return xq, xd, bsums


@njit(inline="always")
def lane_sums(xq):
    """int32 (B, n/16): entry 16b + l = the sum of the 16 activations int32 lane l of a 256-value
    block b's integer accumulator multiplies, xq[t, 256b + 64k + 4l + i] for k < 4, i < 4 (four
    bytes a lane in each of the block's four zmm; IQ4_XS here, TQ1_0/TQ2_0 in ternary.py)."""
    n_t, n = xq.shape
    sums = np.empty((n_t, n // 16), np.int32)  # loops, not np.zeros: that is a parallel region of its own
    for t in range(n_t):
        for b in range(n // QK_K):
            for lane in range(16):
                total = np.int32(0)
                for k in range(4):
                    for i in range(4):
                        total += xq[t, QK_K * b + 64 * k + 4 * lane + i]
                sums[t, 16 * b + lane] = total
    return sums


@njit(inline="always")
def _k_int8_rows(blocks, x, out, block_bytes, kind, word_bytes):
    """The Q2_K/Q3_K/Q4_K/Q5_K/Q6_K/IQ4_XS kernels: each activation row quantized once to Q8_K blocks
    (xq interleaved in words of `word_bytes`: 8 for Q4_K, Q5_K and IQ4_XS, with sums per 32 values,
    IQ4_XS its `lane_sums`; 4 for Q2_K and Q3_K; 0 for Q6_K), then every weight row dotted with all
    of them (`row_dot_k_int8`)."""
    X, Y = columns(x, out)
    n_rows, n_blocks = blocks.shape[0], blocks.shape[1]
    xq, xd, sums = q8_k_columns(X, word_bytes, word_bytes == 8 and kind != "iq4_xs")
    if kind == "iq4_xs":
        sums = lane_sums(xq)
    row_dots(blocks.reshape(n_rows, n_blocks * block_bytes), Y, _k_int8_row, kind, (xq, xd, sums, n_blocks))


@njit(inline="always")
def _k_int8_row(row, operands, kind, Y, r, t0, n_t):  # common.row_dots' step
    xq, xd, sums, n_blocks = operands
    row_dot_k_int8(row, xq, xd, sums, n_blocks, kind, Y, r, t0, n_t)


# Same signature as kquants.matvec_q2_k / ... / matvec_q6_k: blocks uint8 (rows, n_blocks, 84 | 110 | 144 |
# 176 | 210), x float32 (n_blocks, 16, 16) | (n_blocks, 16, 16) | (n_blocks, 8, 32) | (n_blocks, 8, 32) |
# (n_blocks, 16, 16), out float32 (rows,).
@njit(parallel=True, cache=True, nogil=True)
def matvec_q2_k_int8(blocks, x, out):
    _k_int8_rows(blocks, x, out, 84, "q2_k", 4)


@njit(parallel=True, cache=True, nogil=True)
def matvec_q3_k_int8(blocks, x, out):
    _k_int8_rows(blocks, x, out, 110, "q3_k", 4)


# One kernel per weight type: `kind` must be a literal for the intrinsic, and numba caches by function.
@njit(parallel=True, cache=True, nogil=True)
def matvec_q4_k_int8(blocks, x, out):
    _k_int8_rows(blocks, x, out, 144, "q4_k", 8)


@njit(parallel=True, cache=True, nogil=True)
def matvec_q4_k_kernel_order(blocks, x, out):  # blocks uint8 (rows, n_blocks, 148): `q4_k_kernel_order`
    _k_int8_rows(blocks, x, out, Q4_K_KERNEL_ORDER_BYTES, "q4_k_ko", 8)


matvec_q4_k_kernel_order_serial = serial_twin(matvec_q4_k_kernel_order)


@njit(parallel=True, cache=True, nogil=True)
def expert_matvecs_q4_k_kernel_order(matrices, X, out):
    """out[i] = matrices[i] . X[i] for a tuple of same-shaped matrices in the kernel's order (a MoE
    token's experts, each (rows, n_blocks, 148)), X float32 (k, n), out (k, rows): each pair the
    bits `matvec_q4_k_kernel_order` gives it alone (its column quantized alone, its rows dotted
    by the same row dot), every expert's row tiles in one parallel region (a region per expert
    left each thread ~0.8 MB to stream and a join to wait at: Qwen1.5-MoE-shaped experts, 4 a
    layer, 2 threads, cold: 167-210 -> 128-152 us a layer's gate)."""
    n_rows, n_blocks = matrices[0].shape[0], matrices[0].shape[1]
    xq, xd, sums = q8_k_columns(X, 8, True)
    n_tiles = (n_rows + ROW_TILE - 1) // ROW_TILE
    for task in prange(X.shape[0] * n_tiles):
        i, tile = task // n_tiles, task % n_tiles
        rows = matrices[i].reshape(n_rows, n_blocks * Q4_K_KERNEL_ORDER_BYTES)
        for r in range(tile * ROW_TILE, min(n_rows, (tile + 1) * ROW_TILE)):
            row_dot_k_int8(rows[r], xq, xd, sums, n_blocks, "q4_k_ko", out, r, i, 1)


expert_matvecs_q4_k_kernel_order_serial = serial_twin(expert_matvecs_q4_k_kernel_order)


@njit(parallel=True, cache=True, nogil=True)
def q4_k_kernel_order(blocks, out):
    """Q4_K blocks (n, 144) uint8 -> out (n, Q4_K_KERNEL_ORDER_BYTES), the same weights in the
    kernel's order (the Q4_K diagrams above): scales / mins the 6-bit values as bytes; u_k the
    kernel's code vectors, byte 8q + b of u_k = nibble q % 2 of qs byte 8 (4 (q // 2) + k) + b.
    The kernel then needs no vpermt2q and no scale unpacking (1B ffn_gate, 1 thread, in cache:
    5.8 -> 4.3 ns a super-block)."""
    for i in prange(blocks.shape[0]):
        src, dst = blocks[i], out[i]
        for j in range(4):
            dst[j] = src[j]
        for j in range(8):
            sc, mn = scale_min_k4(j, src[4:16])
            dst[4 + j] = sc
            dst[12 + j] = mn
        for half in range(2):
            for q in range(8):
                for b in range(8):
                    lo = src[16 + 8 * (4 * (q // 2) + 2 * half) + b]
                    hi = src[16 + 8 * (4 * (q // 2) + 2 * half + 1) + b]
                    shift = 4 * (q % 2)
                    dst[20 + 64 * half + 8 * q + b] = ((lo >> shift) & 15) | (((hi >> shift) & 15) << 4)


@njit(parallel=True, cache=True, nogil=True)
def matvec_q5_k_int8(blocks, x, out):
    _k_int8_rows(blocks, x, out, 176, "q5_k", 8)


@njit(parallel=True, cache=True, nogil=True)
def matvec_q6_k_int8(blocks, x, out):
    _k_int8_rows(blocks, x, out, 210, "q6_k", 0)


@njit(parallel=True, cache=True, nogil=True)
def matvec_iq4_xs_int8(blocks, x, out):  # x float32 (n_blocks, 16, 16), as kquants.matvec_iq4_xs
    _k_int8_rows(blocks, x, out, 136, "iq4_xs", 8)


INT8_KQUANT_MATVECS = {
    GGMLType.Q2_K: matvec_q2_k_int8,
    GGMLType.Q3_K: matvec_q3_k_int8,
    GGMLType.Q4_K: matvec_q4_k_int8,
    GGMLType.Q5_K: matvec_q5_k_int8,
    GGMLType.Q6_K: matvec_q6_k_int8,
    GGMLType.IQ4_XS: matvec_iq4_xs_int8,
}
