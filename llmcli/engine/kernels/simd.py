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

`src`, `src2` are flat uint8 arrays (e.g. a row of blocks), `x`, `acc` flat float32 arrays; the
weights are decoded once and the last step runs for each of `n_columns` activation rows (x and acc
advanced by x_stride / acc_stride per row: B-column mat-vecs, see "Columns" below).

The row-dot intrinsics (`row_dot`, `row_dot_q4_k`, `row_dot_q6_k`, `row_dot_float`; the int8 ones
in int8.py / int8_kquants.py) run a whole weight row as one LLVM loop with the accumulators in
registers, for a range of activation rows at once (the shared helpers under "Columns").
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic


def _data_ptr(context, builder, aryty, ary):
    return context.make_array(aryty)(context, builder, ary).data


def float_tree_sum(builder, vec):
    """The sum of a <n x float> value's lanes (n a power of two) as a tree of vector adds: halves
    added log2(n) times, not n dependent scalar adds."""
    f32, i32 = ir.FloatType(), ir.IntType(32)
    size = vec.type.count
    while size > 1:
        half = size // 2
        undef = ir.Constant(ir.VectorType(f32, size), ir.Undefined)
        lo = builder.shuffle_vector(vec, undef, ir.Constant(ir.VectorType(i32, half), list(range(half))))
        hi = builder.shuffle_vector(vec, undef, ir.Constant(ir.VectorType(i32, half), list(range(half, size))))
        vec = builder.fadd(lo, hi)
        size = half
    return builder.extract_element(vec, ir.Constant(i32, 0))


# ---------------------------------------------------------------------------------------------
# Columns. Every row-dot intrinsic dots one weight row with activation rows ("columns" of the
# product) t0 .. t0 + n_t - 1 at once: X (B, n) and out (B, n_rows) are 2-D, and the intrinsic
# writes out[t, r] for those t (its last two arguments are t0, n_t). A row's weights are read and
# decoded once per group of columns and feed one FMA chain per column, each with its own
# accumulators: column t's arithmetic is exactly the single mat-vec's (B = 1 is the same code),
# whatever B is and whichever group t falls in. Columns go in groups of `group` (a power of two),
# the remainder in groups of group/2, ..., 1.
# ---------------------------------------------------------------------------------------------
def row_ptr(context, builder, aryty, ary, t):
    """Pointer to ary[t, 0] (element-typed) of a 2-D array, t an i64."""
    a = context.make_array(aryty)(context, builder, ary)
    i8p = ir.IntType(8).as_pointer()
    p = builder.gep(builder.bitcast(a.data, i8p), [builder.mul(t, builder.extract_value(a.strides, 0))])
    return builder.bitcast(p, a.data.type)


def store_columns(context, builder, out_ty, out_v, r, t0, values):
    """out[t0 + i, r] = values[i] (out a 2-D float32 array, r and t0 i64)."""
    i64 = ir.IntType(64)
    for i, v in enumerate(values):
        p = row_ptr(context, builder, out_ty, out_v, builder.add(t0, ir.Constant(i64, i)))
        builder.store(v, builder.gep(p, [r]))


def column_groups(context, builder, first, n_columns, group, emit):
    """emit(t0, count) for columns first..first+n_columns-1 (`first`, `n_columns`: the intrinsic's
    t0 and n_t arguments as (type, value) pairs): a loop over whole groups of `group`, then what is
    left as at most one group each of group/2, group/4, ..., 1."""
    i64 = ir.IntType(64)
    start = context.cast(builder, first[1], first[0], types.int64)
    end = builder.add(start, context.cast(builder, n_columns[1], n_columns[0], types.int64))
    pre = builder.block
    head = builder.append_basic_block("columns.head")
    body = builder.append_basic_block("columns.body")
    rest = builder.append_basic_block("columns.rest")
    builder.branch(head)
    builder.position_at_end(head)
    t = builder.phi(i64)
    t.add_incoming(start, pre)
    t_next = builder.add(t, ir.Constant(i64, group))
    builder.cbranch(builder.icmp_signed("<=", t_next, end), body, rest)
    builder.position_at_end(body)
    emit(t, group)
    t.add_incoming(t_next, builder.block)
    builder.branch(head)
    builder.position_at_end(rest)
    left = builder.sub(end, t)  # < group
    size = group // 2
    while size >= 1:
        has_group = builder.icmp_signed("!=", builder.and_(left, ir.Constant(i64, size)), ir.Constant(i64, 0))
        with builder.if_then(has_group):
            emit(builder.add(t, builder.and_(left, ir.Constant(i64, -2 * size))), size)
        size //= 2


