"""float32 GEMMs for prompt processing: out[t, col0 + r] = X[t] . W[r] for a tile of decoded rows.

Prompt processing is compute bound, so each weight tile is decoded to float32 once per batch
(by a format's `dequant` kernel) and multiplied here.

`pack_panels` reorders the decoded tile (R, K), R a multiple of 32, into panels of 32 rows stored
k-major, so the micro-kernel streams each panel as one contiguous run (BLIS-style packing; the
plain transposed tile (K, R) read 32 columns at a stride of R floats and ran at ~half the speed):

    decoded (R, K)                     panels (R/32, K, 32)
    row 32p+j, column k      ->        panels[p, k, j]      (128 bytes = 2 zmm per k)

`gemm_panels` runs `simd.gemm_micro` over them: 6 tokens x 32 rows in 12 zmm accumulators over
the whole k loop, one broadcast of x and two loads of the panel per 12 FMAs, no horizontal sums:

    X (T, K) row-major     panels (R/32, K, 32) (L2-resident)      out (T, n_rows_total)
    prange over blocks of 4 groups of 6 tokens -> each panel -> each 256-wide chunk of k (in L1)
        -> each group of the block: gemm_micro (first chunk) / gemm_micro_add (the others)

On this machine (Xeon, AVX-512, 1 thread) the micro-kernel reaches ~133 GFLOP/s with its operands
in L1, which is the FMA units' peak (2 x 16-lane FMA per cycle); over an L2-resident panel ~110-120.

`gemm_nt` is the dot-product form for the leftover rows (R not a multiple of 32): a 4-token x
4-row block in 16 accumulators that fastmath lets LLVM keep as vector partial sums over k.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .simd import gemm_micro, gemm_micro_add, transpose_32x8

TOKENS_PER_MICRO = 6
COLUMNS_PER_MICRO = 32


@njit(parallel=True, cache=True, nogil=True)
def pack_panels(src, dst):
    """dst[p, k, j] = src[32 p + j, k]: src (R, K) with R a multiple of 32, dst (R/32, K, 32).
    Blocks of 32 rows x 8 columns go through registers (`simd.transpose_32x8`): each write is a
    contiguous run of 32 floats (~2.2x the element-by-element loop, which took ~80 ms of a short
    prompt's ~190 ms on the demo model at 1 thread)."""
    n_cols = src.shape[1]
    k8 = n_cols - n_cols % 8
    flat_src = src.reshape(-1)
    flat_dst = dst.reshape(-1)
    for p in prange(dst.shape[0]):
        for k0 in range(0, k8, 8):
            transpose_32x8(flat_src, 32 * p * n_cols + k0, n_cols, flat_dst, (p * n_cols + k0) * 32)
        for k in range(k8, n_cols):
            for j in range(32):
                dst[p, k, j] = src[32 * p + j, k]


# k is walked in chunks of K_CHUNK: a panel's chunk (K_CHUNK x 32 floats, 32 KB) stays in L1
# while every token group of a thread's block passes over it; the whole panel (80 KB for K=640)
# came from L2 once per token group, which left the FMA units waiting.
K_CHUNK = 256
# Token groups (of TOKENS_PER_MICRO) per parallel work item: their x rows (~24 KB per k chunk)
# stay in L1/L2 across the panels.
GROUPS_PER_BLOCK = 4


@njit(parallel=True, cache=True, nogil=True)
def gemm_panels(x, panels, out, col0):
    """out[t, col0 + 32 p + j] = X[t] . (row 32 p + j of the tile packed in `panels`)."""
    n_tokens, n_k = x.shape
    n_panels = panels.shape[0]
    n_groups = n_tokens // TOKENS_PER_MICRO
    n_blocks = (n_groups + GROUPS_PER_BLOCK - 1) // GROUPS_PER_BLOCK
    for item in prange(n_blocks + n_tokens % TOKENS_PER_MICRO):
        if item < n_blocks:
            g_lo = item * GROUPS_PER_BLOCK
            g_hi = min(n_groups, g_lo + GROUPS_PER_BLOCK)
            for p in range(n_panels):
                col = col0 + COLUMNS_PER_MICRO * p
                for k0 in range(0, n_k, K_CHUNK):
                    k1 = min(n_k, k0 + K_CHUNK)
                    xk = x[:, k0:k1]
                    wk = panels[p, k0:k1]
                    for g in range(g_lo, g_hi):
                        if k0 == 0:
                            gemm_micro(xk, TOKENS_PER_MICRO * g, 6, wk, 0, out, col, k1 - k0)
                        else:
                            gemm_micro_add(xk, TOKENS_PER_MICRO * g, 6, wk, 0, out, col, k1 - k0)
        else:  # one of the last n_tokens % 6 tokens
            t = TOKENS_PER_MICRO * n_groups + (item - n_blocks)
            for p in range(n_panels):
                gemm_micro(x, t, 1, panels[p], 0, out, col0 + COLUMNS_PER_MICRO * p, n_k)


@njit(inline="always")
def _dot(x, t, w, r):
    s = np.float32(0.0)
    for k in range(x.shape[1]):
        s += x[t, k] * w[r, k]
    return s


@njit(parallel=True, cache=True, nogil=True, fastmath=True)
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
