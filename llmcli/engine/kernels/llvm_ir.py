"""The pieces every hand-written LLVM IR kernel is built from (simd.py, int8.py, int8_kquants.py).

Why hand-written IR at all: on this numba/LLVM the SLP vectoriser is off, constant-trip loops are
fully unrolled before the loop vectoriser sees them and the accumulators may alias the weight
bytes, so the kernels' inner loops written in numba stayed scalar (common.py). The intrinsics emit
the vector instructions themselves; what they all need is here, once:

- types and constants: `I8` .. `F32`, `vector`, `i64`, `const_vector`, `indices` (shuffle masks);
- memory: `data_ptr`, `row_ptr`, `load_at`, `load_half` (a block's fp16 scale as float),
  `emit_prefetch` (how far ahead and into which cache: `PREFETCH_BYTES`, `ROW_PREFETCH_BYTES`);
- lanes: `splat`, `concat`, `halves`, `tree_reduce`, `pairwise`, `float_tree_sum`, `call_fma`, `declare`;
- control flow: `carried_loop` (a loop with its values in registers), `if_odd` (the lone last
  block of a row read in pairs), `join_values` (phis), `column_groups` and `store_columns` (B
  activation rows at once), `block_loop` (one weight row, one block per trip, every column of a
  group).

Columns. Every row-dot intrinsic dots one weight row with activation rows ("columns" of the
product) t0 .. t0 + n_t - 1 at once: X (B, n) and out (B, n_rows) are 2-D, and the intrinsic
writes out[t, r] for those t (its last two arguments are t0, n_t). A row's weights are read and
decoded once per group of columns and feed one FMA chain per column, each with its own
accumulators: column t's arithmetic is exactly the single mat-vec's (B = 1 is the same code),
whatever B is and whichever group t falls in. Columns go in groups of `group` (a power of two),
the remainder in groups of group/2, ..., 1.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils

I8, I16, I32, I64 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64)
F16, F32, F64 = ir.HalfType(), ir.FloatType(), ir.DoubleType()
I8_PTR = I8.as_pointer()

# How far ahead of the block being read the Q8_0-family row kernels (int8.py) and `simd.prefetch`'s
# callers prefetch, into L1 (0: no prefetch): past the next 4 KiB page boundary, where the
# hardware prefetcher stops. 2-8 KiB measured alike; 0-1 KiB ~20 % slower. (`block_loop`'s
# setting below made the Q8_0 row kernel 2x slower: the demo's output matrix 27.8 -> 13.1 GB/s.)
PREFETCH_BYTES = 4096
# Where a prefetch puts the line: llvm.prefetch's locality 3 (prefetcht0: L1 and outward) or 2
# (prefetcht1: L2 and outward).
INTO_L1, INTO_L2 = 3, 2
# `block_loop`'s rows (the 8-bit K-quant, IQ and ternary kernels; simd.py's float Q4_K/Q6_K rows)
# prefetch further ahead and only into L2, so that their Q8_K activations (1.1-1.3 bytes per
# weight with the block sums) stay in L1 for the whole row: weights prefetched into L1 evicted
# them from long rows, such as a 7B's ffn_down (18944 columns: 21 KiB of activations; L1 holds
# 32 KiB here). Qwen2.5-7B Q4_K_M, 1 thread, GB/s of weights (a matrix copy in memory, best of
# 20): ffn_down Q6_K 17.1 -> 31.8, ffn_down Q4_K 19.4 -> 25.5, the 3584-wide rows and the 1B's
# 8192-wide ones unchanged or better (output Q6_K 28.1 -> 31.3); 8 KiB ahead and prefetcht2
# measured alike.
ROW_PREFETCH_BYTES, ROW_PREFETCH_INTO = 16384, INTO_L2


def vector(elem, n: int) -> ir.VectorType:
    return ir.VectorType(elem, n)


def i64(value: int) -> ir.Constant:
    return ir.Constant(I64, value)


def const_vector(elem, values) -> ir.Constant:
    """<len(values) x elem> constant."""
    values = list(values)
    return ir.Constant(ir.VectorType(elem, len(values)), values)


def indices(values) -> ir.Constant:
    """A shuffle mask: <len(values) x i32>."""
    return const_vector(I32, values)


def as_i64(context, builder, value, ty):
    """A numba argument of type `ty` as an LLVM i64."""
    return context.cast(builder, value, ty, types.int64)


# ---------------------------------------------------------------------------------------------
# memory
# ---------------------------------------------------------------------------------------------
def data_ptr(context, builder, aryty, ary):
    """Pointer to element 0 of a numba array argument (element-typed)."""
    return context.make_array(aryty)(context, builder, ary).data


def row_ptr(context, builder, aryty, ary, t):
    """Pointer to ary[t, 0] (element-typed) of a 2-D array, t an i64."""
    a = context.make_array(aryty)(context, builder, ary)
    p = builder.gep(builder.bitcast(a.data, I8_PTR), [builder.mul(t, builder.extract_value(a.strides, 0))])
    return builder.bitcast(p, a.data.type)


def load_at(builder, base, offset, vty, align=1):
    """The `vty` value at base + offset (offset an LLVM i64, counted in base's elements)."""
    return builder.load(builder.bitcast(builder.gep(base, [offset]), vty.as_pointer()), align=align)


def load_half(builder, base, offset: int):
    """The little-endian fp16 at byte `offset` of an i8* block, as float (every block's scale)."""
    return builder.fpext(load_at(builder, base, i64(offset), F16), F32)


def declare(builder, name: str, ret, args):
    """The LLVM function (or intrinsic) `name`, declared once per module."""
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(ret, list(args)), name)