def carried_loop(builder, name, n_trips, inits, body):
    """for i in 0..n_trips-1: values = body(i, values), as one LLVM loop with `values` (a list of
    LLVM values) carried in registers (phis). Returns the final values (`inits` if n_trips <= 0)."""
    i64 = ir.IntType(64)
    pre = builder.block
    loop = builder.append_basic_block(f"{name}.loop")
    done = builder.append_basic_block(f"{name}.done")
    builder.cbranch(builder.icmp_signed(">", n_trips, ir.Constant(i64, 0)), loop, done)
    builder.position_at_end(loop)
    i = builder.phi(i64)
    i.add_incoming(ir.Constant(i64, 0), pre)
    phis = [builder.phi(v.type) for v in inits]
    for phi, v in zip(phis, inits):
        phi.add_incoming(v, pre)
    values = body(i, phis)
    i_next = builder.add(i, ir.Constant(i64, 1))
    end = builder.block
    i.add_incoming(i_next, end)
    for phi, v in zip(phis, values):
        phi.add_incoming(v, end)
    builder.cbranch(builder.icmp_signed("<", i_next, n_trips), loop, done)
    builder.position_at_end(done)
    finals = []
    for v, init in zip(values, inits):
        phi = builder.phi(v.type)
        phi.add_incoming(init, pre)
        phi.add_incoming(v, end)
        finals.append(phi)
    return finals


def call_fma(builder, a, b, c):
    """llvm.fma on float vectors: a * b + c rounded once."""
    vty = c.type
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vty, [vty] * 3), f"llvm.fma.v{vty.count}f32")
    return builder.call(fn, [a, b, c])


def emit_prefetch(builder, base, offset):
    """Prefetch the cache line at i8* base + offset (bytes) for reading, into all cache levels."""
    i32, i64 = ir.IntType(32), ir.IntType(64)
    i8p = ir.IntType(8).as_pointer()
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
                                        "llvm.prefetch.p0i8")
    p = builder.gep(builder.bitcast(base, i8p), [ir.Constant(i64, offset) if isinstance(offset, int) else offset])
    builder.call(fn, [p, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])


def splat_vector(builder, value, n):
    """<n x T> with every lane = value."""
    i32 = ir.IntType(32)
    undef = ir.Constant(ir.VectorType(value.type, n), ir.Undefined)
    one = builder.insert_element(undef, value, ir.Constant(i32, 0))
    return builder.shuffle_vector(one, undef, ir.Constant(ir.VectorType(i32, n), [0] * n))


@intrinsic
def fma_lanes(typingctx, acc, acc_off, scale, scale2, x, x_off, src, src_off, shift, mask,
              src2, src2_off, shift2, mask2, mul2, bias, n, signed, src2_bits, nibbles,
              n_columns, acc_stride, x_stride):
    """The step above for `n_columns` activation rows at once (module docstring, "Columns"): the
    weights are decoded and scaled once, then column t does its own
    acc[t * acc_stride + acc_off + i] += w_i * x[t * x_stride + x_off + i], the same arithmetic
    as a lone column."""
    flags = (signed, src2_bits, nibbles)
    if not (isinstance(n, types.IntegerLiteral) and all(isinstance(f, types.BooleanLiteral) for f in flags)):
        return None
    width = n.literal_value
    is_signed, bits_mode, nibble_mode = (f.literal_value for f in flags)
    sig = types.void(acc, acc_off, scale, scale2, x, x_off, src, src_off, shift, mask,
                     src2, src2_off, shift2, mask2, mul2, bias, n, signed, src2_bits, nibbles,
                     n_columns, acc_stride, x_stride)

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
        weights = builder.fmul(wf, scales)
        n_cols_v, acc_stride_v, x_stride_v = (as_i64(args[k], tys[k]) for k in (20, 21, 22))
        acc_off64, x_off64 = as_i64(acc_off_v, tys[1]), as_i64(x_off_v, tys[5])

        def column(t, _):
            xv = builder.load(vec_ptr(tys[4], x_v, builder.add(x_off64, builder.mul(t, x_stride_v)), types.int64,
                                      v_f32), align=4)
            ap = vec_ptr(tys[0], acc_v, builder.add(acc_off64, builder.mul(t, acc_stride_v)), types.int64, v_f32)
            builder.store(call_fma(builder, weights, xv, builder.load(ap, align=4)), ap, align=4)
            return []

        carried_loop(builder, "fma_lanes.columns", n_cols_v, [], column)
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
        f32 = ir.FloatType()
        ptr = builder.bitcast(_data_ptr(context, builder, signature.args[0], acc_v),
                              ir.VectorType(f32, width).as_pointer())
        return float_tree_sum(builder, builder.load(ptr, align=4))

    return types.float32(acc, n), codegen


