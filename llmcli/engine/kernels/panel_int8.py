"""Q8_0, Q4_0, Q5_0 and IQ4_NL weights repacked once, at load, into VNNI row panels, and the one kernel
that multiplies by them for any number of activation rows (B = 1 .. 16 decoded sequences, or a
short prompt); the integer GEMM's tiles are decoded from the same panels (`decode_panel_tile`).

Why: the B-column mat-vec (int8.py `row_dot_int8`) dots one weight row at a time, so per 32-weight
block and column it pays a `vpdpbusd` plus the conversion, scale product and FMA of that block's 8
int32 lanes, and a horizontal sum per row and column at the end. On the demo model's 262144 x 640
Q8_0 output matrix that made 8 columns cost 33-39 ms at 1 thread (~40 GMAC/s) where the prompt
GEMM (gemm_int8.py) reaches ~110 GMAC/s: at B = 8 the output projection was half of a step.
In panel order one zmm holds 16 rows x 4 consecutive codes, so a `vpdpbusd` against 4 activation
bytes broadcast serves 16 rows at once, the block's scale work is done once per 16 rows and no
horizontal sum is needed: 19.7 ms at 8 columns, 12.0 ms at 1 (row mat-vec 15.7), 27.8 ms at 16
(Xeon AVX512-VNNI, 1 thread, shared machine). llama.cpp repacks Q4_0/Q8_0/IQ4_NL the same way
for its CPU backend. The 4- and 5-bit types keep their nibbles (and 5th bits) packed (half the
bytes to stream) and split them in registers.

A packed matrix holds the same bytes as the GGUF rows, reordered (lossless, the same size):

    Q8_0 row r, block b        | d fp16 | qs[32] int8 |         (34 bytes; simd.py's diagram)
    Q4_0 / IQ4_NL row r, block b  | d fp16 | qs[16] |          (18 bytes; qs[i]: low nibble =
                                                                 weight i, high = weight 16 + i)
    Q5_0 row r, block b        | d fp16 | qh u32 | qs[16] |     (22 bytes; bit i of qh: the 5th
                                                                 bit of weight i)

    codes (P, K * 16) uint8 for Q8_0, (P, K * 8) for the 4-bit types, (P, K * 10) for Q5_0;
    P = ceil(n_rows / 16) panels of 16 rows:

    Q8_0, u = qs ^ 0x80 (unsigned), 8 zmm per block:
        panel p:  k4 = 0                      k4 = 1                          k4 = K/4 - 1
                 [r0 k0..3|r1 k0..3|..|r15 k0..3][r0 k4..7|r1 k4..7|..|r15 k4..7] .. [..]
                  <------- 64 bytes = 1 zmm ---->
        row 16p + j, code k at byte 64 (k // 4) + 4 j + k % 4   (gemm_int8.py's tile layout)

    Q4_0 / IQ4_NL / Q5_0, the qs bytes as they are, 4 zmm (256 bytes) per block b (S = 256 bytes
    per block, Q5_0 320):
        zmm m < 4 of block b:  [r0 qs[4m..4m+3] | r1 qs[4m..4m+3] | .. | r15 qs[4m..4m+3]]
        row 16p + j: byte S b + 64 m + 4 j + i = qs[4m + i] of its block b
        low nibbles of zmm m  = codes 32b + 4m .. 32b + 4m + 3       (the VNNI zmm of k4 = 8b + m)
        high nibbles of zmm m = codes 32b + 16 + 4m .. + 3           (the VNNI zmm of k4 = 8b + 4 + m)
        u = the nibble (Q4_0) or IQ4_NL's grid value + 128 looked up by it (`lookup16`)
    Q5_0 then 1 zmm of 5th bits:  [r0 qh | r1 qh | .. | r15 qh] at byte S b + 256 (row j's u32 at 4 j)
        VNNI zmm g (codes 4g .. 4g + 3 of each row) | 16 where bit 4g + i of the row's qh is set:
        byte g // 2 of each qh copied to its 4 bytes (vpshufb), tested against 1, 2, 4, 8 << 4 (g % 2)

    scales (P, n_blocks * 16) uint16: [p, 16 b + j] = d (fp16 bits) of row 16p + j, block b

Rows past the matrix's last one (in the last panel) are zero. Packing Q8_0 reuses the integer
GEMM's row decoder (`gemm_int8.store_row_codes`), so that code layout exists once.

Activations are ggml's Q8_0 blocks (gemm_int8.activations_q8_0, bit for bit int8.py's and
ggml's quantize_row_q8_0): xq int8 (B, K), xd float32 (B, K/32), xinit int32 (B, K/32) =
-offset * (sum of the block's xq), the offset of the unsigned codes (int8.CODE_OFFSET: 128, 8,
16, 128). Then, for each row r and column t, in block order:

    acc += float(xinit[t, b] + sum_k u[r, 32b + k] xq[t, 32b + k]) * (d_w[r, b] * xd[t, b])

(the block's integer sum times the product of the two scales, as ggml's vec_dot_*_q8_0 rounds
it) with the row's accumulator in one float lane of its own. A column's arithmetic does not depend
on the other columns, on B, on how columns are grouped or on the thread count: a sequence
decoded in a batch gets the bits it gets alone, and a mat-vec (B = 1) is the same code.

Row order (`panel_lanes_micro`, Q8_0 and Q5_0 layer matrices, engine/panels.py): the bits of
int8.py's row mat-vec, which keeps 16 float lanes per row, lane 8 h + g for the blocks b = h mod 2
(a zmm holds a block pair) and the codes 4g .. 4g + 3 of each:

    lane[h, g] += float(xinit[t, b] if g == 0 else 0  +  sum_{k < 4} u[r, 32b + 4g + k] xq[t, 32b + 4g + k])
                  * (d_w[r, b] * xd[t, b])                                    for b = h, h + 2, ...
    out[t, r] = ((S0 + S4) + (S2 + S6)) + ((S1 + S5) + (S3 + S7)),  S_g = lane[0, g] + lane[1, g]
                (llvm_ir.tree_reduce's order over the 16 lanes)

In panel order lane[h, g] of 16 rows is one zmm: the VNNI zmm g of block b, without adding the
groups together, gives each row's int32 for that lane. A pass takes one parity h and up to
LANE_COLUMNS columns (8 float accumulators each); the 16 zmm of a column go to a scratch row and
are added there in that order. Twice the float work of `panel_micro` per block, but no horizontal
sums and one block decode per 3 columns: the demo's 2048 x 640 Q5_0 at 1 thread, B = 1 40 -> 17 us,
B = 8 175 -> 93 us against the row mat-vec. Prompt rows of those matrices take this order.

Float64 sums (`panel_micro` with `wide`, the same matrices' decoded tokens, engine/panels.py
WIDE_DECODE): the block's integer sum as `panel_micro` makes it, times d_w * xd rounded to float32
(as above), added to the row's float64 accumulator (two <8 x double> per column), rounded to
float32 at the end:

    acc += double(xinit[t, b] + sum_k u[r, 32b + k] xq[t, 32b + k]) * double(d_w[r, b] * xd[t, b])
    out[t, r] = float(acc)

The product is exact in float64 (a 21-bit integer times a 24-bit float), so each step rounds once,
whether an FMA or a multiply and an add makes it, and `rows_wide` gives the same bits from the
GGUF rows. The row order pays 8 FMAs per block and column (an FMA and a vpdpbusd share one port
pair on Zen 4: 8 + 8 a block), this 2 (8 + 2): the demo's 2048 x 640 Q5_0 at 1 thread, warm,
B = 1 / 4 / 8: 28.5 / 80 / 155 us in row order, 26.5 / 57 / 112 us in float64.

`panel_micro` runs one panel (16 rows) x up to 8 columns: per block 8 int32 accumulators start at
xinit and take 8 `vpdpbusd` each, then 8 float accumulators (in registers over the whole row)
take one FMA each. Panels are read one after the other, one sequential stream of codes, prefetched
PANEL_PREFETCH_BYTES ahead; more than 8 columns take several passes over a panel (its K * 16 bytes,
10 KB for a Q8_0 K = 640, stay in L1 for the later ones). Few columns (B < 4) split their integer
sums over MIN_CHAINS independent vpdpbusd chains added at the block's end (exact: the same bits).
The demo's 178 MB output matrix, 1 thread (a plain read of it: ~4.2-4.6 ms, ~38 GB/s):

    B            1         2         4         8         16
    ms           4.4-4.8   4.4-4.9   4.4-5.1   5.2-6.0   12.6
    (2 panels x 6 columns before: 5.4, 6.7, 7.3, 10.6, 15.6)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

from ...gguf.constants import GGMLType
from ...quants.half import fp16_to_fp32
from ...quants.iquants import IQ4_GRID
from .common import serial_twin
from .gemm_int8 import quantize_q8_0_into, store_row_codes
from .int8 import HAS_VNNI, IQ4_CODES, QH_AT, QS_AT, code_offset, dot_u8_s8, lookup16
from .llvm_ir import (F16, F32, F64, I8, I16, I32, INTO_L1, INTO_L2, as_i64, call_fma, carried_loop, const_vector,
                      emit_prefetch, i64, indices, load_at, pairwise, row_ptr, splat, vector)

ROWS_PER_PANEL = 16
BLOCK = 32  # weights per block, every packed type
# Packed types (where the CPU has VNNI; without it the B-column mat-vec stays): their kind (int8.py's
# and gemm_int8.py's name) and the code bytes per row and block in a panel.
PANEL_KINDS = ({GGMLType.Q8_0: "q8_0", GGMLType.Q4_0: "q4_0", GGMLType.Q5_0: "q5_0", GGMLType.IQ4_NL: "iq4_nl"}
               if HAS_VNNI else {})
CODE_BYTES = {"q8_0": 32, "q4_0": 16, "q5_0": 20, "iq4_nl": 16}
# The float value of each code, as the type's decoder gives it before the scale (`rows_panels`).
CODE_VALUES = {"q8_0": np.arange(-128, 128, dtype=np.float32), "q4_0": np.arange(-8, 8, dtype=np.float32),
               "q5_0": np.arange(-16, 16, dtype=np.float32),
               "iq4_nl": np.asarray(IQ4_GRID, np.float32)}
# The micro-kernel: one panel x up to 8 columns = 8 float accumulators + 8 int32 ones (+ the block's
# codes and scales) of AVX-512's 32 registers. One panel at a time: the codes are one sequential
# stream (two panels' streams 10 KB apart, 2 x 6 columns, ran B = 2..8 10-30 % slower).
# Float64 sums take two accumulators a column, so 8 columns (16 + 8 int32 + the block's 8 codes)
# spill a little, yet one pass beats two: a Q5_0 block is then decoded once, not twice (the demo's
# 2048 x 640 Q5_0, 1 thread, cold, B = 7 / 8: 106 / 116 -> 97 / 109 us against at most 6 a pass;
# Q8_0, with nothing to decode, alike either way).
COLUMNS_PER_MICRO = 8
# Independent vpdpbusd chains a block keeps in flight at least (a lone column's one accumulator is
# split in this many; Zen 4: latency ~4 cycles, one zmm per cycle).
MIN_CHAINS = 4
# Panels per parallel work item (each item writes its own rows of out).
PANELS_PER_ITEM = 16
# The row-order micro-kernel (`panel_lanes_micro`): up to 3 columns x 8 float accumulators.
LANE_COLUMNS = 3
# A row mat-vec's float lanes per row (int8.py `row_dot_int8`: 8 per block, two blocks a vector).
ROW_LANES = 16
# How far ahead of the block being multiplied the codes are prefetched: past the next 4 KiB page,
# where the hardware prefetcher stops, and far enough that up to 8 columns' vpdpbusd work hides the
# latency (llvm_ir.PREFETCH_BYTES, 4 KiB, serves one column of row mat-vecs). The demo's output
# matrix, 1 thread, B = 8: 6.1 ms at 4 KiB, 5.2-5.5 at 8 KiB, 8-32 KiB alike within the noise.
PANEL_PREFETCH_BYTES = 8192
# From this many columns a `panel_micro` pass prefetches into L2 rather than L1, and
# `panel_lanes_micro` (8 float lanes per column: more work per byte) always does. Where a pass
# spends long on each block - many columns on this AMD EPYC (Zen 4, one zmm vpdpbusd per cycle as
# measured) - the codes prefetched into L1 8 KiB ahead stalled it. 1 thread, ms, L1 / L2:
#     demo output Q8_0, B  1          2          3          4          5           6          8           16
#                          5.7 / 7.1  5.2 / 7.1  6.0 / 6.9  6.3 / 6.2  10.9 / 5.5  8.7 / 6.3  13.3 / 8.3  23.3 / 16.3
#     demo ffn_up Q5_0 (row order, in the model), B = 1: 1.48 / 1.05 (a token: 13.9 / 12.5)
#     demo-Q4_0 layers at B = 1: L1 ahead (a token 10.7-10.9 against 12.2-12.4)
PANEL_L2_PREFETCH_COLUMNS = 4


@njit(parallel=True, cache=True, nogil=True)
def pack_q8_0(blocks, r0, codes, scales):
    """Rows r0 .. r0 + 16 * P - 1 of Q8_0 `blocks` (n_rows, n_blocks, 34) into panels 0 .. P - 1 of
    codes (P, K * 16) uint8 and scales (P, n_blocks * 16) uint16 (module docstring); rows past
    the matrix's end become zero. One panel per work item."""
    n_rows, n_blocks = blocks.shape[0], blocks.shape[1]
    flat = blocks.reshape(n_rows, n_blocks * blocks.shape[2])
    for p in prange(codes.shape[0]):
        for j in range(ROWS_PER_PANEL):
            r = r0 + ROWS_PER_PANEL * p + j
            present = store_row_codes(flat, r, n_blocks, "q8_0", codes, p, j)
            _store_scales(blocks, r, present, scales, p, j)