def emit_prefetch(builder, base, offset, into=INTO_L1):
    """Prefetch the cache line at i8* base + offset (bytes) for reading, into the cache level
    `into` (INTO_L1 or INTO_L2) and those beyond it."""
    fn = declare(builder, "llvm.prefetch.p0i8", ir.VoidType(), [I8_PTR, I32, I32, I32])
    p = builder.gep(builder.bitcast(base, I8_PTR), [i64(offset) if isinstance(offset, int) else offset])
    builder.call(fn, [p, ir.Constant(I32, 0), ir.Constant(I32, into), ir.Constant(I32, 1)])


# ---------------------------------------------------------------------------------------------
# lanes
# ---------------------------------------------------------------------------------------------
def splat(builder, value, n: int):
    """<n x T> with every lane = value (one insert and a broadcast shuffle)."""
    undef = ir.Constant(ir.VectorType(value.type, n), ir.Undefined)
    one = builder.insert_element(undef, value, ir.Constant(I32, 0))
    return builder.shuffle_vector(one, undef, indices([0] * n))


def concat(builder, a, b):
    """<2n x T>: the lanes of a, then those of b."""
    n = a.type.count
    return builder.shuffle_vector(a, b, indices(range(2 * n)))


def halves(builder, v):
    """[first half, second half] of a vector's lanes."""
    n = v.type.count // 2
    undef = ir.Constant(v.type, ir.Undefined)
    return [builder.shuffle_vector(v, undef, indices(range(h * n, (h + 1) * n))) for h in range(2)]


def tree_reduce(builder, vec, op):
    """op over a vector's lanes (their count a power of two) as a tree: the two halves combined
    log2(n) times, not n dependent scalar steps. Returns lane 0 of the last step."""
    size = vec.type.count
    while size > 1:
        half = size // 2
        undef = ir.Constant(ir.VectorType(vec.type.element, size), ir.Undefined)
        lo = builder.shuffle_vector(vec, undef, indices(range(half)))
        hi = builder.shuffle_vector(vec, undef, indices(range(half, size)))
        vec = op(lo, hi)
        size = half
    return builder.extract_element(vec, ir.Constant(I32, 0))


def pairwise(values, op):
    """op-combine a list of values pairwise (a balanced tree), e.g. op = builder.add."""
    while len(values) > 1:
        values = [op(a, c) for a, c in zip(values[0::2], values[1::2])] + ([values[-1]] if len(values) % 2 else [])
    return values[0]


def float_tree_sum(builder, vec):
    """The sum of a <n x float> value's lanes, as a tree of vector adds (`tree_reduce`)."""
    return tree_reduce(builder, vec, builder.fadd)


def call_fma(builder, a, b, c):
    """llvm.fma on floats or doubles or vectors of them: a * b + c rounded once."""
    ty = c.type
    element = {F32: "f32", F64: "f64"}[ty.element if isinstance(ty, ir.VectorType) else ty]
    name = f"llvm.fma.v{ty.count}{element}" if isinstance(ty, ir.VectorType) else f"llvm.fma.{element}"
    return builder.call(declare(builder, name, ty, [ty] * 3), [a, b, c])


# ---------------------------------------------------------------------------------------------
# control flow
# ---------------------------------------------------------------------------------------------
def carried_loop(builder, name, n_trips, inits, body):
    """for i in 0..n_trips-1: values = body(i, values), as one LLVM loop with `values` (a list of
    LLVM values) carried in registers (phis). Returns the final values (`inits` if n_trips <= 0)."""
    pre = builder.block
    loop = builder.append_basic_block(f"{name}.loop")
    done = builder.append_basic_block(f"{name}.done")
    builder.cbranch(builder.icmp_signed(">", n_trips, i64(0)), loop, done)
    builder.position_at_end(loop)
    i = builder.phi(I64)
    i.add_incoming(i64(0), pre)
    phis = [builder.phi(v.type) for v in inits]
    for phi, v in zip(phis, inits):
        phi.add_incoming(v, pre)
    values = body(i, phis)
    i_next = builder.add(i, i64(1))
    end = builder.block
    i.add_incoming(i_next, end)
    for phi, v in zip(phis, values):
        phi.add_incoming(v, end)
    builder.cbranch(builder.icmp_signed("<", i_next, n_trips), loop, done)
    builder.position_at_end(done)
    return join_values(builder, [(inits, pre), (values, end)])