def _gemm_micro_typer(accumulate: bool):
    """The typing function of `gemm_micro` (accumulate False) or `gemm_micro_add` (True)."""

    def typer(typingctx, x, t0, n_t, wt, c0, out, col0, n_k):
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
            o_base = builder.bitcast(oa.data, i8p)

            def out_ptr(i):
                row_offset = builder.mul(builder.add(t0_64, ir.Constant(i64, i)), o_stride)
                row_ptr = builder.bitcast(builder.gep(o_base, [row_offset]), f32.as_pointer())
                return builder.gep(row_ptr, [builder.add(col0_64, c0_64)])

            if accumulate:  # start from what out holds (a previous chunk of k)
                starts = []
                for i in range(rows):
                    dst = out_ptr(i)
                    starts.append(builder.load(builder.bitcast(dst, v16.as_pointer()), align=4))
                    starts.append(builder.load(builder.bitcast(builder.gep(dst, [ir.Constant(i64, 16)]),
                                                               v16.as_pointer()), align=4))
            else:
                starts = [zero] * (2 * rows)

            pre = builder.block
            loop = builder.append_basic_block("gemm_micro.loop")
            done = builder.append_basic_block("gemm_micro.done")
            has_work = builder.icmp_signed(">", n_k64, ir.Constant(i64, 0))
            builder.cbranch(has_work, loop, done)

            builder.position_at_end(loop)
            k = builder.phi(i64)
            k.add_incoming(ir.Constant(i64, 0), pre)
            accs = []
            for start in starts:
                p = builder.phi(v16)
                p.add_incoming(start, pre)
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
            for v, start in zip(new_accs, starts):  # all phis first: LLVM wants them at the top of the block
                phi = builder.phi(v16)
                phi.add_incoming(start, pre)
                phi.add_incoming(v, loop)
                results.append(phi)
            for i in range(rows):
                res = results[2 * i: 2 * i + 2]
                dst = out_ptr(i)
                builder.store(res[0], builder.bitcast(dst, v16.as_pointer()), align=4)
                builder.store(res[1], builder.bitcast(builder.gep(dst, [ir.Constant(i64, 16)]), v16.as_pointer()), align=4)
            return context.get_dummy_value()

        return sig, codegen

    return typer


gemm_micro = intrinsic(_gemm_micro_typer(False))
# the same, adding to what out holds: out[...] += sum_k ...  (k split in chunks that stay in L1)
gemm_micro_add = intrinsic(_gemm_micro_typer(True))


# Legacy formats whose whole row runs as one LLVM loop: block bytes, and how block b's two
# 16-lane halves of integer weights are decoded (see `_decode_halves`).
ROW_DOT_BLOCK_BYTES = {"q8_0": 34, "q4_0": 18, "q5_0": 22}
# How far ahead of the block being read mat-vec kernels prefetch (0: no prefetch): past the next
# 4 KiB page boundary, where the hardware prefetcher stops. 2-8 KiB measured alike; 0-1 KiB ~20 % slower.
PREFETCH_BYTES = 4096


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
        # q - 16 = nibble + (0 if the 5th bit is set else -16): a bit test into a mask register and a
        # masked add (vptestmd), not a per-lane shift, and, shift, or, subtract
        lane_bits = ir.Constant(v16i32, [(1 << k) - (1 << 32 if k == 31 else 0) for k in range(first_bit, first_bit + 16)])
        is_set = builder.icmp_unsigned("!=", builder.and_(qh_v, lane_bits), splat(0))
        halves.append(builder.add(nibble, builder.select(is_set, splat(0), splat(-16))))
    return tuple(halves)


# Columns per group in the float row dots: 2 accumulators of 16 floats per column stay in registers.
ROW_DOT_GROUP = 4


