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
from numba import njit
from numba.extending import overload

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
