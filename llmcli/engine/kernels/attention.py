"""Register tiles for attention over a float KV cache (f32, or f16 bits as uint16), as LLVM IR.

A decoded token's query heads that share one key/value head (grouped-query attention) read the
same keys and values; these tiles read each key and value once for up to `HEAD_GROUP` heads and
keep every partial sum in a register for a whole pass over the head dimension or the positions.
Written in numba the same loops kept their sums in memory and widened each fp16 key once per
head. 1 thread, f16 cache, one layer's decode attention of one token:

    shape                                               numba loops        tiles
    demo (Dh 256, 1 x 4 heads), 192 positions, warm     6.7 + 6.8 us       3.7 + 3.8 us (scores + values)
    Llama-3.2-1B (Dh 64, 8 x 4 heads), 4000 positions   920 us warm,       432 us warm,
                                                        1140 us cold       760 us cold

(with `ops._softmax_weights` in simple loops). A cold cache is what a model sees: the weights
streamed between two layers evict the keys and values. Software prefetch did not pay here: the
runs of the next 8 channels (as the numba loops prefetched), the next 1-8 tiles along a channel,
the next sequence's keys and values spread over a task, none moved the cold times beyond the
noise; a short context's attention stays bound by that read (the demo, 8 sequences at ~150
positions: ~20 us per sequence and layer before and after; a bare read of the bytes 10.6 us).

The cache layouts they read (engine.kv_cache, one key/value head of one sequence):

    keys   (Dh, n_slots)  transposed:  keys[d, s] = channel d of the key in slot s
           row d:  | s0 | s1 | s2 | ... |     16 slots = one <16 x float> after widening
    values (n_slots, Dv):  values[s, c] = channel c of the value in slot s
           row s:  | c0 | c1 | ... | c(Dv-1) |

`key_scores`: scores[i, j0 + j] = q[i] . keys[:, slot + j], for the heads i of q (G, Dh) and
    j < m. Tiles of 64 slots (4 vectors) x up to 4 heads: 16 sums, each over d in order (one FMA
    per channel), so a score never depends on which tile or head group computed it.
`value_sums`: acc[i, c] += sum_j weights[i, j0 + j] * values[slot + j, c], for j < m in order.
    Tiles of 64 channels x up to 4 heads.
Both end with one vector under a lane mask where m (keys) or Dv (values) is not a multiple of 16:
masked loads and stores, so no lane touches memory past the run.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from .llvm_ir import (F16, F32, I16, I32, I64, as_i64, call_fma, carried_loop, column_groups, const_vector, data_ptr,
                      declare, i64, row_ptr, splat, vector)

LANES = 16  # floats per vector
HEAD_GROUP = 4  # query heads per tile (then 2, then 1 for the rest)
TILE_VECTORS = 4  # vectors per tile: 64 slots of keys, 64 channels of values


def _element(cache_ty):
    """The LLVM type of a cache array's elements (None: not a float cache)."""
    return {types.float32: F32, types.uint16: I16}.get(cache_ty.dtype)


def _widen(builder, cache_ty, v):
    """Loaded cache elements (float32, or fp16 bits as i16) as <n x float>."""
    if cache_ty.dtype == types.float32:
        return v
    return builder.fpext(builder.bitcast(v, vector(F16, v.type.count)), vector(F32, v.type.count))


def _head_groups(context, builder, emit, n_heads):
    """emit(h0, count) for the heads in groups of HEAD_GROUP, then 2, then 1."""
    column_groups(context, builder, (types.int64, i64(0)), (types.int64, n_heads), HEAD_GROUP, emit)


def _tile_widths(builder, n_items, emit):
    """emit(first, vectors, mask) over items 0 .. n_items - 1: tiles of TILE_VECTORS vectors, then
    single vectors, then the last n_items % LANES items as one vector under a lane mask (mask
    None: every lane)."""
    wide = LANES * TILE_VECTORS
    n_wide = builder.sdiv(n_items, i64(wide))
    carried_loop(builder, "tiles", n_wide, [], lambda k, _: emit(builder.mul(k, i64(wide)), TILE_VECTORS, None) or [])
    done = builder.mul(n_wide, i64(wide))
    n_narrow = builder.sdiv(builder.sub(n_items, done), i64(LANES))
    carried_loop(builder, "vectors", n_narrow,
                 [], lambda k, _: emit(builder.add(done, builder.mul(k, i64(LANES))), 1, None) or [])
    done = builder.add(done, builder.mul(n_narrow, i64(LANES)))
    left = builder.sub(n_items, done)
    with builder.if_then(builder.icmp_signed(">", left, i64(0))):
        lanes = const_vector(I64, range(LANES))
        emit(done, 1, builder.icmp_signed("<", lanes, splat(builder, left, LANES)))


_NAMES = {F32: "f32", I16: "i16"}  # LLVM's names of the element types in intrinsic names


def _load(builder, base, offset, elem, mask):
    """<LANES x elem> at base + offset (elements), the lanes off in `mask` read as 0 and not touched."""
    vty = vector(elem, LANES)
    p = builder.bitcast(builder.gep(base, [offset]), vty.as_pointer())
    if mask is None:
        return builder.load(p, align=2)
    fn = declare(builder, f"llvm.masked.load.v{LANES}{_NAMES[elem]}.p0", vty, [p.type, I32, mask.type, vty])
    return builder.call(fn, [p, ir.Constant(I32, 2), mask, ir.Constant(vty, [0] * LANES if elem is I16 else [0.0] * LANES)])


