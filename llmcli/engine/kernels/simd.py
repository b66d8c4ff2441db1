"""Float32-activation kernels written as LLVM IR (the pieces they share: llvm_ir.py).

`fma_lanes` is the inner step of the "lanes" kernels (common.py) for every block format whose
rows have no whole-row loop of their own:

    for i in 0..n-1 (n a compile-time literal, 8, 16 or 32):
        lo  = (byte(src, src_off + i) >> shift) & mask          (byte sign-extended if signed)
              nibbles: n/2 bytes feed n lanes, lane i < n/2 = byte i & 15, lane n/2+i = byte i >> 4
        hi  = (byte(src2, src2_off + i) >> shift2) & mask2      (src2_bits: bit (shift2 + i) of
                                                                   a 32-bit word at src2_off)
        w   = lo + hi * mul2 + bias
        acc[acc_off + i] += s_i * float(w) * x[x_off + i]       s_i = scale (i < n/2), scale2 (i >= n/2)

Two scales let one call cover two 16-weight sub-blocks that sit next to each other (Q2_K, Q3_K,
Q6_K), and the nibble mode lets one call cover a whole 32-weight Q4_1/Q5_1 block. `src`, `src2`
are flat uint8 arrays (e.g. a row of blocks), `x`, `acc` flat float32 arrays; the weights are
decoded once and the last step runs for each of `n_columns` activation rows (x and acc advanced by
x_stride / acc_stride per row: B-column mat-vecs, llvm_ir.py "Columns").

The row dots (`row_dot` for Q8_0/Q4_0/Q5_0, `row_dot_q4_k`, `row_dot_q6_k`, `row_dot_float`; the
int8 ones in int8.py / int8_kquants.py) run a whole weight row as one LLVM loop with the
accumulators in registers, for a range of activation rows at once. `gemm_micro` and
`transpose_32x8` are the prompt GEMM's (gemm.py).
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from ...gguf.constants import TYPE_INFO, GGMLType
from .llvm_ir import (F16, F32, I8, I8_PTR, I16, I32, PREFETCH_BYTES, as_i64, block_loop, call_fma,
                      carried_loop, column_groups, concat, const_vector, data_ptr, emit_prefetch, float_tree_sum,
                      halves, i64, if_odd, indices, load_at, load_half, row_ptr, splat, store_columns, vector)

FMA_LANES_ARGS = ("acc", "acc_off", "scale", "scale2", "x", "x_off", "src", "src_off", "shift", "mask",
                  "src2", "src2_off", "shift2", "mask2", "mul2", "bias", "n", "signed", "src2_bits", "nibbles",
                  "n_columns", "acc_stride", "x_stride")


@intrinsic
def fma_lanes(typingctx, acc, acc_off, scale, scale2, x, x_off, src, src_off, shift, mask,
              src2, src2_off, shift2, mask2, mul2, bias, n, signed, src2_bits, nibbles,
              n_columns, acc_stride, x_stride):
    """The step above for `n_columns` activation rows at once: the weights are decoded and scaled
    once, then column t does its own acc[t * acc_stride + acc_off + i] += w_i * x[t * x_stride +
    x_off + i], the same arithmetic as a lone column. Call it with keywords (FMA_LANES_ARGS);
    n, signed, src2_bits and nibbles must be literals."""
    flags = (signed, src2_bits, nibbles)
    if not (isinstance(n, types.IntegerLiteral) and all(isinstance(f, types.BooleanLiteral) for f in flags)):
        return None
    width = n.literal_value
    is_signed, bits_mode, nibble_mode = (f.literal_value for f in flags)
    sig = types.void(acc, acc_off, scale, scale2, x, x_off, src, src_off, shift, mask,
                     src2, src2_off, shift2, mask2, mul2, bias, n, signed, src2_bits, nibbles,
                     n_columns, acc_stride, x_stride)

    def codegen(context, builder, signature, args):
        arg = dict(zip(FMA_LANES_ARGS, zip(signature.args, args)))  # name -> (numba type, LLVM value)
        v_i32, v_f32, v_i8 = vector(I32, width), vector(F32, width), vector(I8, width)

        def value(name, to):
            ty, v = arg[name]
            return context.cast(builder, v, ty, to)

        def lanes_of(name, to=types.int32):
            return splat(builder, value(name, to), width)

        def vec_ptr(array, offset, elem_vty):
            """elem_vty* to array[offset] (offset an argument name or an i64)."""
            off = value(offset, types.int64) if isinstance(offset, str) else offset
            p = builder.gep(data_ptr(context, builder, *arg[array]), [off], inbounds=True)
            return builder.bitcast(p, elem_vty.as_pointer())

        half = width // 2
        # first byte source
        if nibble_mode:
            b = builder.zext(builder.load(vec_ptr("src", "src_off", vector(I8, half)), align=1), vector(I32, half))
            both = builder.shuffle_vector(b, b, indices(list(range(half)) * 2))
            q = builder.and_(builder.lshr(both, const_vector(I32, [0] * half + [4] * half)),
                             const_vector(I32, [15] * width))
        else:
            q8 = builder.load(vec_ptr("src", "src_off", v_i8), align=1)
            q = builder.sext(q8, v_i32) if is_signed else builder.zext(q8, v_i32)
            q = builder.ashr(q, lanes_of("shift"))
            q = builder.and_(q, lanes_of("mask"))
        # second source
        if bits_mode:
            word = builder.load(vec_ptr("src2", "src2_off", I32), align=1)
            lane_shift = builder.add(lanes_of("shift2"), const_vector(I32, range(width)))
            h = builder.lshr(splat(builder, word, width), lane_shift)
        else:
            h = builder.zext(builder.load(vec_ptr("src2", "src2_off", v_i8), align=1), v_i32)
            h = builder.lshr(h, lanes_of("shift2"))
        h = builder.and_(h, lanes_of("mask2"))
        w = builder.add(q, builder.mul(h, lanes_of("mul2")))
        w = builder.add(w, lanes_of("bias"))
        wf = builder.sitofp(w, v_f32)
        s1 = lanes_of("scale", types.float32)
        s2 = lanes_of("scale2", types.float32)
        first_half_of_each = list(range(half)) + list(range(width, width + half))
        weights = builder.fmul(wf, builder.shuffle_vector(s1, s2, indices(first_half_of_each)))
        n_cols, acc_stride_v, x_stride_v = (value(k, types.int64) for k in ("n_columns", "acc_stride", "x_stride"))
        acc_off, x_off = value("acc_off", types.int64), value("x_off", types.int64)

        def column(t, _):
            xv = builder.load(vec_ptr("x", builder.add(x_off, builder.mul(t, x_stride_v)), v_f32), align=4)
            ap = vec_ptr("acc", builder.add(acc_off, builder.mul(t, acc_stride_v)), v_f32)
            builder.store(call_fma(builder, weights, xv, builder.load(ap, align=4)), ap, align=4)
            return []

        carried_loop(builder, "fma_lanes.columns", n_cols, [], column)
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
        ptr = builder.bitcast(data_ptr(context, builder, signature.args[0], args[0]), vector(F32, width).as_pointer())
        return float_tree_sum(builder, builder.load(ptr, align=4))

    return types.float32(acc, n), codegen


@intrinsic
def prefetch(typingctx, ary, offset):
    """Hint the CPU to load the cache line at byte `offset` of `ary`'s data (any offset: a
    prefetch never faults). Mat-vec kernels ask for bytes a few KiB ahead of the block they
    read: the hardware stream prefetcher stops at every 4 KiB page, software prefetches do not
    (~20 % on the demo's 178 MB output matrix here)."""
    if not isinstance(ary, types.Array) or not isinstance(offset, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        base = builder.bitcast(data_ptr(context, builder, signature.args[0], args[0]), I8_PTR)
        emit_prefetch(builder, base, as_i64(context, builder, args[1], signature.args[1]))
        return context.get_dummy_value()

    return types.void(ary, offset), codegen


# ---------------------------------------------------------------------------------------------
# Prompt GEMM (gemm.py)
# ---------------------------------------------------------------------------------------------
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
            v16 = vector(F32, 16)
            v16_ptr = v16.as_pointer()
            xa = context.make_array(tys[0])(context, builder, x_v)
            wa = context.make_array(tys[3])(context, builder, wt_v)
            oa = context.make_array(tys[5])(context, builder, out_v)
            x_stride = builder.extract_value(xa.strides, 0)     # bytes per x row
            w_stride = builder.extract_value(wa.strides, 0)     # bytes per wt row
            o_stride = builder.extract_value(oa.strides, 0)
            t0_64, c0_64, col0_64, n_k64 = (as_i64(context, builder, args[k], tys[k]) for k in (1, 4, 6, 7))
            x_base = builder.bitcast(xa.data, I8_PTR)
            x_rows = [builder.bitcast(builder.gep(x_base, [builder.mul(builder.add(t0_64, i64(i)), x_stride)]),
                                      F32.as_pointer()) for i in range(rows)]
            w_col = builder.gep(wa.data, [c0_64])  # &wt[0, c0]
            zero = ir.Constant(v16, [0.0] * 16)
            o_base = builder.bitcast(oa.data, I8_PTR)

            def out_ptr(i):
                row_offset = builder.mul(builder.add(t0_64, i64(i)), o_stride)
                row_start = builder.bitcast(builder.gep(o_base, [row_offset]), F32.as_pointer())
                return builder.gep(row_start, [builder.add(col0_64, c0_64)])

            if accumulate:  # start from what out holds (a previous chunk of k)
                starts = []
                for i in range(rows):
                    dst = out_ptr(i)
                    starts.append(builder.load(builder.bitcast(dst, v16_ptr), align=4))
                    starts.append(builder.load(builder.bitcast(builder.gep(dst, [i64(16)]), v16_ptr), align=4))
            else:
                starts = [zero] * (2 * rows)

            def k_step(k, accs):
                w_row = builder.bitcast(builder.gep(builder.bitcast(w_col, I8_PTR), [builder.mul(k, w_stride)]),
                                        F32.as_pointer())
                w_lo = builder.load(builder.bitcast(w_row, v16_ptr), align=4)
                w_hi = builder.load(builder.bitcast(builder.gep(w_row, [i64(16)]), v16_ptr), align=4)
                new_accs = []
                for i in range(rows):
                    xb = splat(builder, builder.load(builder.gep(x_rows[i], [k]), align=4), 16)
                    new_accs.append(call_fma(builder, xb, w_lo, accs[2 * i]))
                    new_accs.append(call_fma(builder, xb, w_hi, accs[2 * i + 1]))
                return new_accs

            results = carried_loop(builder, "gemm_micro", n_k64, starts, k_step)
            for i in range(rows):
                dst = out_ptr(i)
                builder.store(results[2 * i], builder.bitcast(dst, v16_ptr), align=4)
                builder.store(results[2 * i + 1], builder.bitcast(builder.gep(dst, [i64(16)]), v16_ptr), align=4)
            return context.get_dummy_value()

        return sig, codegen

    return typer


gemm_micro = intrinsic(_gemm_micro_typer(False))
# the same, adding to what out holds: out[...] += sum_k ...  (k split in chunks that stay in L1)
gemm_micro_add = intrinsic(_gemm_micro_typer(True))


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
        src_p = data_ptr(context, builder, tys[0], src_v)
        dst_p = data_ptr(context, builder, tys[3], dst_v)
        src_off = as_i64(context, builder, src_off_v, tys[1])
        ld = as_i64(context, builder, ld_v, tys[2])
        dst_off = as_i64(context, builder, dst_off_v, tys[4])
        pieces = [load_at(builder, src_p, builder.add(src_off, builder.mul(ld, i64(j))), vector(F32, 8), align=4)
                  for j in range(32)]
        while len(pieces) > 1:  # concatenate pairwise: 32 x <8> -> <256 x float>
            pieces = [concat(builder, pieces[i], pieces[i + 1]) for i in range(0, len(pieces), 2)]
        block = pieces[0]
        undef = ir.Constant(block.type, ir.Undefined)
        for k in range(8):
            column = builder.shuffle_vector(block, undef, indices([8 * j + k for j in range(32)]))
            p = builder.gep(dst_p, [builder.add(dst_off, i64(32 * k))])
            builder.store(column, builder.bitcast(p, vector(F32, 32).as_pointer()), align=4)
        return context.get_dummy_value()

    return types.void(src, src_off, ld, dst, dst_off), codegen


# ---------------------------------------------------------------------------------------------
# Q8_0, Q4_0, Q5_0 rows (legacy.py has the block diagrams), 32 weights a block:
#
#   q8_0  byte 0 | d fp16 | 2  qs[32] int8                       | 34    w = d * qs[k]
#   q4_0  byte 0 | d fp16 | 2  qs[16]                            | 18    w[j] = d * ((qs[j] & 15) - 8)
#                                                                        w[j+16] = d * ((qs[j] >> 4) - 8)
#   q5_0  byte 0 | d fp16 | 2  qh u32 | 6  qs[16]                | 22    as q4_0 with bit j of qh as the
#                                                                        nibble's 5th bit, minus 16
# ---------------------------------------------------------------------------------------------
LEGACY_KINDS = ("q8_0", "q4_0", "q5_0")
BLOCK_BYTES = {kind: TYPE_INFO[GGMLType[kind.upper()]].block_bytes for kind in LEGACY_KINDS}


def _decode_halves(builder, kind, base):
    """(weights 0-15, weights 16-31) of the block at `base` (i8*) as integers, <16 x i32> each."""
    v16i8, v16i32 = vector(I8, 16), vector(I32, 16)

    def lanes(value):
        return const_vector(I32, [value] * 16)

    if kind == "q8_0":
        return (builder.sext(load_at(builder, base, i64(2), v16i8), v16i32),
                builder.sext(load_at(builder, base, i64(18), v16i8), v16i32))
    qs = builder.zext(load_at(builder, base, i64(2 if kind == "q4_0" else 6), v16i8), v16i32)
    lo = builder.and_(qs, lanes(15))
    hi = builder.lshr(qs, lanes(4))
    if kind == "q4_0":
        return builder.sub(lo, lanes(8)), builder.sub(hi, lanes(8))
    qh = splat(builder, load_at(builder, base, i64(2), I32), 16)
    weights = []
    for nibble, first_bit in ((lo, 0), (hi, 16)):
        # q - 16 = nibble + (0 if the 5th bit is set else -16): a bit test into a mask register and a
        # masked add (vptestmd), not a per-lane shift, and, shift, or, subtract
        lane_bits = const_vector(I32, [(1 << k) - (1 << 32 if k == 31 else 0)
                                       for k in range(first_bit, first_bit + 16)])
        is_set = builder.icmp_unsigned("!=", builder.and_(qh, lane_bits), lanes(0))
        weights.append(builder.add(nibble, builder.select(is_set, lanes(0), lanes(-16))))
    return tuple(weights)


# Columns per group in the float row dots: 2 accumulators of 16 floats per column stay in registers.
ROW_DOT_GROUP = 4


@intrinsic
def row_dot(typingctx, row, x, n_blocks, kind, out, r, t0, n_t):
    """out[t, r] = sum over blocks b of d_b * sum_k q_bk * x[t, 32b + k] for one row of Q8_0, Q4_0
    or Q5_0 blocks (diagram above) and every column t (`kind` a literal string, `row` uint8
    (n_blocks * block_bytes,), x float32 (B, n_blocks * 32), out float32 (B, n_rows)).

    The whole block loop is emitted as one LLVM loop, two blocks per trip, with two zmm
    accumulators per column carried in registers: no per-block store of the lanes, no per-block
    reduction. Each trip prefetches the line PREFETCH_BYTES ahead; each block is decoded once for
    a group of ROW_DOT_GROUP columns.
    """
    if not isinstance(kind, types.StringLiteral) or kind.literal_value not in LEGACY_KINDS:
        return None
    fmt = kind.literal_value
    block_bytes = BLOCK_BYTES[fmt]

    def codegen(context, builder, signature, args):
        row_v, x_v, nb_v, _, out_v, r_v = args[:6]
        tys = signature.args
        v16f = vector(F32, 16)
        row_p = data_ptr(context, builder, tys[0], row_v)
        nb = as_i64(context, builder, nb_v, tys[2])
        r = as_i64(context, builder, r_v, tys[5])
        zero = ir.Constant(v16f, [0.0] * 16)

        def group(t0, count):
            x_rows = [row_ptr(context, builder, tys[1], x_v, builder.add(t0, i64(i))) for i in range(count)]

            def block(b, accs):
                # acc += d * (q[0:16] * x[0:16] + q[16:32] * x[16:32]): 3 float ops per block, not 4
                base = builder.gep(row_p, [builder.mul(b, i64(block_bytes))])
                ds = splat(builder, load_half(builder, base, 0), 16)
                q_lo, q_hi = (builder.sitofp(q, v16f) for q in _decode_halves(builder, fmt, base))
                new = []
                for x_p, acc in zip(x_rows, accs):
                    xb = builder.gep(x_p, [builder.mul(b, i64(32))])
                    x_lo, x_hi = (load_at(builder, xb, i64(16 * h), v16f, align=4) for h in range(2))
                    block_sum = call_fma(builder, q_hi, x_hi, builder.fmul(q_lo, x_lo))
                    new.append(call_fma(builder, block_sum, ds, acc))
                return new

            def pair(i, accs):  # accs: even-block accumulators of every column, then odd-block ones
                b0 = builder.shl(i, i64(1))
                if PREFETCH_BYTES:
                    emit_prefetch(builder, builder.gep(row_p, [builder.mul(b0, i64(block_bytes))]), PREFETCH_BYTES)
                return block(b0, accs[:count]) + block(builder.add(b0, i64(1)), accs[count:])

            finals = carried_loop(builder, "row_dot", builder.ashr(nb, i64(1)), [zero] * (2 * count), pair)
            both = [builder.fadd(even, odd) for even, odd in zip(finals[:count], finals[count:])]
            totals = if_odd(builder, nb, both, lambda accs: block(builder.sub(nb, i64(1)), accs))
            store_columns(context, builder, tys[4], out_v, r, t0, [float_tree_sum(builder, v) for v in totals])

        column_groups(context, builder, (tys[6], args[6]), (tys[7], args[7]), ROW_DOT_GROUP, group)
        return context.get_dummy_value()

    return types.void(row, x, n_blocks, kind, out, r, t0, n_t), codegen


# ---------------------------------------------------------------------------------------------
# Q4_K (kquants.py, int8_kquants.py): 144 bytes, 256 weights in 8 sub-blocks of 32
#   byte 0    2      4            16                                 144
#        | d  | dmin | scales[12] | qs[128]                          |
#   group g < 4 = qs[32g .. 32g+31]: low nibbles = sub-block 2g, high nibbles = 2g+1
#   value = d * scale[s] * q - dmin * min[s], 6-bit scales and mins packed in 12 bytes s[0..11]:
#       j < 4:  scale = s[j] & 63                       min = s[j+4] & 63
#       j >= 4: scale = s[j+4] & 15 | s[j-4] >> 6 << 4  min = s[j+4] >> 4 | s[j] >> 6 << 4
#   (quants/kquants.py unpacks them one at a time: the scalar form of the same rule)
# ---------------------------------------------------------------------------------------------
def q4_k_scales_mins(builder, base):
    """The 8 scales and the 8 mins of the Q4_K / Q5_K block at `base` (i8*), <8 x i32> each.

    The rule above on the 12 bytes as three little-endian words a0, a1, a2 (byte j of a word is
    s[4w + j]), with general-purpose register operations, as ggml's `utmp` unpack does:

        scales 0..3 = a0 & 0x3f3f3f3f     scales 4..7 = a2 & 0x0f0f0f0f | (a0 >> 6 & 0x03030303) << 4
        mins   0..3 = a1 & 0x3f3f3f3f     mins   4..7 = a2 >> 4 & 0x0f0f0f0f | (a1 >> 6 & 0x03030303) << 4

    then one byte-to-dword widening of the 16 bytes. The scalar ALUs do the bit work while the
    vector units run the block's products: a one-column 8-bit Q4_K mat-vec block went from 52
    vector instructions (a <12 x i32> widening and shuffles) to 44."""
    words = [load_at(builder, base, i64(4 + 4 * w), I32, align=1) for w in range(3)]

    def mask(value, pattern):
        return builder.and_(value, ir.Constant(I32, pattern))

    def top2(word):  # bits 6-7 of each byte, moved to bits 4-5
        return builder.shl(mask(builder.lshr(word, ir.Constant(I32, 6)), 0x03030303), ir.Constant(I32, 4))

    scales_lo, mins_lo = mask(words[0], 0x3F3F3F3F), mask(words[1], 0x3F3F3F3F)
    scales_hi = builder.or_(mask(words[2], 0x0F0F0F0F), top2(words[0]))
    mins_hi = builder.or_(mask(builder.lshr(words[2], ir.Constant(I32, 4)), 0x0F0F0F0F), top2(words[1]))
    v4i32 = vector(I32, 4)
    packed = ir.Constant(v4i32, ir.Undefined)
    for lane, word in enumerate((scales_lo, scales_hi, mins_lo, mins_hi)):
        packed = builder.insert_element(packed, word, ir.Constant(I32, lane))
    scales, mins = halves(builder, builder.zext(builder.bitcast(packed, vector(I8, 16)), vector(I32, 16)))
    return scales, mins


# Columns per group in the K-quant float row dots (Q4_K: 2 zmm + 1 ymm accumulators per column;
# Q6_K: 2 zmm).
ROW_DOT_K_GROUP = 4


@intrinsic
def row_dot_q4_k(typingctx, row, x, x_sums, n_blocks, out, r, t0, n_t):
    """One row of Q4_K super-blocks (diagram above) dotted with every column t of float32 x, as
    one LLVM loop over the blocks per group of columns:

        out[t, r] = sum over blocks b, sub-blocks s < 8 of
            d * scale[s] * (q[s] . x[t, 256b + 32s : +32])  -  dmin * min[s] * x_sums[t, 8b + s]

    `row` uint8 (n_blocks * 144,), x float32 (B, n_blocks * 256), x_sums float32 (B, n_blocks * 8)
    the sums of x over each 32-value sub-block. The 8 scales and mins are unpacked as vectors
    (`q4_k_scales_mins`). Two zmm accumulators (even and odd sub-blocks) and an <8 x float> one for
    the mins per column stay in registers for the whole row (the fma_lanes version kept its lanes
    in memory: ~2 GB/s).
    """
    sig = types.void(row, x, x_sums, n_blocks, out, r, t0, n_t)

    def codegen(context, builder, signature, args):
        row_v, x_v, xs_v, nb_v, out_v, r_v = args[:6]
        tys = signature.args
        v16f, v16i32, v16i8, v8f = vector(F32, 16), vector(I32, 16), vector(I8, 16), vector(F32, 8)

        def pointers(t0, count):  # per column: (x row, x_sums row)
            ts = [builder.add(t0, i64(i)) for i in range(count)]
            return list(zip([row_ptr(context, builder, tys[1], x_v, t) for t in ts],
                            [row_ptr(context, builder, tys[2], xs_v, t) for t in ts]))

        def body(b, base, cols, values):  # per column: even acc, odd acc, min acc
            d = load_half(builder, base, 0)
            dmin = load_half(builder, base, 2)
            scale_i, min_i = q4_k_scales_mins(builder, base)
            scales = builder.fmul(builder.sitofp(scale_i, v8f), splat(builder, d, 8))
            mins = builder.fmul(builder.sitofp(min_i, v8f), splat(builder, dmin, 8))
            undef8 = ir.Constant(v8f, ir.Undefined)
            lane_scales = [builder.shuffle_vector(scales, undef8, indices([s] * 16)) for s in range(8)]
            # q[g][c][h]: the 16 weights c of sub-block 2g + h, as float
            q = []
            for g in range(4):
                q.append([])
                for c in range(2):
                    qb = builder.zext(load_at(builder, base, i64(16 + 32 * g + 16 * c), v16i8), v16i32)
                    nibbles = (builder.and_(qb, const_vector(I32, [15] * 16)),
                               builder.lshr(qb, const_vector(I32, [4] * 16)))
                    q[g].append([builder.sitofp(nib, v16f) for nib in nibbles])
            new = []
            for k, (x_row, x_sums_row) in enumerate(cols):
                acc0, acc1, min_in = values[3 * k: 3 * k + 3]
                x_sums_b = load_at(builder, x_sums_row, builder.mul(b, i64(8)), v8f, align=4)
                min_out = call_fma(builder, mins, x_sums_b, min_in)
                xb = builder.gep(x_row, [builder.mul(b, i64(256))])
                accs = [acc0, acc1]
                for g in range(4):
                    sums = [None, None]  # sub-block 2g (low nibbles), 2g+1 (high nibbles)
                    for c in range(2):
                        for h in range(2):
                            xv = load_at(builder, xb, i64(64 * g + 32 * h + 16 * c), v16f, align=4)
                            qf = q[g][c][h]
                            sums[h] = builder.fmul(qf, xv) if c == 0 else call_fma(builder, qf, xv, sums[h])
                    for h in range(2):
                        accs[h] = call_fma(builder, sums[h], lane_scales[2 * g + h], accs[h])
                new += [accs[0], accs[1], min_out]
            return new

        def finish(accs):
            acc0, acc1, acc_min = accs
            return builder.fsub(float_tree_sum(builder, builder.fadd(acc0, acc1)), float_tree_sum(builder, acc_min))

        block_loop(context, builder, name="q4k", row=data_ptr(context, builder, tys[0], row_v),
                   n_blocks=as_i64(context, builder, nb_v, tys[3]), block_bytes=144, prefetch_lines=3,
                   columns=((tys[6], args[6]), (tys[7], args[7])), group=ROW_DOT_K_GROUP, pointers=pointers,
                   inits=[ir.Constant(v16f, [0.0] * 16)] * 2 + [ir.Constant(v8f, [0.0] * 8)], body=body,
                   finish=finish, out=(tys[4], out_v, as_i64(context, builder, r_v, tys[5])))
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def row_dot_q6_k(typingctx, row, x, n_blocks, out, r, t0, n_t):
    """One row of Q6_K super-blocks dotted with every column of float32 x, as one LLVM loop over the
    blocks per group of columns.

        byte 0                  128             192               208  210
             | ql[128]          | qh[64]        | scales[16] int8 | d  |

    For half n < 2 and k < 2 the 16-byte slices A = ql[64n+16k:], C = ql[64n+32+16k:],
    H = qh[32n+16k:] hold four 16-weight sub-blocks, one zmm each:

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
        v16f, v16i32, v16i8 = vector(F32, 16), vector(I32, 16), vector(I8, 16)

        def lanes(v):
            return const_vector(I32, [v] * 16)

        undef16 = ir.Constant(v16f, ir.Undefined)

        def pointers(t0, count):
            return [row_ptr(context, builder, tys[1], x_v, builder.add(t0, i64(i))) for i in range(count)]

        def body(b, base, x_rows, values):  # per column: two accumulators, used in turn
            d = load_half(builder, base, 208)
            scales = builder.fmul(builder.sitofp(builder.sext(load_at(builder, base, i64(192), v16i8), v16i32), v16f),
                                  splat(builder, d, 16))
            steps = []  # (weights as float, x offset, scale vector) in accumulation order
            for n in range(2):
                for k in range(2):
                    a = builder.zext(load_at(builder, base, i64(64 * n + 16 * k), v16i8), v16i32)
                    c = builder.zext(load_at(builder, base, i64(64 * n + 32 + 16 * k), v16i8), v16i32)
                    h = builder.zext(load_at(builder, base, i64(128 + 32 * n + 16 * k), v16i8), v16i32)
                    for j, (src, nibble_shift) in enumerate(((a, 0), (c, 0), (a, 4), (c, 4))):
                        low = builder.and_(builder.lshr(src, lanes(nibble_shift)), lanes(15))
                        high = builder.shl(builder.and_(builder.lshr(h, lanes(2 * j)), lanes(3)), lanes(4))
                        w = builder.sitofp(builder.sub(builder.or_(low, high), lanes(32)), v16f)
                        s = builder.shuffle_vector(scales, undef16, lanes(8 * n + 2 * j + k))
                        steps.append((w, 128 * n + 32 * j + 16 * k, s))
            new = []
            for i, x_row in enumerate(x_rows):
                xb = builder.gep(x_row, [builder.mul(b, i64(256))])
                accs = list(values[2 * i: 2 * i + 2])
                for turn, (w, x_off, s) in enumerate(steps):
                    xv = load_at(builder, xb, i64(x_off), v16f, align=4)
                    accs[turn & 1] = call_fma(builder, builder.fmul(w, xv), s, accs[turn & 1])
                new += accs
            return new

        block_loop(context, builder, name="q6k", row=data_ptr(context, builder, tys[0], row_v),
                   n_blocks=as_i64(context, builder, nb_v, tys[2]), block_bytes=210, prefetch_lines=4,
                   columns=((tys[5], args[5]), (tys[6], args[6])), group=ROW_DOT_K_GROUP, pointers=pointers,
                   inits=[ir.Constant(v16f, [0.0] * 16)] * 2, body=body,
                   finish=lambda accs: float_tree_sum(builder, builder.fadd(accs[0], accs[1])),
                   out=(tys[3], out_v, as_i64(context, builder, r_v, tys[4])))
        return context.get_dummy_value()

    return sig, codegen


FLOAT_KINDS = ("f32", "f16", "bf16")


@intrinsic
def row_dot_float(typingctx, row, x, kind, out, r, t0, n_t):
    """out[t, r] = row . x[t] for an unquantized row (`kind` "f32": float32 (n,), "f16"/"bf16":
    uint16 (n,): | w0 | w1 | ... | w(n-1) |, no blocks) and every column t of x float32 (B, n),
    n any length.

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
        v16f = vector(F32, 16)
        elem = F32 if fmt == "f32" else I16
        row_arr = context.make_array(tys[0])(context, builder, row_v)
        row_p = builder.bitcast(row_arr.data, elem.as_pointer())
        n = builder.extract_value(row_arr.shape, 0)
        r = as_i64(context, builder, r_v, tys[4])
        zero = ir.Constant(v16f, [0.0] * 16)

        def widen(w):
            """Loaded weights (float32, or fp16 / bf16 bits as i16, scalar or <16 x >) as float32."""
            if fmt == "f32":
                return w
            is_vector = isinstance(w.type, ir.VectorType)

            def of(elem):
                return vector(elem, 16) if is_vector else elem

            if fmt == "f16":
                return builder.fpext(builder.bitcast(w, of(F16)), of(F32))
            sixteen = ir.Constant(of(I32), [16] * 16 if is_vector else 16)
            return builder.bitcast(builder.shl(builder.zext(w, of(I32)), sixteen), of(F32))

        def group(t0, count):
            x_rows = [row_ptr(context, builder, tys[1], x_v, builder.add(t0, i64(i))) for i in range(count)]

            def chunk(i, accs):
                k = builder.shl(i, i64(5))
                emit_prefetch(builder, builder.gep(row_p, [k]), PREFETCH_BYTES)
                w = [widen(load_at(builder, row_p, builder.add(k, i64(16 * h)), vector(elem, 16), align=2))
                     for h in range(2)]
                new = []
                for j, x_p in enumerate(x_rows):
                    for h in range(2):
                        xv = load_at(builder, x_p, builder.add(k, i64(16 * h)), v16f, align=4)
                        new.append(call_fma(builder, w[h], xv, accs[2 * j + h]))
                return new

            n_chunks = builder.ashr(n, i64(5))
            finals = carried_loop(builder, "row_dot_float", n_chunks, [zero] * (2 * count), chunk)
            sums = [float_tree_sum(builder, builder.fadd(finals[2 * j], finals[2 * j + 1])) for j in range(count)]
            done = builder.shl(n_chunks, i64(5))

            def one(i, totals):
                k = builder.add(done, i)
                w = widen(builder.load(builder.gep(row_p, [k])))
                return [call_fma(builder, w, builder.load(builder.gep(x_p, [k])), total)
                        for x_p, total in zip(x_rows, totals)]

            sums = carried_loop(builder, "row_dot_float.tail", builder.sub(n, done), sums, one)
            store_columns(context, builder, tys[3], out_v, r, t0, sums)

        column_groups(context, builder, (tys[5], args[5]), (tys[6], args[6]), ROW_DOT_GROUP, group)
        return context.get_dummy_value()

    return types.void(row, x, kind, out, r, t0, n_t), codegen
