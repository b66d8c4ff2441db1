"""Helpers shared by every block-family kernel module.

Every quantized kernel sees the weights as a read-only uint8 view `blocks[row, block, byte]`
(zero-copy over the GGUF mmap) and the activations as a float32 view `x[block, group, lane]`
whose trailing shape matches the way the format groups its weights, so kernels index with plain
loop variables only (numba vectorises that shape; computed flat offsets were ~10x slower).

Mat-vec kernels share one shape, the "lanes" shape: a small float32 accumulator per tile of rows,
one lane per position inside a block, `acc[k] += scale * q(k) * x[k]` over every block of a row,
reduced once per row. The lane step is the `simd.fma_lanes` intrinsic (explicit LLVM vectors): as
plain numba loops it stayed scalar on this machine's numba/LLVM (SLP vectoriser off, fixed-length
loops unrolled before the loop vectoriser sees them), 2-3.4x slower. The row reduction is
`simd.lanes_sum` (a tree; `acc.sum()` is a chain of dependent adds). `prange` over tiles of rows
even for one thread.

Columns: every mat-vec kernel also multiplies B activation rows at once, `out[t, r] = W[r] . X[t]`
with X (B, ...) and out (B, n_rows), reading each weight row once for all B (batched decoding). A
single mat-vec (x and out 1-D) is the B = 1 case of the same kernel (`columns`), and each column's
arithmetic is exactly that of a lone mat-vec: per row and block the weights are decoded once and
feed one accumulator set per column, in the same order (see llvm_ir.py, "Columns"). So column t of a
B-column product equals `matvec(W, X[t])` bit for bit, whatever B is.
"""

from __future__ import annotations

import types

import numpy as np
from numba import njit, prange
from numba.extending import overload

from .simd import lanes_sum

# Rows per prange work item in mat-vec kernels: big enough to amortise the accumulator set-up,
# small enough that 2 threads share a 256-row matrix evenly.
ROW_TILE = 16
# Columns (activation rows) per pass over a tile's rows in the B-column kernels: their activations
# stay in L1 while the tile's weight rows (from L2 after the first pass) go by. Row by row with all
# columns read ~B x 2 KB of activations from L2 per weight row.
COLUMN_BLOCK = 8


def columns(x, out):
    """(X float32 (B, n_cols), out (B, n_rows)) from a kernel's arguments: a mat-vec's x (any shape)
    and 1-D out are B = 1; a B-column call passes X (B, ...) and out (B, n_rows), B >= 1."""
    raise NotImplementedError  # numba only, see _columns