@intrinsic
def row_dot(typingctx, row, x, n_blocks, kind, out, r, t0, n_t):
    """out[t, r] = sum over blocks b of d_b * sum_k q_bk * x[t, 32b + k] for one row of Q8_0, Q4_0
    or Q5_0 blocks and every column t (`kind` a literal string, `row` uint8 (n_blocks * block_bytes,),
    x float32 (B, n_blocks * 32), out float32 (B, n_rows)).

    The whole block loop is emitted as one LLVM loop, two blocks per trip, with two zmm
    accumulators per column carried in registers: no per-block store of the lanes, no per-block
    reduction. Each trip prefetches the line PREFETCH_BYTES ahead; each block is decoded once for
    a group of ROW_DOT_GROUP columns.
    """
    if not isinstance(kind, types.StringLiteral) or kind.literal_value not in ROW_DOT_BLOCK_BYTES:
        return None
    fmt = kind.literal_value
    block_bytes = ROW_DOT_BLOCK_BYTES[fmt]

    def codegen(context, builder, signature, args):
        row_v, x_v, nb_v, _, out_v, r_v = args[:6]
        tys = signature.args
        f32, i32, i64, f16 = ir.FloatType(), ir.IntType(32), ir.IntType(64), ir.HalfType()
        v16f = ir.VectorType(f32, 16)
        row_p = _data_ptr(context, builder, tys[0], row_v)
        nb = context.cast(builder, nb_v, tys[2], types.int64)
        r = context.cast(builder, r_v, tys[5], types.int64)
        zero = ir.Constant(v16f, [0.0] * 16)

        def c64(v):
            return ir.Constant(i64, v)

        def group(t0, count):
            x_rows = [row_ptr(context, builder, tys[1], x_v, builder.add(t0, c64(i))) for i in range(count)]

            def block(b, accs):
                # acc += d * (q[0:16] * x[0:16] + q[16:32] * x[16:32]): 3 float ops per block, not 4
                base = builder.gep(row_p, [builder.mul(b, c64(block_bytes))])
                d = builder.fpext(builder.load(builder.bitcast(base, f16.as_pointer()), align=1), f32)
                ds = splat_vector(builder, d, 16)
                q_lo, q_hi = (builder.sitofp(q, v16f) for q in _decode_halves(builder, fmt, base))
                new = []
                for x_p, acc in zip(x_rows, accs):
                    xb = builder.gep(x_p, [builder.mul(b, c64(32))])
                    x_lo, x_hi = (builder.load(builder.bitcast(builder.gep(xb, [c64(16 * h)]), v16f.as_pointer()),
                                               align=4) for h in range(2))
                    block_sum = call_fma(builder, q_hi, x_hi, builder.fmul(q_lo, x_lo))
                    new.append(call_fma(builder, block_sum, ds, acc))
                return new

            def pair(i, accs):  # accs: even-block accumulators of every column, then odd-block ones
                b0 = builder.shl(i, c64(1))
                if PREFETCH_BYTES:
                    emit_prefetch(builder, builder.gep(row_p, [builder.mul(b0, c64(block_bytes))]), PREFETCH_BYTES)
                return block(b0, accs[:count]) + block(builder.add(b0, c64(1)), accs[count:])

            finals = carried_loop(builder, "row_dot", builder.ashr(nb, c64(1)), [zero] * (2 * count), pair)
            both = [builder.fadd(even, odd) for even, odd in zip(finals[:count], finals[count:])]
            odd = builder.icmp_signed("!=", builder.and_(nb, c64(1)), c64(0))
            before = builder.block
            with builder.if_then(odd):  # odd block count: the last block
                with_last = block(builder.sub(nb, c64(1)), both)
                odd_block = builder.block
            vecs = []
            for v, w in zip(both, with_last):
                phi = builder.phi(v16f)
                phi.add_incoming(w, odd_block)
                phi.add_incoming(v, before)
                vecs.append(phi)
            store_columns(context, builder, tys[4], out_v, r, t0, [float_tree_sum(builder, v) for v in vecs])

        column_groups(context, builder, (tys[6], args[6]), (tys[7], args[7]), ROW_DOT_GROUP, group)
        return context.get_dummy_value()

    return types.void(row, x, n_blocks, kind, out, r, t0, n_t), codegen