@njit(parallel=True, cache=True, nogil=True)
def pack_nibbles(blocks, r0, codes, scales, qs_at, qh_at):
    """`pack_q8_0` for Q4_0 / IQ4_NL / Q5_0 `blocks` (n_rows, n_blocks, block bytes), their qs bytes
    at qs_at, Q5_0's qh at qh_at (-1: none): codes (P, n_blocks * 16 * (16, or 20 with qh)) uint8,
    each row's qs (and qh) bytes moved 4 at a time to their panel places (module docstring)."""
    n_rows, n_blocks = blocks.shape[0], blocks.shape[1]
    stride = codes.shape[1] // n_blocks  # a block's bytes in a panel
    for p in prange(codes.shape[0]):
        for j in range(ROWS_PER_PANEL):
            r = r0 + ROWS_PER_PANEL * p + j
            present = r < n_rows
            for b in range(n_blocks):
                for m in range(4):
                    for i in range(4):
                        codes[p, stride * b + 64 * m + 4 * j + i] = blocks[r, b, qs_at + 4 * m + i] if present else 0
                if qh_at >= 0:
                    for i in range(4):
                        codes[p, stride * b + 256 + 4 * j + i] = blocks[r, b, qh_at + i] if present else 0
            _store_scales(blocks, r, present, scales, p, j)