def _store(builder, value, base, offset, mask):
    """Store a <LANES x float> at base + offset (elements), only the lanes on in `mask`."""
    p = builder.bitcast(builder.gep(base, [offset]), value.type.as_pointer())
    if mask is None:
        builder.store(value, p, align=4)
        return
    fn = declare(builder, f"llvm.masked.store.v{LANES}f32.p0", ir.VoidType(), [value.type, p.type, I32, mask.type])
    builder.call(fn, [value, p, ir.Constant(I32, 4), mask])


@intrinsic
def key_scores(typingctx, q, keys, slot, m, scores, j0):
    """See the module docstring: q (G, Dh) float32, keys (Dh, n_slots), scores (G, >= j0 + m)."""
    if _element(keys) is None:
        return None

    def codegen(context, builder, signature, args):
        q_ty, keys_ty, slot_ty, m_ty, scores_ty, j0_ty = signature.args
        q_v, keys_v, slot_v, m_v, scores_v, j0_v = args
        elem = _element(keys_ty)
        v16 = vector(F32, LANES)
        q_arr = context.make_array(q_ty)(context, builder, q_v)
        n_heads, head_dim = (builder.extract_value(q_arr.shape, k) for k in range(2))
        slot, m = as_i64(context, builder, slot_v, slot_ty), as_i64(context, builder, m_v, m_ty)
        j0 = as_i64(context, builder, j0_v, j0_ty)
        keys_arr = context.make_array(keys_ty)(context, builder, keys_v)
        key_row_elems = builder.udiv(builder.extract_value(keys_arr.strides, 0), i64(keys_ty.dtype.bitwidth // 8))
        keys_p = data_ptr(context, builder, keys_ty, keys_v)

        def heads(h0, count):
            q_rows = [row_ptr(context, builder, q_ty, q_v, builder.add(h0, i64(i))) for i in range(count)]

            def tile(first, vectors, mask):
                base = builder.add(slot, first)

                def channel(d, sums):
                    row = builder.add(builder.mul(d, key_row_elems), base)
                    k = [_widen(builder, keys_ty, _load(builder, keys_p, builder.add(row, i64(LANES * c)), elem, mask))
                         for c in range(vectors)]
                    new = []
                    for i, q_p in enumerate(q_rows):
                        qd = splat(builder, builder.load(builder.gep(q_p, [d])), LANES)
                        new += [call_fma(builder, qd, k[c], sums[i * vectors + c]) for c in range(vectors)]
                    return new

                zero = ir.Constant(v16, [0.0] * LANES)
                sums = carried_loop(builder, "key_scores", head_dim, [zero] * (count * vectors), channel)
                for i in range(count):
                    out = row_ptr(context, builder, scores_ty, scores_v, builder.add(h0, i64(i)))
                    for c in range(vectors):
                        _store(builder, sums[i * vectors + c], out, builder.add(builder.add(j0, first), i64(LANES * c)),
                               mask)

            _tile_widths(builder, m, tile)

        _head_groups(context, builder, heads, n_heads)
        return context.get_dummy_value()

    return types.void(q, keys, slot, m, scores, j0), codegen


@intrinsic
def value_sums(typingctx, weights, j0, values, slot, m, acc):
    """See the module docstring: weights (G, >= j0 + m) float32, values (n_slots, Dv), acc (G, Dv)."""
    if _element(values) is None:
        return None

    def codegen(context, builder, signature, args):
        w_ty, j0_ty, values_ty, slot_ty, m_ty, acc_ty = signature.args
        w_v, j0_v, values_v, slot_v, m_v, acc_v = args
        elem = _element(values_ty)
        acc_arr = context.make_array(acc_ty)(context, builder, acc_v)
        n_heads, head_dim_v = (builder.extract_value(acc_arr.shape, k) for k in range(2))
        slot, m = as_i64(context, builder, slot_v, slot_ty), as_i64(context, builder, m_v, m_ty)
        j0 = as_i64(context, builder, j0_v, j0_ty)

        def heads(h0, count):
            w_rows = [row_ptr(context, builder, w_ty, w_v, builder.add(h0, i64(i))) for i in range(count)]
            acc_rows = [row_ptr(context, builder, acc_ty, acc_v, builder.add(h0, i64(i))) for i in range(count)]

            def tile(first, vectors, mask):
                def position(j, sums):
                    value_p = row_ptr(context, builder, values_ty, values_v, builder.add(slot, j))
                    v = [_widen(builder, values_ty, _load(builder, value_p, builder.add(first, i64(LANES * c)), elem, mask))
                         for c in range(vectors)]
                    new = []
                    for i, w_p in enumerate(w_rows):
                        w = splat(builder, builder.load(builder.gep(w_p, [builder.add(j0, j)])), LANES)
                        new += [call_fma(builder, w, v[c], sums[i * vectors + c]) for c in range(vectors)]
                    return new

                offsets = [builder.add(first, i64(LANES * c)) for c in range(vectors)]
                inits = [_load(builder, p, at, F32, mask) for p in acc_rows for at in offsets]
                sums = carried_loop(builder, "value_sums", m, inits, position)
                for i, p in enumerate(acc_rows):
                    for c, at in enumerate(offsets):
                        _store(builder, sums[i * vectors + c], p, at, mask)

            _tile_widths(builder, head_dim_v, tile)

        _head_groups(context, builder, heads, n_heads)
        return context.get_dummy_value()

    return types.void(weights, j0, values, slot, m, acc), codegen