@intrinsic
def prefetch(typingctx, ary, offset):
    """Hint the CPU to load the cache line at byte `offset` of `ary`'s data (any offset: a
    prefetch never faults). Mat-vec kernels ask for bytes a few KiB ahead of the block they
    read: the hardware stream prefetcher stops at every 4 KiB page, software prefetches do not
    (~20 % on the demo's 178 MB output matrix here)."""
    if not isinstance(ary, types.Array) or not isinstance(offset, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
        base = builder.bitcast(_data_ptr(context, builder, signature.args[0], args[0]), i8p)
        p = builder.gep(base, [context.cast(builder, args[1], signature.args[1], types.int64)])
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
                                            "llvm.prefetch.p0i8")
        builder.call(fn, [p, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return types.void(ary, offset), codegen


# Columns per group in the K-quant float row dots (Q4_K: 2 zmm + 1 ymm accumulators per column;
# Q6_K: 2 zmm).
ROW_DOT_K_GROUP = 4


@intrinsic
def row_dot_q4_k(typingctx, row, x, x_sums, n_blocks, out, r, t0, n_t):
    """One row of Q4_K super-blocks dotted with every column t of float32 x, as one LLVM loop over
    the blocks per group of columns (module docstring, "Columns"):

        out[t, r] = sum over blocks b, sub-blocks s < 8 of
            d * scale[s] * (q[s] . x[t, 256b + 32s : +32])  -  dmin * min[s] * x_sums[t, 8b + s]

    `row` uint8 (n_blocks * 144,), x float32 (B, n_blocks * 256), x_sums float32 (B, n_blocks * 8)
    the sums of x over each 32-value sub-block. Block layout (kquants.py): d fp16 @0, dmin fp16 @2,
    12 bytes of 6-bit scales/mins @4, qs[128] @16; group g < 4 = qs[32g..32g+31], low nibbles
    sub-block 2g, high nibbles 2g+1. The 8 scales and mins are unpacked as <8 x i32> vectors:

        j < 4:  scale = s[j] & 63                     min = s[j+4] & 63
        j >= 4: scale = s[j+4] & 15 | s[j-4] >> 6 << 4  min = s[j+4] >> 4 | s[j] >> 6 << 4

    Two zmm accumulators (even and odd sub-blocks) and an <8 x float> one for the mins per column
    stay in registers for the whole row (the fma_lanes version kept its lanes in memory: ~2 GB/s).
    """
    sig = types.void(row, x, x_sums, n_blocks, out, r, t0, n_t)

    def codegen(context, builder, signature, args):
        row_v, x_v, xs_v, nb_v, out_v, r_v = args[:6]
        tys = signature.args
        f32, i32, i64, i8, f16 = ir.FloatType(), ir.IntType(32), ir.IntType(64), ir.IntType(8), ir.HalfType()
        v16f, v16i32, v16i8 = ir.VectorType(f32, 16), ir.VectorType(i32, 16), ir.VectorType(i8, 16)
        v8f, v8i32, v12i8 = ir.VectorType(f32, 8), ir.VectorType(i32, 8), ir.VectorType(i8, 12)
        row_p = _data_ptr(context, builder, tys[0], row_v)
        nb = context.cast(builder, nb_v, tys[3], types.int64)
        r = context.cast(builder, r_v, tys[5], types.int64)

        def c64(v):
            return ir.Constant(i64, v)

        def vconst(vty, values):
            return ir.Constant(vty, list(values))

        def load(ptr, offset, vty, align):
            return builder.load(builder.bitcast(builder.gep(ptr, [offset]), vty.as_pointer()), align=align)

        def half_at(base, offset):
            return builder.fpext(load(base, c64(offset), f16, 1), f32)

        zero16 = ir.Constant(v16f, [0.0] * 16)
        zero8 = ir.Constant(v8f, [0.0] * 8)

        def group(t0, count):
            cols = [builder.add(t0, c64(i)) for i in range(count)]
            x_rows = [row_ptr(context, builder, tys[1], x_v, t) for t in cols]
            xs_rows = [row_ptr(context, builder, tys[2], xs_v, t) for t in cols]

            def body(b, values):  # per column: even acc, odd acc, min acc
                base = builder.gep(row_p, [builder.mul(b, c64(144))])
                for line in range(3):
                    emit_prefetch(builder, base, PREFETCH_BYTES + 64 * line)
                d = half_at(base, 0)
                dmin = half_at(base, 2)
                packed = builder.zext(load(base, c64(4), v12i8, 1), ir.VectorType(i32, 12))
                undef12 = ir.Constant(ir.VectorType(i32, 12), ir.Undefined)

                def pick(indices):
                    return builder.shuffle_vector(packed, undef12, vconst(v8i32, indices))

                low4, high4 = [63] * 4 + [15] * 4, [0] * 4 + [48] * 4
                top_bits = [4] * 8  # (byte >> 6) << 4
                scale_i = builder.or_(builder.and_(pick([0, 1, 2, 3, 8, 9, 10, 11]), vconst(v8i32, low4)),
                                      builder.and_(builder.shl(builder.lshr(pick([0, 1, 2, 3, 0, 1, 2, 3]),
                                                                            vconst(v8i32, [6] * 8)),
                                                               vconst(v8i32, top_bits)), vconst(v8i32, high4)))
                min_i = builder.or_(builder.and_(builder.lshr(pick([4, 5, 6, 7, 8, 9, 10, 11]),
                                                              vconst(v8i32, [0] * 4 + [4] * 4)), vconst(v8i32, low4)),
                                    builder.and_(builder.shl(builder.lshr(pick([4, 5, 6, 7, 4, 5, 6, 7]),
                                                                          vconst(v8i32, [6] * 8)),
                                                             vconst(v8i32, top_bits)), vconst(v8i32, high4)))
                scales = builder.fmul(builder.sitofp(scale_i, v8f), splat_vector(builder, d, 8))
                mins = builder.fmul(builder.sitofp(min_i, v8f), splat_vector(builder, dmin, 8))
                undef8 = ir.Constant(v8f, ir.Undefined)
                lane_scales = [builder.shuffle_vector(scales, undef8, vconst(v16i32, [s] * 16)) for s in range(8)]
                # q[g][c][h]: the 16 weights c of sub-block 2g + h, as float
                q = []
                for g in range(4):
                    q.append([])
                    for c in range(2):
                        qb = builder.zext(load(base, c64(16 + 32 * g + 16 * c), v16i8, 1), v16i32)
                        nibbles = (builder.and_(qb, vconst(v16i32, [15] * 16)),
                                   builder.lshr(qb, vconst(v16i32, [4] * 16)))
                        q[g].append([builder.sitofp(nib, v16f) for nib in nibbles])
                new = []
                for k in range(count):
                    acc0, acc1, min_in = values[3 * k: 3 * k + 3]
                    x_sums_b = load(xs_rows[k], builder.mul(b, c64(8)), v8f, 4)
                    min_out = call_fma(builder, mins, x_sums_b, min_in)
                    xb = builder.gep(x_rows[k], [builder.mul(b, c64(256))])
                    accs = [acc0, acc1]
                    for g in range(4):
                        sums = [None, None]  # sub-block 2g (low nibbles), 2g+1 (high nibbles)
                        for c in range(2):
                            for h in range(2):
                                xv = load(xb, c64(64 * g + 32 * h + 16 * c), v16f, 4)
                                qf = q[g][c][h]
                                sums[h] = builder.fmul(qf, xv) if c == 0 else call_fma(builder, qf, xv, sums[h])
                        for h in range(2):
                            accs[h] = call_fma(builder, sums[h], lane_scales[2 * g + h], accs[h])
                    new += [accs[0], accs[1], min_out]
                return new

            finals = carried_loop(builder, "q4k", nb, [zero16, zero16, zero8] * count, body)
            results = []
            for k in range(count):
                acc0, acc1, acc_min = finals[3 * k: 3 * k + 3]
                total = float_tree_sum(builder, builder.fadd(acc0, acc1))
                results.append(builder.fsub(total, float_tree_sum(builder, acc_min)))
            store_columns(context, builder, tys[4], out_v, r, t0, results)

        column_groups(context, builder, (tys[6], args[6]), (tys[7], args[7]), ROW_DOT_K_GROUP, group)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def row_dot_q6_k(typingctx, row, x, n_blocks, out, r, t0, n_t):
    """One row of Q6_K super-blocks dotted with every column of float32 x, as one LLVM loop over the
    blocks per group of columns (module docstring, "Columns").

    Block layout (kquants.py): ql[128] @0, qh[64] @128, scales[16] int8 @192, d fp16 @208. For
    half n < 2 and k < 2 the 16-byte slices A = ql[64n+16k:], C = ql[64n+32+16k:], H = qh[32n+16k:]
    hold four 16-weight sub-blocks, one zmm each:

        s = 8n + k      : A & 15 | (H & 3) << 4           x[128n + 16k      : +16]
        s = 8n + 2 + k  : C & 15 | (H >> 2 & 3) << 4      x[128n + 32 + 16k : +16]
        s = 8n + 4 + k  : A >> 4 | (H >> 4 & 3) << 4      x[128n + 64 + 16k : +16]
        s = 8n + 6 + k  : C >> 4 | (H >> 6) << 4          x[128n + 96 + 16k : +16]     (each minus 32)

    acc += d * scales[s] * (w . x) with the 16 scales unpacked once per block into one zmm.
    `row` uint8 (n_blocks * 210,), x float32 (B, n_blocks * 256), out float32 (B, n_rows).
    """
    sig = types.void(row, x, n_blocks, out, r, t0, n_t)

    def codegen(context, builder, signature, args):
        row_v, x_v, nb_v, out_v, r_v = args[:5]
        tys = signature.args
        f32, i32, i64, i8, f16 = ir.FloatType(), ir.IntType(32), ir.IntType(64), ir.IntType(8), ir.HalfType()
        v16f, v16i32, v16i8 = ir.VectorType(f32, 16), ir.VectorType(i32, 16), ir.VectorType(i8, 16)
        row_p = _data_ptr(context, builder, tys[0], row_v)
        nb = context.cast(builder, nb_v, tys[2], types.int64)
        r = context.cast(builder, r_v, tys[4], types.int64)

        def c64(v):
            return ir.Constant(i64, v)

        def vsplat(v):
            return ir.Constant(v16i32, [v] * 16)

        def load(ptr, offset, vty, align):
            return builder.load(builder.bitcast(builder.gep(ptr, [offset]), vty.as_pointer()), align=align)

        zero16 = ir.Constant(v16f, [0.0] * 16)
        undef16 = ir.Constant(v16f, ir.Undefined)

        def group(t0, count):
            x_rows = [row_ptr(context, builder, tys[1], x_v, builder.add(t0, c64(i))) for i in range(count)]

            def body(b, values):  # per column: two accumulators, used in turn
                base = builder.gep(row_p, [builder.mul(b, c64(210))])
                for line in range(4):
                    emit_prefetch(builder, base, PREFETCH_BYTES + 64 * line)
                d = builder.fpext(load(base, c64(208), f16, 1), f32)
                scales = builder.fmul(builder.sitofp(builder.sext(load(base, c64(192), v16i8, 1), v16i32), v16f),
                                      splat_vector(builder, d, 16))
                steps = []  # (weights as float, x offset, scale vector) in accumulation order
                for n in range(2):
                    for k in range(2):
                        a = builder.zext(load(base, c64(64 * n + 16 * k), v16i8, 1), v16i32)
                        c = builder.zext(load(base, c64(64 * n + 32 + 16 * k), v16i8, 1), v16i32)
                        h = builder.zext(load(base, c64(128 + 32 * n + 16 * k), v16i8, 1), v16i32)
                        for j, (src, nibble_shift) in enumerate(((a, 0), (c, 0), (a, 4), (c, 4))):
                            low = builder.and_(builder.lshr(src, vsplat(nibble_shift)), vsplat(15))
                            high = builder.shl(builder.and_(builder.lshr(h, vsplat(2 * j)), vsplat(3)), vsplat(4))
                            w = builder.sitofp(builder.sub(builder.or_(low, high), vsplat(32)), v16f)
                            s = builder.shuffle_vector(scales, undef16, vsplat(8 * n + 2 * j + k))
                            steps.append((w, 128 * n + 32 * j + 16 * k, s))
                new = []
                for i in range(count):
                    xb = builder.gep(x_rows[i], [builder.mul(b, c64(256))])
                    accs = list(values[2 * i: 2 * i + 2])
                    for turn, (w, x_off, s) in enumerate(steps):
                        xv = load(xb, c64(x_off), v16f, 4)
                        accs[turn & 1] = call_fma(builder, builder.fmul(w, xv), s, accs[turn & 1])
                    new += accs
                return new

            finals = carried_loop(builder, "q6k", nb, [zero16] * (2 * count), body)
            store_columns(context, builder, tys[3], out_v, builder.add(r, c64(0)), t0,
                          [float_tree_sum(builder, builder.fadd(finals[2 * i], finals[2 * i + 1]))
                           for i in range(count)])

        column_groups(context, builder, (tys[5], args[5]), (tys[6], args[6]), ROW_DOT_K_GROUP, group)
        return context.get_dummy_value()

    return sig, codegen


FLOAT_KINDS = ("f32", "f16", "bf16")


@intrinsic
def row_dot_float(typingctx, row, x, kind, out, r, t0, n_t):
    """out[t, r] = row . x[t] for an unquantized row (`kind` "f32": float32 (n,), "f16"/"bf16":
    uint16 (n,)) and every column t of x float32 (B, n), n any length.

    Per column two <16 x float> accumulators over 32 values per loop trip, a tree sum, then the
    n % 32 last products added one by one in order: a fixed order of additions, so a column's
    result never depends on how many columns ran with it (a fastmath loop leaves the order to
    LLVM's vectoriser)."""
    if not isinstance(kind, types.StringLiteral) or kind.literal_value not in FLOAT_KINDS:
        return None
    fmt = kind.literal_value

    def codegen(context, builder, signature, args):
        row_v, x_v, _, out_v, r_v = args[:5]
        tys = signature.args
        f32, i32, i64, i16 = ir.FloatType(), ir.IntType(32), ir.IntType(64), ir.IntType(16)
        v16f = ir.VectorType(f32, 16)
        elem = f32 if fmt == "f32" else i16
        row_arr = context.make_array(tys[0])(context, builder, row_v)
        row_p = builder.bitcast(row_arr.data, elem.as_pointer())
        n = builder.extract_value(row_arr.shape, 0)
        r = context.cast(builder, r_v, tys[4], types.int64)
        zero = ir.Constant(v16f, [0.0] * 16)

        def c64(v):
            return ir.Constant(i64, v)

        def widen(w):
            """Loaded weights (float32, or fp16 / bf16 bits as i16, scalar or <16 x >) as float32."""
            if fmt == "f32":
                return w
            vector = isinstance(w.type, ir.VectorType)

            def of(elem):
                return ir.VectorType(elem, 16) if vector else elem

            if fmt == "f16":
                return builder.fpext(builder.bitcast(w, of(ir.HalfType())), of(f32))
            sixteen = ir.Constant(of(i32), [16] * 16 if vector else 16)
            return builder.bitcast(builder.shl(builder.zext(w, of(i32)), sixteen), of(f32))

        def load_weights(k):
            vty = ir.VectorType(elem, 16)
            return widen(builder.load(builder.bitcast(builder.gep(row_p, [k]), vty.as_pointer()), align=2))

        def group(t0, count):
            x_rows = [row_ptr(context, builder, tys[1], x_v, builder.add(t0, c64(i))) for i in range(count)]

            def chunk(i, accs):
                k = builder.shl(i, c64(5))
                emit_prefetch(builder, builder.gep(row_p, [k]), PREFETCH_BYTES)
                w = [load_weights(builder.add(k, c64(16 * h))) for h in range(2)]
                new = []
                for j, x_p in enumerate(x_rows):
                    for h in range(2):
                        xv = builder.load(builder.bitcast(builder.gep(x_p, [builder.add(k, c64(16 * h))]),
                                                          v16f.as_pointer()), align=4)
                        new.append(call_fma(builder, w[h], xv, accs[2 * j + h]))
                return new

            n_chunks = builder.ashr(n, c64(5))
            finals = carried_loop(builder, "row_dot_float", n_chunks, [zero] * (2 * count), chunk)
            sums = [float_tree_sum(builder, builder.fadd(finals[2 * j], finals[2 * j + 1])) for j in range(count)]
            done = builder.shl(n_chunks, c64(5))

            def one(i, totals):
                k = builder.add(done, i)
                w = widen(builder.load(builder.gep(row_p, [k])))
                fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(f32, [f32] * 3), "llvm.fma.f32")
                return [builder.call(fma, [w, builder.load(builder.gep(x_p, [k])), total])
                        for x_p, total in zip(x_rows, totals)]

            sums = carried_loop(builder, "row_dot_float.tail", builder.sub(n, done), sums, one)
            store_columns(context, builder, tys[3], out_v, r, t0, sums)

        column_groups(context, builder, (tys[5], args[5]), (tys[6], args[6]), ROW_DOT_GROUP, group)
        return context.get_dummy_value()

    return types.void(row, x, kind, out, r, t0, n_t), codegen


@intrinsic
def transpose_32x8(typingctx, src, src_off, ld, dst, dst_off):
    """dst[dst_off + 32 k + j] = src[src_off + ld * j + k] for j < 32, k < 8 (flat float32 arrays):
    a 32-row x 8-column block of a row-major matrix becomes 8 runs of 32 floats.

    32 <8 x float> row loads are concatenated into one <256 x float> value and 8 stride-8 shuffles
    pull the columns out; LLVM lowers that to register permutes (vpermt2ps), ~2.2x the scalar
    element-by-element copy in `gemm.pack_panels`."""
    if not all(isinstance(a, types.Array) for a in (src, dst)):
        return None

    def codegen(context, builder, signature, args):
        src_v, src_off_v, ld_v, dst_v, dst_off_v = args
        tys = signature.args
        f32, i32, i64 = ir.FloatType(), ir.IntType(32), ir.IntType(64)
        src_p = _data_ptr(context, builder, tys[0], src_v)
        dst_p = _data_ptr(context, builder, tys[3], dst_v)
        src_off = context.cast(builder, src_off_v, tys[1], types.int64)
        ld = context.cast(builder, ld_v, tys[2], types.int64)
        dst_off = context.cast(builder, dst_off_v, tys[4], types.int64)
        v8f = ir.VectorType(f32, 8)
        pieces = []
        for j in range(32):
            p = builder.gep(src_p, [builder.add(src_off, builder.mul(ld, ir.Constant(i64, j)))])
            pieces.append(builder.load(builder.bitcast(p, v8f.as_pointer()), align=4))
        while len(pieces) > 1:  # concatenate pairwise: 32 x <8> -> <256 x float>
            n = pieces[0].type.count
            both = ir.Constant(ir.VectorType(i32, 2 * n), list(range(2 * n)))
            pieces = [builder.shuffle_vector(pieces[i], pieces[i + 1], both) for i in range(0, len(pieces), 2)]
        block = pieces[0]
        undef = ir.Constant(block.type, ir.Undefined)
        v32f = ir.VectorType(f32, 32)
        for k in range(8):
            column = builder.shuffle_vector(block, undef, ir.Constant(ir.VectorType(i32, 32), [8 * j + k for j in range(32)]))
            p = builder.gep(dst_p, [builder.add(dst_off, ir.Constant(i64, 32 * k))])
            builder.store(column, builder.bitcast(p, v32f.as_pointer()), align=4)
        return context.get_dummy_value()

    return types.void(src, src_off, ld, dst, dst_off), codegen