@overload(columns, inline="always")
def _columns(x, out):
    if out.ndim == 1:
        return lambda x, out: (x.reshape(1, x.size), out.reshape(1, out.size))
    return lambda x, out: (x.reshape(out.shape[0], x.size // out.shape[0]), out)


@njit(inline="always")
def block_sums(X, size):
    """sums[t, j] = X[t, size j] + ... + X[t, size j + size - 1], added left to right. An explicit
    loop: `.sum()` in a parallel kernel becomes a parallel reduction, in another order than in its
    serial twin, and the two must give the same bits."""
    n_t, n = X.shape
    sums = np.empty((n_t, n // size), np.float32)
    for t in range(n_t):
        for j in range(n // size):
            s = np.float32(0.0)
            for k in range(size):
                s += X[t, size * j + k]
            sums[t, j] = s
    return sums


@njit(inline="always")
def row_dots(rows, Y, row_dot, kind, operands):
    """The loop of the kernels whose rows each run as one whole-row LLVM loop (simd.py's
    `row_dot`s, the int8 ones): row_dot(rows[r], operands, kind, Y, r, t0, n) stores
    row r . column t to Y[t, r] for t0 <= t < t0 + n. Tiles of ROW_TILE rows (prange); per tile
    the columns in blocks of COLUMN_BLOCK, each block over all the tile's rows. rows: the weight
    rows as 2-D (row, bytes or values); kind: a literal the row dot dispatches on; operands: the
    activations as the row dot takes them (an array or a tuple)."""
    n_rows = rows.shape[0]
    for tile in prange((n_rows + ROW_TILE - 1) // ROW_TILE):
        for t0 in range(0, Y.shape[0], COLUMN_BLOCK):  # a block of columns over the tile's rows
            for r in range(tile * ROW_TILE, min(n_rows, (tile + 1) * ROW_TILE)):
                row_dot(rows[r], operands, kind, Y, r, t0, min(COLUMN_BLOCK, Y.shape[0] - t0))


@njit(inline="always")
def lanes_rows(blocks, x, out, block_bytes, block_step, variant, x_sums, scratch_of):
    """The "lanes" shape (module docstring) around one format's block step, for the kernels whose
    blocks go through `simd.fma_lanes`. Per tile of ROW_TILE rows (prange): acc (B, 64), a 64-lane
    float32 accumulator per column, and offset (B,); per row both start at 0, then for each block b

        block_step(blocks, r, b, row, base, variant, x_sums, scratch, acc, offset, xf, n_t, n_cols)

    adds the block's lanes into acc (flat (B * 64,), column t at 64 t) by fma_lanes steps over xf
    (the activations flat, column t at n_cols t; n_t = B), and into offset[t] what needs no lanes
    (a minimum times a sum of x over a sub-block; x_sums: what the kernel computed from X for that,
    or None). row: row r's bytes flat, block b at row[base:]; variant: a constant for steps that
    serve two types; scratch = scratch_of() once per tile, what a step decodes a block into (or
    None). Then out[t, r] = lanes_sum(acc[t]) + offset[t] (an offset of +0 changes no bit: the lanes
    start at +0, so no sum of them is -0)."""
    X, Y = columns(x, out)
    n_t, n_cols = X.shape
    n_rows, n_blocks = blocks.shape[0], blocks.shape[1]
    flat = blocks.reshape(n_rows, n_blocks * block_bytes)
    xf = X.reshape(-1)
    for tile in prange((n_rows + ROW_TILE - 1) // ROW_TILE):
        acc = np.empty((n_t, 64), np.float32)
        acc_lanes = acc.reshape(-1)
        offset = np.empty(n_t, np.float32)
        scratch = scratch_of()
        for r in range(tile * ROW_TILE, min(n_rows, (tile + 1) * ROW_TILE)):
            acc[:] = 0.0
            offset[:] = 0.0
            row = flat[r]
            for b in range(n_blocks):
                block_step(blocks, r, b, row, block_bytes * b, variant, x_sums, scratch, acc_lanes, offset, xf, n_t,
                           n_cols)
            for t in range(n_t):
                Y[t, r] = lanes_sum(acc[t], 64) + offset[t]


@njit(inline="always")
def lanes_rows_min(blocks, x, out, block_bytes, block_step, variant, sub_block):
    """`lanes_rows` for the formats with a minimum per sub-block of `sub_block` weights (Q4_1, Q5_1,
    Q2_K, Q5_K): x_sums[t, b, j] = the sum of column t's activations over sub-block j of block b,
    which the block step multiplies by the minimum into offset."""
    X, _ = columns(x, out)
    x_sums = block_sums(X, sub_block).reshape(X.shape[0], blocks.shape[1], -1)
    lanes_rows(blocks, x, out, block_bytes, block_step, variant, x_sums, no_scratch)


@njit(inline="always")
def no_scratch():
    """`lanes_rows`' scratch_of for block steps that decode nothing."""
    return None


def serial_twin(kernel):
    """`kernel` (an njit(parallel=True) function) compiled again without the thread pool.

    Entering a parallel region costs ~13 us at 1 thread and ~25 us at 2 here, against ~2 us for a
    plain call: 127 mat-vecs per demo token paid ~1.5 ms for it at 1 thread. The twin is a copy
    of the Python function under its own name so the two cache entries never mix (numba's cache
    key does not include the parallel flag); `prange` runs as `range` in it.
    """
    f = kernel.py_func
    twin = types.FunctionType(f.__code__, f.__globals__, f.__name__ + "_serial", f.__defaults__, f.__closure__)
    twin.__qualname__ = f.__qualname__ + "_serial"
    twin.__module__ = f.__module__
    twin.__doc__ = f.__doc__
    return njit(cache=True, nogil=True)(twin)


class Format:
    """How the engine multiplies by one ggml type.

    x_group: trailing shape of the activation view, e.g. (2, 16) -> x.reshape(n_blocks, 2, 16);
             () for the float types, whose kernels take x and the weights as plain 2-D rows.
    element: dtype the raw row bytes are viewed as: uint8 blocks `(rows, n_blocks, block_bytes)`
             for quantized types, `(rows, n_cols)` of float32/uint16 for F32/F16/BF16.
    matvec(weights, x_view, out):  out[r] = row r . x; also (weights, X (B, n_cols), out (B, n_rows)):
                                   out[t, r] = row r . X[t], column t bitwise = matvec of X[t] ("Columns")
    matvec_serial:                 the same on the calling thread only (see `serial_twin`)
    matvec_int8, matvec_int8_serial: the same with activations rounded to 8 bits as llama.cpp does
                                   (int8.py), or None where the type has no such kernel
    dequant(weights, out_view):    out_view[r, ...] = row r's values, out_view shaped like x_view;
                                   None here: the type's codec decoder (quants.registry.Decoder,
                                   attached in kernels/__init__.py: a layout is decoded in one place)
    """

    __slots__ = ("x_group", "matvec", "matvec_serial", "dequant", "element", "matvec_int8", "matvec_int8_serial")

    def __init__(self, x_group, matvec, dequant=None, element=np.uint8):
        self.x_group, self.matvec, self.dequant = tuple(x_group), matvec, dequant
        self.matvec_serial = serial_twin(matvec)
        self.element = np.dtype(element)
        self.matvec_int8 = self.matvec_int8_serial = None

    def with_int8(self, matvec_int8) -> "Format":
        """Attach an 8-bit-activation mat-vec kernel (same signature as `matvec`)."""
        self.matvec_int8, self.matvec_int8_serial = matvec_int8, serial_twin(matvec_int8)
        return self
