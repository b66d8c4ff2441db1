"""float32 GEMM for prompt processing: out[t, col0 + r] = X[t] . W[r] for a tile of decoded rows.

Prompt processing is compute bound, so each weight tile is decoded to float32 once per batch
(by a format's `dequant` kernel) and multiplied here. The work unit is a 4-token x 4-row block
held in 16 accumulators; with fastmath LLVM turns each into a zmm register of partial sums over k,
so one pass over k loads 4 x-rows and 4 w-rows per 16 FMAs.

    X (T, K) row-major     W tile (R, K) row-major (L2-resident)     out (T, n_rows_total)
    prange over token quads -> for each row quad of the tile -> 16 dot products over k
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(inline="always")
def _dot(x, t, w, r):
    s = np.float32(0.0)
    for k in range(x.shape[1]):
        s += x[t, k] * w[r, k]
    return s


@njit(parallel=True, cache=True, fastmath=True)
def gemm_nt(x, w, out, col0):
    n_tokens, n_rows = x.shape[0], w.shape[0]
    n_cols = x.shape[1]
    full_rows = n_rows - n_rows % 4
    for tq in prange((n_tokens + 3) // 4):
        t0 = 4 * tq
        if t0 + 4 <= n_tokens:
            for r0 in range(0, full_rows, 4):
                a00 = a01 = a02 = a03 = np.float32(0.0)
                a10 = a11 = a12 = a13 = np.float32(0.0)
                a20 = a21 = a22 = a23 = np.float32(0.0)
                a30 = a31 = a32 = a33 = np.float32(0.0)
                for k in range(n_cols):
                    x0 = x[t0, k]
                    x1 = x[t0 + 1, k]
                    x2 = x[t0 + 2, k]
                    x3 = x[t0 + 3, k]
                    w0 = w[r0, k]
                    w1 = w[r0 + 1, k]
                    w2 = w[r0 + 2, k]
                    w3 = w[r0 + 3, k]
                    a00 += x0 * w0
                    a01 += x0 * w1
                    a02 += x0 * w2
                    a03 += x0 * w3
                    a10 += x1 * w0
                    a11 += x1 * w1
                    a12 += x1 * w2
                    a13 += x1 * w3
                    a20 += x2 * w0
                    a21 += x2 * w1
                    a22 += x2 * w2
                    a23 += x2 * w3
                    a30 += x3 * w0
                    a31 += x3 * w1
                    a32 += x3 * w2
                    a33 += x3 * w3
                c = col0 + r0
                out[t0, c], out[t0, c + 1], out[t0, c + 2], out[t0, c + 3] = a00, a01, a02, a03
                out[t0 + 1, c], out[t0 + 1, c + 1], out[t0 + 1, c + 2], out[t0 + 1, c + 3] = a10, a11, a12, a13
                out[t0 + 2, c], out[t0 + 2, c + 1], out[t0 + 2, c + 2], out[t0 + 2, c + 3] = a20, a21, a22, a23
                out[t0 + 3, c], out[t0 + 3, c + 1], out[t0 + 3, c + 2], out[t0 + 3, c + 3] = a30, a31, a32, a33
            for t in range(t0, t0 + 4):
                for r in range(full_rows, n_rows):
                    out[t, col0 + r] = _dot(x, t, w, r)
        else:
            for t in range(t0, n_tokens):
                for r in range(n_rows):
                    out[t, col0 + r] = _dot(x, t, w, r)
