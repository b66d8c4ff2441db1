"""One hand-built vector operation for all block formats: `fma_lanes`.

Why: on this numba/LLVM (SLP vectoriser off by default, constant-trip loops fully unrolled first,
unknown aliasing between the accumulator and the weight bytes) the "lanes" loops of kernels.md
compile to scalar code here. This intrinsic emits the vector IR directly, so every format's inner
step is a handful of zmm/ymm instructions whatever LLVM's loop heuristics decide:

    for i in 0..n-1 (n a compile-time literal, 8, 16 or 32):
        lo  = (byte(src, src_off + i) >> shift) & mask          (byte sign-extended if signed)
              nibbles: n/2 bytes feed n lanes, lane i < n/2 = byte i & 15, lane n/2+i = byte i >> 4
        hi  = (byte(src2, src2_off + i) >> shift2) & mask2      (src2_bits: bit (shift2 + i) of
                                                                   a 32-bit word at src2_off)
        w   = lo + hi * mul2 + bias
        acc[acc_off + i] += s_i * float(w) * x[x_off + i]       s_i = scale (i < n/2), scale2 (i >= n/2)

Two scales let one call cover two 16-weight sub-blocks that sit next to each other (Q2_K, Q3_K,
Q6_K), and the nibble mode lets one call cover a whole 32-weight Q4_0/Q5_0 block.

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
def fma_lanes(typingctx, acc, acc_off, scale, scale2, x, x_off, src, src_off, shift, mask,
              src2, src2_off, shift2, mask2, mul2, bias, n, signed, src2_bits, nibbles):
    flags = (signed, src2_bits, nibbles)
    if not (isinstance(n, types.IntegerLiteral) and all(isinstance(f, types.BooleanLiteral) for f in flags)):
        return None
    width = n.literal_value
    is_signed, bits_mode, nibble_mode = (f.literal_value for f in flags)
    sig = types.void(acc, acc_off, scale, scale2, x, x_off, src, src_off, shift, mask,
                     src2, src2_off, shift2, mask2, mul2, bias, n, signed, src2_bits, nibbles)

    def codegen(context, builder, signature, args):
        (acc_v, acc_off_v, scale_v, scale2_v, x_v, x_off_v, src_v, src_off_v, shift_v, mask_v,
         src2_v, src2_off_v, shift2_v, mask2_v, mul2_v, bias_v) = args[:16]
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
        half = width // 2
        # first byte source
        if nibble_mode:
            v_half = ir.VectorType(i8, half)
            b = builder.zext(builder.load(vec_ptr(tys[6], src_v, src_off_v, tys[7], v_half), align=1),
                             ir.VectorType(i32, half))
            both = builder.shuffle_vector(b, b, ir.Constant(v_i32, list(range(half)) * 2))
            shifts = ir.Constant(v_i32, [0] * half + [4] * half)
            q = builder.and_(builder.lshr(both, shifts), ir.Constant(v_i32, [15] * width))
        else:
            q8 = builder.load(vec_ptr(tys[6], src_v, src_off_v, tys[7], v_i8), align=1)
            q = builder.sext(q8, v_i32) if is_signed else builder.zext(q8, v_i32)
            q = builder.ashr(q, splat(as_i32(shift_v, tys[8]), v_i32))
            q = builder.and_(q, splat(as_i32(mask_v, tys[9]), v_i32))
        # second source
        if bits_mode:
            wp = builder.gep(_data_ptr(context, builder, tys[10], src2_v), [as_i64(src2_off_v, tys[11])],
                             inbounds=True)
            word = builder.load(builder.bitcast(wp, i32.as_pointer()), align=1)
            lane_shift = builder.add(splat(as_i32(shift2_v, tys[12]), v_i32),
                                     ir.Constant(v_i32, list(range(width))))
            h = builder.lshr(splat(word, v_i32), lane_shift)
        else:
            hp = vec_ptr(tys[10], src2_v, src2_off_v, tys[11], v_i8)
            h = builder.zext(builder.load(hp, align=1), v_i32)
            h = builder.lshr(h, splat(as_i32(shift2_v, tys[12]), v_i32))
        h = builder.and_(h, splat(as_i32(mask2_v, tys[13]), v_i32))
        w = builder.add(q, builder.mul(h, splat(as_i32(mul2_v, tys[14]), v_i32)))
        w = builder.add(w, splat(as_i32(bias_v, tys[15]), v_i32))
        wf = builder.sitofp(w, v_f32)
        s1 = splat(context.cast(builder, scale_v, tys[2], types.float32), v_f32)
        s2 = splat(context.cast(builder, scale2_v, tys[3], types.float32), v_f32)
        first_half_of_each = list(range(half)) + list(range(width, width + half))
        scales = builder.shuffle_vector(s1, s2, ir.Constant(v_i32, first_half_of_each))
        xv = builder.load(vec_ptr(tys[4], x_v, x_off_v, tys[5], v_f32), align=4)
        ap = vec_ptr(tys[0], acc_v, acc_off_v, tys[1], v_f32)
        av = builder.load(ap, align=4)
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(v_f32, [v_f32] * 3),
                                             f"llvm.fma.v{width}f32")
        builder.store(builder.call(fma, [builder.fmul(wf, scales), xv, av]), ap, align=4)
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


@intrinsic
def gemm_micro(typingctx, x, t0, n_t, wt, c0, out, col0, n_k):
    """out[t0 + i, col0 + c0 + j] = sum_k x[t0 + i, k] * wt[k, c0 + j]   for i < n_t, j < 32.

    n_t is a literal (1..6). wt is the decoded weight tile transposed (k-major), so one k step is
    2 zmm loads of wt, n_t broadcasts of x and 2*n_t FMAs into accumulators that live in
    registers for the whole k loop (an explicit LLVM loop: no horizontal sums, unlike a dot-product
    GEMM). x (T, K), wt (K, R), out (T, N) are C-contiguous float32.
    """
    if not isinstance(n_t, types.IntegerLiteral):
        return None
    rows = n_t.literal_value
    sig = types.void(x, t0, n_t, wt, c0, out, col0, n_k)

    def codegen(context, builder, signature, args):
        x_v, t0_v, _, wt_v, c0_v, out_v, col0_v, n_k_v = args
        tys = signature.args
        f32, i32, i64 = ir.FloatType(), ir.IntType(32), ir.IntType(64)
        v16 = ir.VectorType(f32, 16)

        def cast64(v, ty):
            return context.cast(builder, v, ty, types.int64)

        xa = context.make_array(tys[0])(context, builder, x_v)
        wa = context.make_array(tys[3])(context, builder, wt_v)
        oa = context.make_array(tys[5])(context, builder, out_v)
        x_stride = builder.extract_value(xa.strides, 0)     # bytes per x row
        w_stride = builder.extract_value(wa.strides, 0)     # bytes per wt row
        o_stride = builder.extract_value(oa.strides, 0)
        i8p = ir.IntType(8).as_pointer()
        t0_64, c0_64, col0_64, n_k64 = (cast64(args[1], tys[1]), cast64(args[4], tys[4]),
                                       cast64(args[6], tys[6]), cast64(args[7], tys[7]))
        x_base = builder.bitcast(xa.data, i8p)
        x_rows = [builder.bitcast(builder.gep(x_base, [builder.mul(builder.add(t0_64, ir.Constant(i64, i)), x_stride)]),
                                  f32.as_pointer()) for i in range(rows)]
        w_col = builder.gep(wa.data, [c0_64])  # &wt[0, c0]
        zero = ir.Constant(v16, [0.0] * 16)

        pre = builder.block
        loop = builder.append_basic_block("gemm_micro.loop")
        done = builder.append_basic_block("gemm_micro.done")
        has_work = builder.icmp_signed(">", n_k64, ir.Constant(i64, 0))
        builder.cbranch(has_work, loop, done)

        builder.position_at_end(loop)
        k = builder.phi(i64)
        k.add_incoming(ir.Constant(i64, 0), pre)
        accs = []
        for _ in range(2 * rows):
            p = builder.phi(v16)
            p.add_incoming(zero, pre)
            accs.append(p)
        w_row = builder.bitcast(builder.gep(builder.bitcast(w_col, i8p), [builder.mul(k, w_stride)]), f32.as_pointer())
        w_lo = builder.load(builder.bitcast(w_row, v16.as_pointer()), align=4)
        w_hi = builder.load(builder.bitcast(builder.gep(w_row, [ir.Constant(i64, 16)]), v16.as_pointer()), align=4)
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(v16, [v16] * 3), "llvm.fma.v16f32")
        new_accs = []
        undef = ir.Constant(v16, ir.Undefined)
        for i in range(rows):
            xs = builder.load(builder.gep(x_rows[i], [k]), align=4)
            xb = builder.shuffle_vector(builder.insert_element(undef, xs, ir.Constant(i32, 0)), undef,
                                        ir.Constant(ir.VectorType(i32, 16), [0] * 16))
            new_accs.append(builder.call(fma, [xb, w_lo, accs[2 * i]]))
            new_accs.append(builder.call(fma, [xb, w_hi, accs[2 * i + 1]]))
        k_next = builder.add(k, ir.Constant(i64, 1))
        k.add_incoming(k_next, loop)
        for p, v in zip(accs, new_accs):
            p.add_incoming(v, loop)
        builder.cbranch(builder.icmp_signed("<", k_next, n_k64), loop, done)

        builder.position_at_end(done)
        results = []
        for v in new_accs:  # all phis first: LLVM wants them at the top of the block
            phi = builder.phi(v16)
            phi.add_incoming(zero, pre)
            phi.add_incoming(v, loop)
            results.append(phi)
        o_base = builder.bitcast(oa.data, i8p)
        for i in range(rows):
            res = results[2 * i: 2 * i + 2]
            row_offset = builder.mul(builder.add(t0_64, ir.Constant(i64, i)), o_stride)
            row_ptr = builder.bitcast(builder.gep(o_base, [row_offset]), f32.as_pointer())
            dst = builder.gep(row_ptr, [builder.add(col0_64, c0_64)])
            builder.store(res[0], builder.bitcast(dst, v16.as_pointer()), align=4)
            builder.store(res[1], builder.bitcast(builder.gep(dst, [ir.Constant(i64, 16)]), v16.as_pointer()), align=4)
        return context.get_dummy_value()

    return sig, codegen


# Legacy formats whose whole row runs as one LLVM loop: block bytes, and how block b's two
# 16-lane halves of integer weights are decoded (see `_decode_halves`).
ROW_DOT_BLOCK_BYTES = {"q8_0": 34, "q4_0": 18, "q5_0": 22}


def _decode_halves(builder, kind, base):
    """(weights 0-15, weights 16-31) of the block at `base` as <16 x i32>."""
    i8, i32, i64 = ir.IntType(8), ir.IntType(32), ir.IntType(64)
    v16i8, v16i32 = ir.VectorType(i8, 16), ir.VectorType(i32, 16)

    def load16(offset):
        return builder.load(builder.bitcast(builder.gep(base, [ir.Constant(i64, offset)]), v16i8.as_pointer()),
                            align=1)

    def splat(value):
        return ir.Constant(v16i32, [value] * 16)

    if kind == "q8_0":
        return builder.sext(load16(2), v16i32), builder.sext(load16(18), v16i32)
    qs = builder.zext(load16(2 if kind == "q4_0" else 6), v16i32)
    lo = builder.and_(qs, splat(15))
    hi = builder.lshr(qs, splat(4))
    if kind == "q4_0":
        return builder.sub(lo, splat(8)), builder.sub(hi, splat(8))
    qh_ptr = builder.bitcast(builder.gep(base, [ir.Constant(i64, 2)]), i32.as_pointer())
    qh = builder.load(qh_ptr, align=1)
    qh_v = builder.shuffle_vector(builder.insert_element(ir.Constant(v16i32, ir.Undefined), qh, ir.Constant(i32, 0)),
                                  ir.Constant(v16i32, ir.Undefined), splat(0))
    halves = []
    for nibble, first_bit in ((lo, 0), (hi, 16)):
        bits = builder.lshr(qh_v, ir.Constant(v16i32, list(range(first_bit, first_bit + 16))))
        fifth = builder.shl(builder.and_(bits, splat(1)), splat(4))
        halves.append(builder.sub(builder.or_(nibble, fifth), splat(16)))
    return tuple(halves)


@intrinsic
def row_dot(typingctx, row, x, n_blocks, kind):
    """sum over blocks b of d_b * sum_k q_bk * x[32b + k] for one row of Q8_0, Q4_0 or Q5_0 blocks
    (`kind` a literal string, `row` uint8 (n_blocks * block_bytes,), x float32 (n_blocks * 32,)).

    The whole block loop is emitted as one LLVM loop, two blocks per trip, with four zmm
    accumulators carried in registers: no per-block store of the lanes, no per-block reduction.
    """
    if not isinstance(kind, types.StringLiteral) or kind.literal_value not in ROW_DOT_BLOCK_BYTES:
        return None
    fmt = kind.literal_value
    block_bytes = ROW_DOT_BLOCK_BYTES[fmt]

    def codegen(context, builder, signature, args):
        row_v, x_v, nb_v, _ = args
        tys = signature.args
        f32, i32, i64, f16 = ir.FloatType(), ir.IntType(32), ir.IntType(64), ir.HalfType()
        v16f, v16i32 = ir.VectorType(f32, 16), ir.VectorType(i32, 16)
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(v16f, [v16f] * 3), "llvm.fma.v16f32")
        row_p = _data_ptr(context, builder, tys[0], row_v)
        x_p = _data_ptr(context, builder, tys[1], x_v)
        nb = context.cast(builder, nb_v, tys[2], types.int64)
        zero = ir.Constant(v16f, [0.0] * 16)
        undef = ir.Constant(v16f, ir.Undefined)
        splat_mask = ir.Constant(v16i32, [0] * 16)

        def block(b, acc_lo, acc_hi):
            base = builder.gep(row_p, [builder.mul(b, ir.Constant(i64, block_bytes))])
            d = builder.fpext(builder.load(builder.bitcast(base, f16.as_pointer()), align=1), f32)
            ds = builder.shuffle_vector(builder.insert_element(undef, d, ir.Constant(i32, 0)), undef, splat_mask)
            xb = builder.gep(x_p, [builder.mul(b, ir.Constant(i64, 32))])
            out = []
            for h, (q, acc) in enumerate(zip(_decode_halves(builder, fmt, base), (acc_lo, acc_hi))):
                xv = builder.load(builder.bitcast(builder.gep(xb, [ir.Constant(i64, 16 * h)]), v16f.as_pointer()),
                                  align=4)
                out.append(builder.call(fma, [builder.fmul(builder.sitofp(q, v16f), ds), xv, acc]))
            return out

        pre = builder.block
        loop = builder.append_basic_block("row_dot.loop")
        tail = builder.append_basic_block("row_dot.tail")
        n_pairs = builder.ashr(nb, ir.Constant(i64, 1))
        builder.cbranch(builder.icmp_signed(">", n_pairs, ir.Constant(i64, 0)), loop, tail)

        builder.position_at_end(loop)
        i = builder.phi(i64)
        accs = [builder.phi(v16f) for _ in range(4)]
        i.add_incoming(ir.Constant(i64, 0), pre)
        for a in accs:
            a.add_incoming(zero, pre)
        b0 = builder.shl(i, ir.Constant(i64, 1))
        new = block(b0, accs[0], accs[1]) + block(builder.add(b0, ir.Constant(i64, 1)), accs[2], accs[3])
        i_next = builder.add(i, ir.Constant(i64, 1))
        i.add_incoming(i_next, loop)
        for a, v in zip(accs, new):
            a.add_incoming(v, loop)
        builder.cbranch(builder.icmp_signed("<", i_next, n_pairs), loop, tail)

        builder.position_at_end(tail)
        finals = []
        for v in new:
            phi = builder.phi(v16f)
            phi.add_incoming(zero, pre)
            phi.add_incoming(v, loop)
            finals.append(phi)
        lo = builder.fadd(finals[0], finals[2])
        hi = builder.fadd(finals[1], finals[3])
        odd = builder.icmp_signed("!=", builder.and_(nb, ir.Constant(i64, 1)), ir.Constant(i64, 0))
        with builder.if_then(odd):  # odd block count: the last block
            last_lo, last_hi = block(builder.sub(nb, ir.Constant(i64, 1)), lo, hi)
            odd_block = builder.block
        lo_phi = builder.phi(v16f)
        lo_phi.add_incoming(last_lo, odd_block)
        lo_phi.add_incoming(lo, tail)
        hi_phi = builder.phi(v16f)
        hi_phi.add_incoming(last_hi, odd_block)
        hi_phi.add_incoming(hi, tail)
        vec = builder.fadd(lo_phi, hi_phi)
        size = 16
        while size > 1:  # tree sum of the 16 lanes
            half = size // 2
            u = ir.Constant(ir.VectorType(f32, size), ir.Undefined)
            a = builder.shuffle_vector(vec, u, ir.Constant(ir.VectorType(i32, half), list(range(half))))
            c = builder.shuffle_vector(vec, u, ir.Constant(ir.VectorType(i32, half), list(range(half, size))))
            vec = builder.fadd(a, c)
            size = half
        return builder.extract_element(vec, ir.Constant(i32, 0))

    return types.float32(row, x, n_blocks, kind), codegen