def if_odd(builder, n, values, step):
    """`values`, or step(values) when the i64 n is odd: rows read two blocks per loop trip end
    with their lone last block this way."""
    odd = builder.icmp_signed("!=", builder.and_(n, i64(1)), i64(0))
    before = builder.block
    with builder.if_then(odd):
        stepped = step(values)
        odd_end = builder.block
    return join_values(builder, [(stepped, odd_end), (values, before)])


def join_values(builder, arrivals):
    """Where control arrives from several blocks, [(values, block), ...] (lists equally long):
    per position, a phi of the value each block brings. All phis first: LLVM wants them at the
    top of the block."""
    joined = []
    for vals in zip(*(values for values, _ in arrivals)):
        phi = builder.phi(vals[0].type)
        for value, (_, block) in zip(vals, arrivals):
            phi.add_incoming(value, block)
        joined.append(phi)
    return joined


def store_columns(context, builder, out_ty, out_v, r, t0, values):
    """out[t0 + i, r] = values[i] (out a 2-D float32 array, r and t0 i64)."""
    for i, v in enumerate(values):
        p = row_ptr(context, builder, out_ty, out_v, builder.add(t0, i64(i)))
        builder.store(v, builder.gep(p, [r]))


def column_groups(context, builder, first, n_columns, group, emit):
    """emit(t0, count) for columns first..first+n_columns-1 (`first`, `n_columns`: the intrinsic's
    t0 and n_t arguments as (type, value) pairs): a loop over whole groups of `group`, then what is
    left as at most one group each of group/2, group/4, ..., 1."""
    start = as_i64(context, builder, first[1], first[0])
    end = builder.add(start, as_i64(context, builder, n_columns[1], n_columns[0]))
    pre = builder.block
    head = builder.append_basic_block("columns.head")
    body = builder.append_basic_block("columns.body")
    rest = builder.append_basic_block("columns.rest")
    builder.branch(head)
    builder.position_at_end(head)
    t = builder.phi(I64)
    t.add_incoming(start, pre)
    t_next = builder.add(t, i64(group))
    builder.cbranch(builder.icmp_signed("<=", t_next, end), body, rest)
    builder.position_at_end(body)
    emit(t, group)
    t.add_incoming(t_next, builder.block)
    builder.branch(head)
    builder.position_at_end(rest)
    left = builder.sub(end, t)  # < group
    size = group // 2
    while size >= 1:
        has_group = builder.icmp_signed("!=", builder.and_(left, i64(size)), i64(0))
        with builder.if_then(has_group):
            emit(builder.add(t, builder.and_(left, i64(-2 * size))), size)
        size //= 2


def block_loop(context, builder, *, name, row, n_blocks, block_bytes, prefetch_lines, columns, group,
               pointers, inits, body, finish, out):
    """One weight row dotted with a range of columns, one block per loop trip:

        for each group of columns (`column_groups`; `columns` = the intrinsic's (t0, n_t) as
        ((type, value), (type, value))):
            cols = pointers(t0, count)    per column t0 .. t0 + count - 1 of the group, what `body`
                                          reads of it (once, before the loop)
            accs = inits * len(cols)
            for b < n_blocks:  base = row + b * block_bytes (i8*), prefetch `prefetch_lines` cache
                               lines ROW_PREFETCH_BYTES ahead (into L2), accs = body(b, base, cols, accs)
            out[t, r] = finish(that column's accs)            (`out` = (type, value, r as i64))

    `body` returns the new accumulators column by column, len(inits) per column."""
    out_ty, out_v, r = out
    n = len(inits)

    def emit(t0, count):
        cols = pointers(t0, count)

        def step(b, accs):
            base = builder.gep(row, [builder.mul(b, i64(block_bytes))])
            for line in range(prefetch_lines if ROW_PREFETCH_BYTES else 0):
                emit_prefetch(builder, base, ROW_PREFETCH_BYTES + 64 * line, ROW_PREFETCH_INTO)
            return body(b, base, cols, accs)

        finals = carried_loop(builder, name, n_blocks, list(inits) * count, step)
        store_columns(context, builder, out_ty, out_v, r, t0, [finish(finals[n * i: n * i + n]) for i in range(count)])

    column_groups(context, builder, columns[0], columns[1], group, emit)
