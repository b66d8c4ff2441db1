"""One hand-built vector operation for all block formats: `fma_lanes`.

Why: on this numba/LLVM (SLP vectoriser off by default, constant-trip loops fully unrolled first,
unknown aliasing between the accumulator and the weight bytes) the "lanes" loops of kernels.md
compile to scalar code here. This intrinsic emits the vector IR directly, so every format's inner
step is a handful of zmm/ymm instructions whatever LLVM's loop heuristics decide:

    for i in 0..n-1 (n a compile-time literal, 16 or 32):
        lo  = (byte(src, src_off + i) >> shift) & mask          (byte sign-extended if signed)
        hi  = (byte(src2, src2_off + i) >> shift2) & mask2      (src2_bits: bit (shift2 + i) of
                                                                   a 32-bit word at src2_off)
        w   = lo + hi * mul2 + bias
        acc[acc_off + i] += scale * float(w) * x[x_off + i]

`src`, `src2` are flat uint8 arrays (e.g. a row of blocks), `x`, `acc` flat float32 arrays.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic


def _data_ptr(context, builder, aryty, ary):
    return context.make_array(aryty)(context, builder, ary).data


@intrinsic
def fma_lanes(typingctx, acc, acc_off, scale, x, x_off, src, src_off, shift, mask,
              src2, src2_off, shift2, mask2, mul2, bias, n, signed, src2_bits):
    if not (isinstance(n, types.IntegerLiteral) and isinstance(signed, types.BooleanLiteral)
            and isinstance(src2_bits, types.BooleanLiteral)):
        return None
    width = n.literal_value
    is_signed = signed.literal_value
    bits_mode = src2_bits.literal_value
    sig = types.void(acc, acc_off, scale, x, x_off, src, src_off, shift, mask,
                     src2, src2_off, shift2, mask2, mul2, bias, n, signed, src2_bits)

    def codegen(context, builder, signature, args):
        (acc_v, acc_off_v, scale_v, x_v, x_off_v, src_v, src_off_v, shift_v, mask_v,
         src2_v, src2_off_v, shift2_v, mask2_v, mul2_v, bias_v, _, _, _) = args
        i32, i64, f32, i8 = ir.IntType(32), ir.IntType(64), ir.FloatType(), ir.IntType(8)
        v_i32 = ir.VectorType(i32, width)
        v_f32 = ir.VectorType(f32, width)
        v_i8 = ir.VectorType(i8, width)

        def splat(value, vty):
            undef = ir.Constant(vty, ir.Undefined)
            one = builder.insert_element(undef, value, ir.Constant(i32, 0))
            return builder.shuffle_vector(one, undef, ir.Constant(ir.VectorType(i32, width), [0] * width))

        def as_i32(value, ty):
            return context.cast(builder, value, ty, types.int32)

        def as_i64(value, ty):
            return context.cast(builder, value, ty, types.int64)

        def vec_ptr(aryty, ary, off, offty, elem_vty):
            base = _data_ptr(context, builder, aryty, ary)
            p = builder.gep(base, [as_i64(off, offty)], inbounds=True)
            return builder.bitcast(p, elem_vty.as_pointer())

        tys = signature.args
        # first byte source
        qp = vec_ptr(tys[5], src_v, src_off_v, tys[6], v_i8)
        q8 = builder.load(qp, align=1)
        q = builder.sext(q8, v_i32) if is_signed else builder.zext(q8, v_i32)
        q = builder.ashr(q, splat(as_i32(shift_v, tys[7]), v_i32))
        q = builder.and_(q, splat(as_i32(mask_v, tys[8]), v_i32))
        # second source
        if bits_mode:
            wp = builder.gep(_data_ptr(context, builder, tys[9], src2_v), [as_i64(src2_off_v, tys[10])], inbounds=True)
            word = builder.load(builder.bitcast(wp, i32.as_pointer()), align=1)
            lane_shift = builder.add(splat(as_i32(shift2_v, tys[11]), v_i32),
                                     ir.Constant(v_i32, list(range(width))))
            h = builder.lshr(splat(word, v_i32), lane_shift)
        else:
            hp = vec_ptr(tys[9], src2_v, src2_off_v, tys[10], v_i8)
            h = builder.zext(builder.load(hp, align=1), v_i32)
            h = builder.lshr(h, splat(as_i32(shift2_v, tys[11]), v_i32))
        h = builder.and_(h, splat(as_i32(mask2_v, tys[12]), v_i32))
        w = builder.add(q, builder.mul(h, splat(as_i32(mul2_v, tys[13]), v_i32)))
        w = builder.add(w, splat(as_i32(bias_v, tys[14]), v_i32))
        wf = builder.sitofp(w, v_f32)
        s = context.cast(builder, scale_v, tys[2], types.float32)
        xp = vec_ptr(tys[3], x_v, x_off_v, tys[4], v_f32)
        xv = builder.load(xp, align=4)
        ap = vec_ptr(tys[0], acc_v, acc_off_v, tys[1], v_f32)
        av = builder.load(ap, align=4)
        prod = builder.fmul(builder.fmul(wf, splat(s, v_f32)), xv)
        builder.store(builder.fadd(av, prod), ap, align=4)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def lanes_sum(typingctx, acc, n):
    """Sum of acc[0:n] (n a literal power of two) as a tree of vector adds: a plain `acc.sum()`
    is n dependent scalar adds (~4n cycles), which cost more than a 640-wide row's blocks."""
    if not isinstance(n, types.IntegerLiteral):
        return None
    width = n.literal_value
    assert width & (width - 1) == 0

    def codegen(context, builder, signature, args):
        acc_v = args[0]
        f32, i32 = ir.FloatType(), ir.IntType(32)
        ptr = builder.bitcast(_data_ptr(context, builder, signature.args[0], acc_v),
                              ir.VectorType(f32, width).as_pointer())
        vec = builder.load(ptr, align=4)
        size = width
        while size > 1:
            half = size // 2
            undef = ir.Constant(ir.VectorType(f32, size), ir.Undefined)
            lo = builder.shuffle_vector(vec, undef, ir.Constant(ir.VectorType(i32, half), list(range(half))))
            hi = builder.shuffle_vector(vec, undef, ir.Constant(ir.VectorType(i32, half), list(range(half, size))))
            vec = builder.fadd(lo, hi)
            size = half
        return builder.extract_element(vec, ir.Constant(i32, 0))

    return types.float32(acc, n), codegen