@njit(inline="always")
def _store_scales(blocks, r, present, scales, p, j):
    """Row r's fp16 block scales (bytes 0, 1 of each block) into row j of panel p (0 past the end)."""
    for b in range(blocks.shape[1]):
        scales[p, ROWS_PER_PANEL * b + j] = (
            np.uint16(blocks[r, b, 0]) | (np.uint16(blocks[r, b, 1]) << 8) if present else 0)


def _panel_block_codes(builder, kind, panel, b):
    """The 8 VNNI zmm of block b of a panel (`panel` i8*, b i64): zmm g holds the 16 rows' codes
    32b + 4g .. 32b + 4g + 3 (the module docstring's layouts), as unsigned bytes."""
    v64i8 = vector(I8, 64)
    if kind == "q8_0":
        at = builder.shl(b, i64(9))
        return [load_at(builder, panel, builder.add(at, i64(64 * g)), v64i8) for g in range(8)]
    at = builder.mul(b, i64(CODE_BYTES[kind] * ROWS_PER_PANEL))
    nibble = const_vector(I8, [15] * 64)
    low, high = [], []
    for m in range(4):
        packed = load_at(builder, panel, builder.add(at, i64(64 * m)), v64i8)
        low.append(builder.and_(packed, nibble))
        high.append(builder.and_(builder.lshr(packed, const_vector(I8, [4] * 64)), nibble))
    codes = low + high
    if kind == "iq4_nl":
        codes = [lookup16(builder, IQ4_CODES, u) for u in codes]
    if kind == "q5_0":  # | 16 where the 5th bit is set: byte g // 2 of each row's qh, bits 4 (g % 2) + i
        qh = load_at(builder, panel, builder.add(at, i64(256)), v64i8)
        zero, fifth = ir.Constant(v64i8, [0] * 64), ir.Constant(v64i8, [16] * 64)
        for g in range(8):
            spread = builder.shuffle_vector(qh, qh, indices([4 * (i // 4) + g // 2 for i in range(64)]))
            bits = builder.and_(spread, const_vector(I8, [1 << (4 * (g % 2) + i % 4) for i in range(64)]))
            has_bit = builder.icmp_unsigned("!=", bits, zero)
            codes[g] = builder.or_(codes[g], builder.select(has_bit, fifth, zero))
    return codes


def _column_rows(context, builder, tys, args, ts):
    """The intrinsics' per-column operands: pointers to xq[t] (i8*), xd[t] and xinit[t] for each
    column t of ts (arguments 0, 1, 2)."""
    xq_rows = [builder.bitcast(row_ptr(context, builder, tys[0], args[0], t), I8.as_pointer()) for t in ts]
    return xq_rows, [row_ptr(context, builder, tys[1], args[1], t) for t in ts], \
        [row_ptr(context, builder, tys[2], args[2], t) for t in ts]


def _panel_rows(context, builder, tys, args, p):
    """Panel p's codes (i8*) and fp16 scales (i16*) (intrinsic arguments 5, 6)."""
    return (builder.bitcast(row_ptr(context, builder, tys[5], args[5], p), I8.as_pointer()),
            builder.bitcast(row_ptr(context, builder, tys[6], args[6], p), I16.as_pointer()))


def _block_scales(builder, sc_row, b):
    """d_w of the panel's 16 rows for block b, <16 x float>."""
    halves16 = load_at(builder, sc_row, builder.shl(b, i64(4)), vector(I16, 16))
    return builder.fpext(builder.bitcast(halves16, vector(F16, 16)), vector(F32, 16))


def _activation_quad(builder, xq_row, k, g):
    """Activation bytes k + 4g .. k + 4g + 3 of a column, broadcast to every row of a VNNI zmm."""
    return builder.bitcast(splat(builder, load_at(builder, xq_row, builder.add(k, i64(4 * g)), I32), 16),
                           vector(I8, 64))


@intrinsic
def panel_micro(typingctx, xq, xd, xinit, t0, n_t, codes, scales, p, out, col0, n_blocks, kind, wide):
    """out[t0 + i, col0 + l] = row 16 p + l . column t0 + i (the module docstring's sum over all
    n_blocks blocks) for i < n_t (1..8), l < 16; n_t, kind (a PANEL_KINDS
    value) and wide literals. wide: each row's sum in float64 (module docstring), else float32."""
    if not isinstance(n_t, types.IntegerLiteral) or not isinstance(kind, types.StringLiteral) \
            or not isinstance(wide, types.BooleanLiteral):
        return None
    n_col, fmt, in_f64 = n_t.literal_value, kind.literal_value, wide.literal_value
    block_bytes = CODE_BYTES[fmt] * ROWS_PER_PANEL  # one block of a panel: 16 rows' codes
    n_chains = max(1, MIN_CHAINS // n_col)
    into = INTO_L2 if n_col >= PANEL_L2_PREFETCH_COLUMNS else INTO_L1
    sig = types.void(xq, xd, xinit, t0, n_t, codes, scales, p, out, col0, n_blocks, kind, wide)

    def codegen(context, builder, signature, args):
        tys = signature.args
        out_v = args[8]
        v16f, v8d = vector(F32, 16), vector(F64, 8)
        t0_, p_, col0_, nb = (as_i64(context, builder, args[k], tys[k]) for k in (3, 7, 9, 10))
        ts = [builder.add(t0_, i64(i)) for i in range(n_col)]
        xq_rows, xd_rows, xi_rows = _column_rows(context, builder, tys, args, ts)
        code_row, sc_row = _panel_rows(context, builder, tys, args, p_)

        def block(b, accs):
            k = builder.shl(b, i64(5))           # first weight of the block
            # chains[c][i]: the integer sums of column i over the groups g = c mod n_chains (one
            # chain per column, or more where the columns are few and the vpdpbusd latency would
            # bound them); integer sums, so any split gives the same bits
            zero = ir.Constant(vector(I32, 16), [0] * 16)
            chains = [[splat(builder, builder.load(builder.gep(xi_rows[i], [b])), 16) if c == 0 else zero
                       for i in range(n_col)] for c in range(n_chains)]
            at = builder.mul(b, i64(block_bytes))
            for line in range(block_bytes // 64):  # every line of the block's codes, PANEL_PREFETCH_BYTES ahead
                emit_prefetch(builder, code_row, builder.add(at, i64(PANEL_PREFETCH_BYTES + 64 * line)), into)
            w = _panel_block_codes(builder, fmt, code_row, b)
            for g in range(BLOCK // 4):
                chain = chains[g % n_chains]
                for i in range(n_col):
                    chain[i] = dot_u8_s8(builder, chain[i], w[g], _activation_quad(builder, xq_rows[i], k, g))
            d_w = _block_scales(builder, sc_row, b)
            new = []
            for i in range(n_col):
                isum = pairwise([chains[c][i] for c in range(n_chains)], builder.add)
                d_x = splat(builder, builder.load(builder.gep(xd_rows[i], [b])), 16)
                d = builder.fmul(d_w, d_x)  # d_w(b) * xd(b) rounded to float32, as ggml rounds it
                if in_f64:  # rows 0-7 and 8-15 in two <8 x double>; isum * d is exact there
                    for h in range(2):
                        half = indices(range(8 * h, 8 * h + 8))
                        d64 = builder.fpext(builder.shuffle_vector(d, d, half), v8d)
                        isum64 = builder.sitofp(builder.shuffle_vector(isum, isum, half), v8d)
                        new.append(call_fma(builder, isum64, d64, accs[2 * i + h]))
                else:
                    new.append(call_fma(builder, builder.sitofp(isum, v16f), d, accs[i]))
            return new

        inits = [ir.Constant(v8d, [0.0] * 8)] * (2 * n_col) if in_f64 else [ir.Constant(v16f, [0.0] * 16)] * n_col
        finals = carried_loop(builder, f"panel_{fmt}", nb, inits, block)
        for i in range(n_col):
            row = row_ptr(context, builder, tys[8], out_v, ts[i])
            if in_f64:  # rounded to float32 once
                both = builder.shuffle_vector(finals[2 * i], finals[2 * i + 1], indices(range(16)))
                result = builder.fptrunc(both, v16f)
            else:
                result = finals[i]
            builder.store(result, builder.bitcast(builder.gep(row, [col0_]), v16f.as_pointer()), align=4)
        return context.get_dummy_value()

    return sig, codegen


@njit(inline="always")
def _columns_micro(xq, xd, xinit, t0, n_t, codes, scales, p, out, col0, n_blocks, kind, wide):
    """`panel_micro` of panel p for columns t0 .. t0 + n_t - 1 (n_t 1..8 at run time: the literal
    the intrinsic wants chosen here)."""
    if n_t == 8:
        panel_micro(xq, xd, xinit, t0, 8, codes, scales, p, out, col0, n_blocks, kind, wide)
    elif n_t == 7:
        panel_micro(xq, xd, xinit, t0, 7, codes, scales, p, out, col0, n_blocks, kind, wide)
    elif n_t == 6:
        panel_micro(xq, xd, xinit, t0, 6, codes, scales, p, out, col0, n_blocks, kind, wide)
    elif n_t == 5:
        panel_micro(xq, xd, xinit, t0, 5, codes, scales, p, out, col0, n_blocks, kind, wide)
    elif n_t == 4:
        panel_micro(xq, xd, xinit, t0, 4, codes, scales, p, out, col0, n_blocks, kind, wide)
    elif n_t == 3:
        panel_micro(xq, xd, xinit, t0, 3, codes, scales, p, out, col0, n_blocks, kind, wide)
    elif n_t == 2:
        panel_micro(xq, xd, xinit, t0, 2, codes, scales, p, out, col0, n_blocks, kind, wide)
    else:
        panel_micro(xq, xd, xinit, t0, 1, codes, scales, p, out, col0, n_blocks, kind, wide)


@njit(inline="always")
def column_group(n_t, most):
    """Columns per pass over a panel: all of them up to `most` (the codes are read from memory
    once), else the fewest passes of equal size (the later ones read the panel from L1)."""
    n_pass = (n_t + most - 1) // most
    return (n_t + n_pass - 1) // n_pass


@njit(inline="always")
def _activations(X, kind):
    """X float32 (B, K) as ggml's Q8_0 activation blocks: xq int8 (B, K), xd float32 (B, K/32) and
    xinit int32 (B, K/32), the offset of `kind`'s unsigned codes (module docstring)."""
    n_t, n = X.shape
    n_blocks = n // BLOCK
    xq = np.empty((n_t, n), np.int8)
    xd = np.empty((n_t, n_blocks), np.float32)
    xinit = np.empty((n_t, n_blocks), np.int32)
    for t in range(n_t):
        quantize_q8_0_into(X[t], xq[t], xd[t], xinit[t], n_blocks)
        for b in range(n_blocks):
            xinit[t, b] *= -code_offset(kind)
    return xq, xd, xinit


@njit(inline="always")
def _panel_matvecs(codes, scales, X, out, tail, kind, wide=False):
    """out[t, r] = row r . X[t] for X float32 (B, K), out float32 (B, n_rows), the rows in panels
    of `kind` (module docstring); `tail` float32 (B, 16): the last panel's results when n_rows is
    not a multiple of 16. Panel by panel, each in `column_group` passes."""
    n_t, n = X.shape
    n_rows = out.shape[1]
    n_blocks = n // BLOCK
    xq, xd, xinit = _activations(X, kind)
    n_panels = codes.shape[0]
    full = n_rows // ROWS_PER_PANEL  # panels whose 16 rows are all real
    group = column_group(n_t, COLUMNS_PER_MICRO)
    for item in prange((n_panels + PANELS_PER_ITEM - 1) // PANELS_PER_ITEM):
        for p in range(item * PANELS_PER_ITEM, min(n_panels, (item + 1) * PANELS_PER_ITEM)):
            for t0 in range(0, n_t, group):
                n_g = min(group, n_t - t0)
                if p < full:
                    _columns_micro(xq, xd, xinit, t0, n_g, codes, scales, p, out, ROWS_PER_PANEL * p, n_blocks, kind,
                                   wide)
                else:  # the partial last panel
                    _columns_micro(xq, xd, xinit, t0, n_g, codes, scales, p, tail, 0, n_blocks, kind, wide)
    if full < n_panels:
        for t in range(n_t):
            for j in range(n_rows - ROWS_PER_PANEL * full):
                out[t, ROWS_PER_PANEL * full + j] = tail[t, j]


@intrinsic
def panel_lanes_micro(typingctx, xq, xd, xinit, t0, n_t, codes, scales, p, parity, lanes, n_blocks, kind):
    """Row order (module docstring): lanes[t0 + i, 128 parity + 16 g + l] = lane 8 parity + g of
    row 16 p + l and column t0 + i, the sum over the blocks b = parity mod 2 in order of
    float(int32 of codes 4g .. 4g + 3 of block b . xq) * (d_w(b) * xd(b)), for i < n_t (1..3);
    n_t, parity and kind literals."""
    if not all(isinstance(a, types.IntegerLiteral) for a in (n_t, parity)) or not isinstance(kind, types.StringLiteral):
        return None
    n_col, half, fmt = n_t.literal_value, parity.literal_value, kind.literal_value
    block_bytes = CODE_BYTES[fmt] * ROWS_PER_PANEL
    sig = types.void(xq, xd, xinit, t0, n_t, codes, scales, p, parity, lanes, n_blocks, kind)

    def codegen(context, builder, signature, args):
        tys = signature.args
        lanes_v = args[9]
        v16f = vector(F32, 16)
        t0_, p_, nb = (as_i64(context, builder, args[k], tys[k]) for k in (3, 7, 10))
        ts = [builder.add(t0_, i64(i)) for i in range(n_col)]
        xq_rows, xd_rows, xi_rows = _column_rows(context, builder, tys, args, ts)
        code_row, sc_row = _panel_rows(context, builder, tys, args, p_)
        zero = ir.Constant(vector(I32, 16), [0] * 16)

        def block(j, accs):
            b = builder.add(builder.shl(j, i64(1)), i64(half))
            k = builder.shl(b, i64(5))
            if half == 0:  # the even pass streams both blocks of each pair; the odd one finds them cached
                at = builder.mul(b, i64(block_bytes))
                for line in range(2 * block_bytes // 64):
                    emit_prefetch(builder, code_row, builder.add(at, i64(PANEL_PREFETCH_BYTES + 64 * line)), INTO_L2)
            w = _panel_block_codes(builder, fmt, code_row, b)
            d_w = _block_scales(builder, sc_row, b)
            new = []
            for i in range(n_col):
                scale = builder.fmul(d_w, splat(builder, builder.load(builder.gep(xd_rows[i], [b])), 16))
                for g in range(BLOCK // 4):
                    # the block's code offset starts lane 0, as int8.py's xbias does
                    init = splat(builder, builder.load(builder.gep(xi_rows[i], [b])), 16) if g == 0 else zero
                    dots = dot_u8_s8(builder, init, w[g], _activation_quad(builder, xq_rows[i], k, g))
                    new.append(call_fma(builder, builder.sitofp(dots, v16f), scale, accs[8 * i + g]))
            return new

        trips = builder.ashr(builder.sub(builder.add(nb, i64(1)), i64(half)), i64(1))
        finals = carried_loop(builder, f"lanes_{fmt}", trips, [ir.Constant(v16f, [0.0] * 16)] * (8 * n_col), block)
        for i in range(n_col):
            row = row_ptr(context, builder, tys[9], lanes_v, ts[i])
            for g in range(8):
                at = builder.gep(row, [i64(128 * half + 16 * g)])
                builder.store(finals[8 * i + g], builder.bitcast(at, v16f.as_pointer()), align=4)
        return context.get_dummy_value()

    return sig, codegen


@njit(inline="always")
def _lanes_micro(xq, xd, xinit, t0, n_t, codes, scales, p, lanes, n_blocks, kind):
    """Both parities of `panel_lanes_micro` for panel p, columns t0 .. t0 + n_t - 1 (n_t 1..3 at
    run time)."""
    if n_t == 3:
        panel_lanes_micro(xq, xd, xinit, t0, 3, codes, scales, p, 0, lanes, n_blocks, kind)
        panel_lanes_micro(xq, xd, xinit, t0, 3, codes, scales, p, 1, lanes, n_blocks, kind)
    elif n_t == 2:
        panel_lanes_micro(xq, xd, xinit, t0, 2, codes, scales, p, 0, lanes, n_blocks, kind)
        panel_lanes_micro(xq, xd, xinit, t0, 2, codes, scales, p, 1, lanes, n_blocks, kind)
    else:
        panel_lanes_micro(xq, xd, xinit, t0, 1, codes, scales, p, 0, lanes, n_blocks, kind)
        panel_lanes_micro(xq, xd, xinit, t0, 1, codes, scales, p, 1, lanes, n_blocks, kind)


@njit(inline="always")
def _lane_sum(lanes, t, l):
    """Row l's 16 lanes of column t added as llvm_ir.tree_reduce adds a vector's (lane 8 h + g at
    128 h + 16 g + l): halves, then quarters, eighths, pairs."""
    s0 = lanes[t, l] + lanes[t, 128 + l]
    s1 = lanes[t, 16 + l] + lanes[t, 144 + l]
    s2 = lanes[t, 32 + l] + lanes[t, 160 + l]
    s3 = lanes[t, 48 + l] + lanes[t, 176 + l]
    s4 = lanes[t, 64 + l] + lanes[t, 192 + l]
    s5 = lanes[t, 80 + l] + lanes[t, 208 + l]
    s6 = lanes[t, 96 + l] + lanes[t, 224 + l]
    s7 = lanes[t, 112 + l] + lanes[t, 240 + l]
    return ((s0 + s4) + (s2 + s6)) + ((s1 + s5) + (s3 + s7))


@njit(inline="always")
def _panel_lanes_matvecs(codes, scales, X, out, kind):
    """`_panel_matvecs` in row order: out[t, r] the bits int8.py's row mat-vec gives (its 16 float
    lanes per row kept apart, `panel_lanes_micro`, and added in its order, `_lane_sum`)."""
    n_t, n = X.shape
    n_rows = out.shape[1]
    n_blocks = n // BLOCK
    xq, xd, xinit = _activations(X, kind)
    n_panels = codes.shape[0]
    group = column_group(n_t, LANE_COLUMNS)
    for item in prange((n_panels + PANELS_PER_ITEM - 1) // PANELS_PER_ITEM):
        lanes = np.empty((n_t, ROWS_PER_PANEL * ROW_LANES), np.float32)
        for p in range(item * PANELS_PER_ITEM, min(n_panels, (item + 1) * PANELS_PER_ITEM)):
            for t0 in range(0, n_t, group):
                _lanes_micro(xq, xd, xinit, t0, min(group, n_t - t0), codes, scales, p, lanes, n_blocks, kind)
            for t in range(n_t):
                for l in range(min(ROWS_PER_PANEL, n_rows - ROWS_PER_PANEL * p)):
                    out[t, ROWS_PER_PANEL * p + l] = _lane_sum(lanes, t, l)


# One kernel per type: `kind` must be a literal for the intrinsic, and numba caches by function.
@njit(parallel=True, cache=True, nogil=True)
def matvecs_q8_0_panels(codes, scales, X, out, tail):
    _panel_matvecs(codes, scales, X, out, tail, "q8_0")


@njit(parallel=True, cache=True, nogil=True)
def matvecs_q4_0_panels(codes, scales, X, out, tail):
    _panel_matvecs(codes, scales, X, out, tail, "q4_0")


@njit(parallel=True, cache=True, nogil=True)
def matvecs_q5_0_panels(codes, scales, X, out, tail):
    _panel_matvecs(codes, scales, X, out, tail, "q5_0")


@njit(parallel=True, cache=True, nogil=True)
def matvecs_iq4_nl_panels(codes, scales, X, out, tail):
    _panel_matvecs(codes, scales, X, out, tail, "iq4_nl")


# Row order for the types whose layer matrices keep the row mat-vec's bits (engine/panels.py).
@njit(parallel=True, cache=True, nogil=True)
def matvecs_q8_0_lanes(codes, scales, X, out, tail):
    _panel_lanes_matvecs(codes, scales, X, out, "q8_0")


@njit(parallel=True, cache=True, nogil=True)
def matvecs_q5_0_lanes(codes, scales, X, out, tail):
    _panel_lanes_matvecs(codes, scales, X, out, "q5_0")


# Float64 sums for the types whose layer matrices decode in them (engine/panels.py).
@njit(parallel=True, cache=True, nogil=True)
def matvecs_q8_0_wide(codes, scales, X, out, tail):
    _panel_matvecs(codes, scales, X, out, tail, "q8_0", True)


@njit(parallel=True, cache=True, nogil=True)
def matvecs_q5_0_wide(codes, scales, X, out, tail):
    _panel_matvecs(codes, scales, X, out, tail, "q5_0", True)


@njit(inline="always")
def _panel_expert_matvecs(codes, scales, X, out, tail, kind, wide):
    """out[i] = matrix i . X[i] for a tuple of same-shaped matrices in panels (codes[i],
    scales[i]: a MoE token's experts), X float32 (k, K), out float32 (k, n_rows), tail (k, 16):
    each pair as `_panel_matvecs` computes it alone (one column: the same bits), every matrix's
    panels in one parallel region, so the threads share the experts' rows between them (a region
    per expert left each thread a few hundred kilobytes to stream and a join to wait at)."""
    n_e, n = X.shape
    n_rows = out.shape[1]
    n_blocks = n // BLOCK
    xq, xd, xinit = _activations(X, kind)
    n_panels = codes[0].shape[0]
    full = n_rows // ROWS_PER_PANEL
    n_items = (n_panels + PANELS_PER_ITEM - 1) // PANELS_PER_ITEM
    for task in prange(n_e * n_items):
        i, item = task // n_items, task % n_items
        expert_codes, expert_scales = codes[i], scales[i]
        for p in range(item * PANELS_PER_ITEM, min(n_panels, (item + 1) * PANELS_PER_ITEM)):
            if p < full:
                _columns_micro(xq, xd, xinit, i, 1, expert_codes, expert_scales, p, out, ROWS_PER_PANEL * p, n_blocks,
                               kind, wide)
            else:
                _columns_micro(xq, xd, xinit, i, 1, expert_codes, expert_scales, p, tail, 0, n_blocks, kind, wide)
    if full < n_panels:
        for i in range(n_e):
            for j in range(n_rows - ROWS_PER_PANEL * full):
                out[i, ROWS_PER_PANEL * full + j] = tail[i, j]


# Decoded tokens of several experts (a layer matrix's decode arithmetic: float64 sums where the type
# has them, WIDE_DECODE in engine/panels.py).
@njit(parallel=True, cache=True, nogil=True)
def expert_matvecs_q8_0_wide(codes, scales, X, out, tail):
    _panel_expert_matvecs(codes, scales, X, out, tail, "q8_0", True)


@njit(parallel=True, cache=True, nogil=True)
def expert_matvecs_q5_0_wide(codes, scales, X, out, tail):
    _panel_expert_matvecs(codes, scales, X, out, tail, "q5_0", True)


@njit(parallel=True, cache=True, nogil=True)
def expert_matvecs_q4_0_panels(codes, scales, X, out, tail):
    _panel_expert_matvecs(codes, scales, X, out, tail, "q4_0", False)


@njit(parallel=True, cache=True, nogil=True)
def expert_matvecs_iq4_nl_panels(codes, scales, X, out, tail):
    _panel_expert_matvecs(codes, scales, X, out, tail, "iq4_nl", False)


@intrinsic
def expand_panel(typingctx, src, p_src, dst, p_dst, n_blocks, kind):
    """Panel p_dst of `dst` (P, K * 16) uint8 = panel p_src of the packed `src` with every code as
    a byte, in VNNI order (gemm_int8.py's tile layout): what `_panel_block_codes` gives the
    micro-kernel, stored. `kind` a literal."""
    if not isinstance(kind, types.StringLiteral):
        return None
    fmt = kind.literal_value

    def codegen(context, builder, signature, args):
        tys = signature.args
        src_row = builder.bitcast(row_ptr(context, builder, tys[0], args[0], as_i64(context, builder, args[1], tys[1])),
                                  I8.as_pointer())
        dst_row = builder.bitcast(row_ptr(context, builder, tys[2], args[2], as_i64(context, builder, args[3], tys[3])),
                                  I8.as_pointer())
        v64i8 = vector(I8, 64)

        def block(b, _):
            at = builder.shl(b, i64(9))
            for g, u in enumerate(_panel_block_codes(builder, fmt, src_row, b)):
                p = builder.gep(dst_row, [builder.add(at, i64(64 * g))])
                builder.store(u, builder.bitcast(p, v64i8.as_pointer()), align=1)
            return []

        carried_loop(builder, f"expand_{fmt}", as_i64(context, builder, args[4], tys[4]), [], block)
        return context.get_dummy_value()

    return types.void(src, p_src, dst, p_dst, n_blocks, kind), codegen


@njit(inline="always")
def _decode_panel_tile(codes, scales, p0, tile_codes, tile_scales, kind):
    """Panels p0 .. of a packed matrix as the integer GEMM's decoded tile (gemm_int8.py: codes
    (P, K * 16) uint8, scales (P, n_blocks * 16) float32); panels past the matrix's last are zero
    (in a partial last panel the missing rows' scales are 0, their codes whatever nibble 0 gives)."""
    n_blocks = scales.shape[1] // ROWS_PER_PANEL
    for p in prange(tile_codes.shape[0]):
        if p0 + p < codes.shape[0]:
            expand_panel(codes, p0 + p, tile_codes, p, n_blocks, kind)
            for k in range(scales.shape[1]):
                tile_scales[p, k] = fp16_to_fp32(scales[p0 + p, k])
        else:
            tile_codes[p, :] = 0
            tile_scales[p, :] = 0.0


@njit(parallel=True, cache=True, nogil=True)
def decode_q8_0_panels(codes, scales, p0, tile_codes, tile_scales):
    _decode_panel_tile(codes, scales, p0, tile_codes, tile_scales, "q8_0")


@njit(parallel=True, cache=True, nogil=True)
def decode_q4_0_panels(codes, scales, p0, tile_codes, tile_scales):
    _decode_panel_tile(codes, scales, p0, tile_codes, tile_scales, "q4_0")


@njit(parallel=True, cache=True, nogil=True)
def decode_q5_0_panels(codes, scales, p0, tile_codes, tile_scales):
    _decode_panel_tile(codes, scales, p0, tile_codes, tile_scales, "q5_0")


@njit(parallel=True, cache=True, nogil=True)
def decode_iq4_nl_panels(codes, scales, p0, tile_codes, tile_scales):
    _decode_panel_tile(codes, scales, p0, tile_codes, tile_scales, "iq4_nl")


@njit(parallel=True, cache=True, nogil=True)
def rows_panels(codes, scales, ids, values, out):
    """out[i] = row ids[i] of a packed matrix as float32, values[u] * d as the type's decoder gives
    it (`CODE_VALUES`: 256 entries for Q8_0's byte codes, 16 for the nibble types, 32 for Q5_0's
    5-bit ones): token embeddings looked up in a tied output matrix's panels, not in the map."""
    n_blocks = scales.shape[1] // ROWS_PER_PANEL
    stride = codes.shape[1] // n_blocks  # a block's bytes in a panel
    nibbles, fifth_bits = values.size <= 32, values.size == 32
    for i in prange(ids.shape[0]):
        p, j = ids[i] // ROWS_PER_PANEL, ids[i] % ROWS_PER_PANEL
        for b in range(n_blocks):
            d = fp16_to_fp32(scales[p, ROWS_PER_PANEL * b + j])
            for k in range(BLOCK):
                if nibbles:  # byte S b + 64 m + 4 j + i holds codes 4m + i (low) and 16 + 4m + i (high)
                    byte = np.int64(codes[p, stride * b + 64 * ((k % 16) // 4) + 4 * j + k % 4])
                    u = byte & 15 if k < 16 else byte >> 4
                    if fifth_bits:  # bit k of the row's qh (u32 at S b + 256 + 4 j)
                        u |= ((np.int64(codes[p, stride * b + 256 + 4 * j + k // 8]) >> (k % 8)) & 1) << 4
                else:
                    u = np.int64(codes[p, 64 * ((BLOCK * b + k) // 4) + 4 * j + k % 4])
                out[i, BLOCK * b + k] = values[u] * d


@njit(parallel=True, cache=True, nogil=True)
def rows_wide(blocks, X, out, qs_at, qh_at):
    """`matvecs_*_wide` of a matrix left in its GGUF rows (a Q8_0 / Q5_0 layer matrix not repacked:
    --mlock, --no-mmap), bit for bit: blocks uint8 (n_rows, K / 32, block bytes), the codes at
    byte qs_at of a block and Q5_0's fifth bits at qh_at (-1: Q8_0). Per row and column the
    blocks' exact integer sums times d_w * xd (float32), added in order in float64."""
    n_t = X.shape[0]
    n_blocks = X.shape[1] // BLOCK
    xq, xd, _ = _activations(X, "q8_0")  # the codes here are signed: no offset to undo
    for r in prange(blocks.shape[0]):
        codes = np.empty(BLOCK, np.int32)
        acc = np.zeros(n_t, np.float64)
        for b in range(n_blocks):
            block = blocks[r, b]
            if qh_at < 0:  # Q8_0: qs[k] int8
                for k in range(BLOCK):
                    codes[k] = np.int32(np.int8(block[qs_at + k]))
            else:  # Q5_0: nibble k of qs (low: k < 16) | bit k of qh << 4, less 16
                qh = np.int64(block[qh_at]) | (np.int64(block[qh_at + 1]) << 8) | \
                    (np.int64(block[qh_at + 2]) << 16) | (np.int64(block[qh_at + 3]) << 24)
                for k in range(16):
                    byte = np.int64(block[qs_at + k])
                    codes[k] = np.int32((byte & 15) | (((qh >> k) & 1) << 4)) - 16
                    codes[k + 16] = np.int32((byte >> 4) | (((qh >> (k + 16)) & 1) << 4)) - 16
            d_w = fp16_to_fp32(np.uint16(block[0]) | (np.uint16(block[1]) << 8))
            for t in range(n_t):
                isum = np.int32(0)
                for k in range(BLOCK):
                    isum += codes[k] * np.int32(xq[t, BLOCK * b + k])
                d = d_w * xd[t, b]  # float32, as the panels round it
                acc[t] += np.float64(isum) * np.float64(d)  # an exact product: one rounding, as the FMA's
        for t in range(n_t):
            out[t, r] = np.float32(acc[t])


def _nibble_packer(kind):
    """pack(blocks, r0, codes, scales) for a nibble kind: `pack_nibbles` at its qs (and qh) bytes."""
    qs_at, qh_at = QS_AT[kind], QH_AT.get(kind, -1)
    return lambda blocks, r0, codes, scales: pack_nibbles(blocks, r0, codes, scales, qs_at, qh_at)


class PanelKernels(NamedTuple):
    """A packed type's kernels: `pack`(blocks, r0, codes, scales); the mat-vecs (codes, scales, X,
    out, tail) and their serial twin; the same in row order and in float64 sums (None: not offered
    for the type); `decode`, the integer GEMM's tile from the panels; `experts` and its twin, the
    decoded tokens of several matrices at once (`_panel_expert_matvecs`, in float64 sums where
    the type has them, as a layer matrix decodes)."""

    pack: Callable
    matvecs: Callable
    matvecs_serial: Callable
    row_order: Callable | None
    row_order_serial: Callable | None
    wide: Callable | None
    wide_serial: Callable | None
    decode: Callable
    experts: Callable  # (codes tuple, scales tuple, X, out, tail): several matrices' decoded tokens
    experts_serial: Callable


def _kernels(pack, matvecs, decode, experts, row_order=None, wide=None):
    """PanelKernels with the serial twins made: entering numba's thread pool costs more than a
    small matrix's product (common.serial_twin)."""
    def twin(kernel):
        return serial_twin(kernel) if kernel is not None else None
    return PanelKernels(pack, matvecs, twin(matvecs), row_order, twin(row_order), wide, twin(wide), decode, experts,
                        twin(experts))


KERNELS = {
    "q8_0": _kernels(pack_q8_0, matvecs_q8_0_panels, decode_q8_0_panels, expert_matvecs_q8_0_wide,
                     matvecs_q8_0_lanes, matvecs_q8_0_wide),
    "q4_0": _kernels(_nibble_packer("q4_0"), matvecs_q4_0_panels, decode_q4_0_panels, expert_matvecs_q4_0_panels),
    "q5_0": _kernels(_nibble_packer("q5_0"), matvecs_q5_0_panels, decode_q5_0_panels, expert_matvecs_q5_0_wide,
                     matvecs_q5_0_lanes, matvecs_q5_0_wide),
    "iq4_nl": _kernels(_nibble_packer("iq4_nl"), matvecs_iq4_nl_panels, decode_iq4_nl_panels,
                       expert_matvecs_iq4_nl_panels),
}
rows_wide_serial = serial_twin(rows_wide)
# `rows_wide`'s (qs_at, qh_at) per kind: Q8_0's int8 codes follow its fp16 d (simd.py's diagrams).
WIDE_ROW_LAYOUT = {"q8_0": (2, -1), "q5_0": (QS_AT["q5_0"], QH_AT["q5_0"])}
