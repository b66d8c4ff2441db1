"""1-bit lattice i-quants IQ1_S and IQ1_M, byte-exact with ggml.

A group of 8 weights is an index (11 bits) into iq1s_grid, whose 2048 points have coordinates
-1, 0, 1, shifted by +-delta (0.125) per group pair; a 3-bit scale per sub-block (32 weights in
IQ1_S, 16 in IQ1_M) multiplies the super-block scale d.

Quantizing equals ggml's `quantize_iq1_s` / `quantize_iq1_m` (quantize_row_iq1_*_impl): per
sub-block, an exhaustive search over the two boundaries that split the sorted values into the
levels -1, 0, 1 (both signs of delta; IQ1_M per half), then the grid lookup with the neighbour
lists of iq_search (ggml's iq2xs_init_impl for the IQ1 grid). ggml sorts the values with qsort,
which leaves equal values in an order the C standard does not fix; glibc (2.36, the reference
build's) sorts arrays this small with a stable merge sort, so equal values keep their column
order - what the insertion sort here does. IQ1_S needs importance weights, as in ggml; IQ1_M
without them weighs by x*x as ggml does (llama-quantize refuses both types without an imatrix).
Every float op is float32 in ggml's order (see kquant_search.py); rows run in parallel.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..gguf.constants import GGMLType
from .half import fp16_to_fp32, fp32_to_fp16, read_fp16
from .iq_grids import grid
from .iq_search import (MAP_SIZE_8X2, LatticeKind, block_scale, importance_weights, point_index,
                        register_lattice, scale_code, super_block)
from .kquant_search import F32, FLT_MAX, ZERO, max_abs
from .kquants import put_f16

QK_K = 256
KERNEL = dict(parallel=True, cache=True, nogil=True, error_model="numpy")
HELPER = dict(cache=True, nogil=True, error_model="numpy")

IQ1S_POINTS = grid("iq1s_grid")       # (2048,) uint64: an entry's 8 int8 values (-1, 0, 1) as one word
KMAP_SIZE = MAP_SIZE_8X2              # ggml's map size for 8 levels of 2 bits (all levels <= 2)
NWANT = 3                             # distinct neighbour distances ggml lists for IQ1_S/IQ1_M
DELTA = F32(0.125)
GROUP_MAX_EPS_IQ1_S = F32(1e-12)
GROUP_MAX_EPS_IQ1_M = F32(1e-7)
F_ONE = F32(1.0)
FUDGE_S = F32(1.125)       # ggml stores d * 1.125 (IQ1_S), d * 1.1125 (IQ1_M): its fudge factors
FUDGE_M = F32(1.1125)
# the three level values with the group's shift: X_P for +delta, X_M for -delta
X_P = np.array([F32(-1) + DELTA, DELTA, F_ONE + DELTA], np.float32)
X_M = np.array([F32(-1) - DELTA, -DELTA, F_ONE - DELTA], np.float32)
IQ1M_SHIFT_MASKS = np.array([0x00, 0x80, 0x08, 0x88], np.uint8)


# ---------------------------------------------------------------------------------------------
# IQ1_S, 50 bytes per 256 weights = 8 sub-blocks of 32 = 4 groups of 8 each
#
#   byte  0      2                         34                                        50
#         +------+-------------------------+-----------------------------------------+
#         |  d   | qs[32]: low 8 bits of   | qh[8] u16 LE, one per sub-block s:      |
#         | fp16 | group g's grid index    |   bits 3l..3l+2: index bits 8..10 of    |
#         |      | (4 per sub-block)       |     group 4s+l; bits 12..14: scale ls;  |
#         |      |                         |   bit 15: delta sign (1: -delta)        |
#         +------+-------------------------+-----------------------------------------+
# weight = d * (2 * ls + 1) * (grid[index][j] + delta)


@njit(inline="always")
def iq1_s_block(blk, codes, ls, negative):
    """One IQ1_S block (uint8 (50,)) decoded: its grid values (-1, 0, 1) into codes (uint64 (32,),
    read as int8 (256,), a grid entry's 8 bytes stored whole), the sub-blocks' 3-bit scales into
    ls (int32 (8,)) and whether their delta is negative into negative (bool (8,)). Weight k =
    d * (2 ls + 1) * (value k +- delta) with sub-block k // 32's. The one decoder of the layout
    (the dequantizer's and engine/kernels/iq1.py's)."""
    for s in range(8):
        qh = np.int32(blk[34 + 2 * s]) | (np.int32(blk[35 + 2 * s]) << 8)
        for l in range(4):
            codes[4 * s + l] = IQ1S_POINTS[np.int32(blk[2 + 4 * s + l]) | (((qh >> (3 * l)) & 7) << 8)]
        ls[s] = (qh >> 12) & 7
        negative[s] = (qh & 0x8000) != 0


@njit(**KERNEL)
def _dequantize_iq1_s(raw, y):
    for b in prange(raw.shape[0]):
        blk = raw[b]
        codes = np.empty(32, np.uint64)
        values = codes.view(np.int8)
        ls = np.empty(8, np.int32)
        negative = np.empty(8, np.bool_)
        iq1_s_block(blk, codes, ls, negative)
        d = read_fp16(blk, 0)
        for s in range(8):
            dl = d * F32(2 * ls[s] + 1)
            delta = -DELTA if negative[s] else DELTA
            for k in range(32 * s, 32 * s + 32):
                y[b, k] = dl * (F32(values[k]) + delta)


# ---------------------------------------------------------------------------------------------
# IQ1_M, 56 bytes per 256 weights = 16 sub-blocks of 16 = 2 groups of 8 each
#
#   byte  0                        32                              48                 56
#         +------------------------+-------------------------------+------------------+
#         | qs[32]: low 8 bits of  | qh[16], one per sub-block t:  | scales: 4 x u16  |
#         | group g's grid index   |   bits 0..2: index bits 8..10 | LE; u16 i bits   |
#         | (2 per sub-block)      |   of group 2t, bit 3: its     | 3k..3k+2: scale  |
#         |                        |   delta sign; bits 4..6, 7:   | of sub-block 4i+k|
#         |                        |   the same for group 2t+1     | bits 12..15: 4   |
#         |                        |                               | bits of fp16 d   |
#         +------------------------+-------------------------------+------------------+
# d = the fp16 assembled from the top nibbles of the 4 u16 (u16 0 holds its low nibble)
# weight = d * (2 * ls + 1) * (grid[index][j] + delta)


@njit(inline="always")
def _read_u16(blk, pos):
    return np.int32(blk[pos]) | (np.int32(blk[pos + 1]) << 8)


@njit(inline="always")
def iq1_m_scale(blk):
    """The super-block scale d of one IQ1_M block (uint8 (56,)): the fp16 spread over the top
    nibbles of the 4 scale words."""
    sc0, sc1, sc2, sc3 = _read_u16(blk, 48), _read_u16(blk, 50), _read_u16(blk, 52), _read_u16(blk, 54)
    return fp16_to_fp32((sc0 >> 12) | ((sc1 >> 8) & 0x00F0) | ((sc2 >> 4) & 0x0F00) | (sc3 & 0xF000))


@njit(inline="always")
def iq1_m_block(blk, codes, ls, negative):
    """One IQ1_M block (uint8 (56,)) decoded: its grid values (-1, 0, 1) into codes (uint64 (32,),
    read as int8 (256,)), the 16 sub-blocks' 3-bit scales into ls (int32 (16,)), whether each
    group of 8's delta is negative into negative (bool (32,)). Weight k = d * (2 ls[k // 16] + 1)
    * (value k +- delta of group k // 8), d = `iq1_m_scale`. The one decoder of the layout (the
    dequantizer's and engine/kernels/iq1.py's)."""
    for t in range(16):
        qh = np.int32(blk[32 + t])
        for k in range(2):
            codes[2 * t + k] = IQ1S_POINTS[np.int32(blk[2 * t + k]) | (((qh >> (4 * k)) & 7) << 8)]
            negative[2 * t + k] = (qh & (0x08 << (4 * k))) != 0
        ls[t] = (_read_u16(blk, 48 + 2 * (t // 4)) >> (3 * (t % 4))) & 7


@njit(**KERNEL)
def _dequantize_iq1_m(raw, y):
    for b in prange(raw.shape[0]):
        blk = raw[b]
        codes = np.empty(32, np.uint64)
        values = codes.view(np.int8)
        ls = np.empty(16, np.int32)
        negative = np.empty(32, np.bool_)
        iq1_m_block(blk, codes, ls, negative)
        d = iq1_m_scale(blk)
        for t in range(16):
            dl = d * F32(2 * ls[t] + 1)
            for k in range(16 * t, 16 * t + 16):
                y[b, k] = dl * (F32(values[k]) + (-DELTA if negative[k // 8] else DELTA))


# ---------------------------------------------------------------------------------------------
# quantizing: pieces shared by both types


@njit(**HELPER)
def _sort_by_value(xb, order):
    """order = indices of xb in ascending value, equal values in index order: what glibc's
    qsort (a stable merge sort for small arrays) gives ggml's iq1_sort_helper."""
    n = xb.shape[0]
    for j in range(n):
        order[j] = j
    for j in range(1, n):
        i = order[j]
        v = xb[i]
        k = j - 1
        while k >= 0 and xb[order[k]] > v:
            order[k + 1] = order[k]
            k -= 1
        order[k + 1] = i


@njit(**HELPER)
def _weigh_and_sort(xb, qw, first, sigma2, eps, weight, order):
    """The weights of the sub-block xb (columns from `first`) and its largest magnitude, returned;
    unless that is below eps (an all-zero sub-block for ggml), `order` sorts xb."""
    importance_weights(xb, qw, first, sigma2, ZERO, weight)
    vmax = max_abs(xb)
    if not vmax < eps:
        _sort_by_value(xb, order)
    return vmax


@njit(inline="always")
def _group_d2(qgrid, j, xx, scale, xb, weight, first):
    """The weighted squared distance of the 8 values of xb at `first` to grid entry j's levels
    as values xx, at this scale."""
    d2 = ZERO
    for i in range(8):
        q = xx[(qgrid[j, i] - 1) // 2]
        diff = scale * q - xb[first + i]
        d2 += weight[first + i] * diff * diff
    return d2


@njit(**HELPER)
def _best_neighbour2(neighbours, start, qgrid, xb, weight, first, scale, xx, L):
    """ggml's iq1_find_best_neighbour2: the listed neighbour whose levels, as values xx, best fit
    (weighted) the 8 values of xb at `first` at this scale; its levels go to L[first:first+8].
    Not iq_search's best_neighbour: the values are the levels shifted by the group's delta, and
    when no listed entry gives a finite distance ggml scans the whole grid."""
    best_d2 = FLT_MAX
    best = -1
    for jj in range(1, np.int32(neighbours[start]) + 1):
        j = np.int32(neighbours[start + jj])
        d2 = _group_d2(qgrid, j, xx, scale, xb, weight, first)
        if d2 < best_d2:
            best_d2 = d2
            best = j
    if best < 0:
        for j in range(qgrid.shape[0]):
            d2 = _group_d2(qgrid, j, xx, scale, xb, weight, first)
            if d2 < best_d2:
                best_d2 = d2
                best = j
    for i in range(8):
        L[first + i] = (qgrid[best, i] - 1) // 2
    return best


@njit(**HELPER)
def _grid_index(L, first, qgrid, kmap, neighbours, xb, weight, scale, xx):
    """The grid index of the 8 levels at L[first:]: on the grid, or the best listed neighbour
    (then L is updated). Returns (index, whether it was on the grid)."""
    index = np.int64(kmap[point_index(L, first, 8)])
    if index >= 0:
        return index, True
    return np.int64(_best_neighbour2(neighbours, -index - 1, qgrid, xb, weight, first, scale, xx, L)), False


@njit(**HELPER)
def _onto_grid(L, xb, weight, scale, negative, qgrid, kmap, neighbours, index):
    """Every group of 8 levels of the sub-block L onto the grid: index[k] = its grid index, or
    the best listed neighbour's (then L is updated); group k's values are the levels shifted by
    -delta where bit k of `negative` is set, else +delta. If a group was off the grid, the scale
    is refitted to the grid points (unless that fit is not positive). Returns the scale."""
    n_groups = xb.shape[0] // 8
    all_on_grid = True
    for k in range(n_groups):
        xx = X_M if (negative >> k) & 1 else X_P
        found, on = _grid_index(L, 8 * k, qgrid, kmap, neighbours, xb, weight, scale, xx)
        index[k] = found
        all_on_grid = all_on_grid and on
    if not all_on_grid:
        sumqx = ZERO
        sumq2 = ZERO
        for k in range(n_groups):
            xx = X_M if (negative >> k) & 1 else X_P
            for j in range(8):
                w = weight[8 * k + j]
                q = xx[(qgrid[index[k], j] - 1) // 2]
                sumqx += w * q * xb[8 * k + j]
                sumq2 += w * q * q
        if sumqx > ZERO and sumq2 > ZERO:
            scale = sumqx / sumq2
    return scale


@njit(**HELPER)
def _assign_levels(order, besti1, besti2, mirror, L):
    """Sorted positions below besti1 -> level 0, below besti2 -> 1, the rest -> 2; with `mirror`
    (a negative scale, which the caller flips with the delta signs) 2 - those levels."""
    n = order.shape[0]
    for j in range(n):
        level = 0 if j < besti1 else (1 if j < besti2 else 2)
        L[order[j]] = 2 - level if mirror else level


# ---------------------------------------------------------------------------------------------
# IQ1_S


@njit(**KERNEL)
def _quantize_iq1_s(x, qw, out, qgrid, kmap, neighbours):
    n_blocks = x.shape[1] // QK_K
    for r in prange(x.shape[0]):
        weight = np.empty(32, np.float32)
        sumx = np.empty(33, np.float32)
        sumw = np.empty(33, np.float32)
        order = np.empty(32, np.int32)
        L = np.zeros(32, np.int8)
        index = np.zeros(4, np.int32)
        scales = np.zeros(8, np.float32)
        shifts = np.zeros(8, np.int8)
        for ibl in range(n_blocks):
            xbl, blk, sigma2 = super_block(x, out, r, ibl, 50, True)
            max_scale = ZERO
            for s in range(8):
                xb = xbl[32 * s:32 * s + 32]
                vmax = _weigh_and_sort(xb, qw, QK_K * ibl + 32 * s, sigma2, GROUP_MAX_EPS_IQ1_S, weight, order)
                if vmax < GROUP_MAX_EPS_IQ1_S:
                    scales[s] = ZERO
                    shifts[s] = 1
                    continue
                sumx[0] = ZERO
                sumw[0] = ZERO
                for j in range(32):
                    i = order[j]
                    sumx[j + 1] = sumx[j] + weight[i] * xb[i]
                    sumw[j + 1] = sumw[j] + weight[i]
                best_score = -FLT_MAX
                scale = vmax
                besti1 = -1
                besti2 = -1
                best_shift = 0
                for i1 in range(33):
                    for i2 in range(i1, 33):
                        a = sumx[i1] - sumx[0]
                        b_ = sumx[i2] - sumx[i1]
                        c = sumx[32] - sumx[i2]
                        wa = sumw[i1] - sumw[0]
                        wb = sumw[i2] - sumw[i1]
                        wc = sumw[32] - sumw[i2]
                        for sign in range(2):
                            xx = X_P if sign == 0 else X_M
                            sumqx = a * xx[0] + b_ * xx[1] + c * xx[2]
                            sumq2 = wa * xx[0] * xx[0] + wb * xx[1] * xx[1] + wc * xx[2] * xx[2]
                            if sumq2 > ZERO and sumqx * sumqx > best_score * sumq2:
                                scale = sumqx / sumq2
                                best_score = scale * sumqx
                                besti1 = i1
                                besti2 = i2
                                best_shift = 1 if sign == 0 else -1
                if besti1 < 0 or besti2 < 0 or best_shift == 0:
                    scales[s] = ZERO
                    shifts[s] = 1
                    continue
                _assign_levels(order, besti1, besti2, scale < ZERO, L)
                if scale < ZERO:
                    scale = -scale
                    best_shift = -best_shift
                scale = _onto_grid(L, xb, weight, scale, 0 if best_shift == 1 else 0xF, qgrid, kmap, neighbours,
                                   index)
                h = 0
                for k in range(4):
                    blk[2 + 4 * s + k] = index[k] & 255
                    h |= (index[k] >> 8) << (3 * k)
                blk[34 + 2 * s] = h & 0xFF
                blk[35 + 2 * s] = h >> 8
                scales[s] = scale
                shifts[s] = best_shift
                max_scale = max_scale if max_scale > scale else scale
            if max_scale == ZERO:
                continue
            d, inv = block_scale(max_scale, 7)
            put_f16(blk, 0, d * FUDGE_S)
            for s in range(8):
                l = scale_code(inv, scales[s], 7)
                if shifts[s] == -1:
                    l |= 8
                blk[35 + 2 * s] |= l << 4   # bits 12..15 of the u16


# ---------------------------------------------------------------------------------------------
# IQ1_M


@njit(**HELPER)
def _half_levels(k, half):
    """The level values of half `half` (group) of an IQ1_M sub-block with delta signs k."""
    if half == 0:
        return X_P if k < 2 else X_M
    return X_P if k % 2 == 0 else X_M


@njit(**KERNEL)
def _quantize_iq1_m(x, qw, out, qgrid, kmap, neighbours):
    n_blocks = x.shape[1] // QK_K
    for r in prange(x.shape[0]):
        weight = np.empty(16, np.float32)
        order = np.empty(16, np.int32)
        L = np.zeros(16, np.int8)
        px = np.zeros((2, 17), np.float32)
        pw = np.zeros((2, 17), np.float32)
        sumqx = np.zeros(4, np.float32)
        sumq2 = np.zeros(4, np.float32)
        qx_p = np.zeros(2, np.float32)
        qx_m = np.zeros(2, np.float32)
        q2_p = np.zeros(2, np.float32)
        q2_m = np.zeros(2, np.float32)
        index = np.zeros(2, np.int32)
        scales = np.zeros(16, np.float32)
        shifts = np.zeros(16, np.int8)
        p2 = X_P[2]
        m2 = X_M[2]
        cp1 = X_P[0] * X_P[0] - X_P[1] * X_P[1]
        cp2 = X_P[1] * X_P[1] - X_P[2] * X_P[2]
        cm1 = X_M[0] * X_M[0] - X_M[1] * X_M[1]
        cm2 = X_M[1] * X_M[1] - X_M[2] * X_M[2]
        for ibl in range(n_blocks):
            xbl, blk, sigma2 = super_block(x, out, r, ibl, 56, True)
            max_scale = ZERO
            for t in range(16):
                xb = xbl[16 * t:16 * t + 16]
                vmax = _weigh_and_sort(xb, qw, QK_K * ibl + 16 * t, sigma2, GROUP_MAX_EPS_IQ1_M, weight, order)
                if vmax < GROUP_MAX_EPS_IQ1_M:
                    scales[t] = ZERO
                    shifts[t] = 0
                    continue
                # prefix sums per half of the sub-block (each half has its own delta sign)
                px[:, 0] = ZERO
                pw[:, 0] = ZERO
                for j in range(16):
                    i = order[j]
                    h = 0 if i < 8 else 1
                    px[h, j + 1] = px[h, j] + weight[i] * xb[i]
                    px[1 - h, j + 1] = px[1 - h, j]
                    pw[h, j + 1] = pw[h, j] + weight[i]
                    pw[1 - h, j + 1] = pw[1 - h, j]
                best_score = -FLT_MAX
                scale = vmax
                besti1 = -1
                besti2 = -1
                best_k = -1
                for i1 in range(17):
                    for i2 in range(i1, 17):
                        for h in range(2):
                            sx = px[h, i1] + px[h, i2]
                            qx_p[h] = px[h, 16] * p2 - sx
                            qx_m[h] = px[h, 16] * m2 - sx
                            q2_p[h] = pw[h, 16] * p2 * p2 + pw[h, i1] * cp1 + pw[h, i2] * cp2
                            q2_m[h] = pw[h, 16] * m2 * m2 + pw[h, i1] * cm1 + pw[h, i2] * cm2
                        # k: delta signs of (first half, second half): 0 ++, 1 +-, 2 -+, 3 --
                        sumqx[0] = qx_p[0] + qx_p[1]
                        sumqx[1] = qx_p[0] + qx_m[1]
                        sumqx[2] = qx_m[0] + qx_p[1]
                        sumqx[3] = qx_m[0] + qx_m[1]
                        sumq2[0] = q2_p[0] + q2_p[1]
                        sumq2[1] = q2_p[0] + q2_m[1]
                        sumq2[2] = q2_m[0] + q2_p[1]
                        sumq2[3] = q2_m[0] + q2_m[1]
                        for k in range(4):
                            if sumq2[k] > ZERO and sumqx[k] * sumqx[k] > best_score * sumq2[k]:
                                scale = sumqx[k] / sumq2[k]
                                best_score = scale * sumqx[k]
                                besti1 = i1
                                besti2 = i2
                                best_k = k
                if besti1 < 0 or besti2 < 0 or best_k < 0:
                    scales[t] = ZERO
                    shifts[t] = 0
                    continue
                _assign_levels(order, besti1, besti2, scale < ZERO, L)
                if scale < ZERO:
                    scale = -scale
                    best_k = 3 - best_k
                # best_k's bits: the second half's delta sign (bit 0), the first half's (bit 1)
                scale = _onto_grid(L, xb, weight, scale, (best_k >> 1) | ((best_k & 1) << 1), qgrid, kmap,
                                   neighbours, index)
                blk[2 * t] = index[0] & 255
                blk[2 * t + 1] = index[1] & 255
                blk[32 + t] = (index[0] >> 8) | ((index[1] >> 8) << 4)
                scales[t] = scale
                shifts[t] = best_k
                max_scale = max_scale if max_scale > scale else scale
            if max_scale == ZERO:
                continue
            # sub-block scales, then d refitted to the stored levels and scales
            sc = np.zeros(4, np.int32)
            d, inv = block_scale(max_scale, 7)
            fqx = ZERO
            fq2 = ZERO
            for t in range(16):
                l = scale_code(inv, scales[t], 7)
                sc[t // 4] |= l << (3 * (t % 4))
                blk[32 + t] |= IQ1M_SHIFT_MASKS[shifts[t]]
                xb = xbl[16 * t:16 * t + 16]
                importance_weights(xb, qw, QK_K * ibl + 16 * t, sigma2, ZERO, weight)
                m = F32(2 * l + 1)
                for k in range(2):
                    xx = _half_levels(shifts[t], k)
                    j_grid = np.int32(blk[2 * t + k]) + ((np.int32(blk[32 + t]) << (8 - 4 * k)) & 0x700)
                    for j in range(8):
                        w = weight[8 * k + j]
                        q = xx[(qgrid[j_grid, j] - 1) // 2] * m
                        fqx += w * q * xb[8 * k + j]
                        fq2 += w * q * q
            if fq2 > ZERO:
                d = fqx / fq2
            bits = np.int32(fp32_to_fp16(d * FUDGE_M))
            sc[0] |= (bits & 0x000F) << 12
            sc[1] |= (bits & 0x00F0) << 8
            sc[2] |= (bits & 0x0F00) << 4
            sc[3] |= bits & 0xF000
            for i in range(4):
                blk[48 + 2 * i] = sc[i] & 0xFF
                blk[49 + 2 * i] = (sc[i] >> 8) & 0xFF


# ---------------------------------------------------------------------------------------------
# registration

KINDS = {
    GGMLType.IQ1_S: LatticeKind(_quantize_iq1_s, _dequantize_iq1_s, "iq1s_grid", NWANT, KMAP_SIZE, False),
    GGMLType.IQ1_M: LatticeKind(_quantize_iq1_m, _dequantize_iq1_m, "iq1s_grid", NWANT, KMAP_SIZE, True),
}

for _type, _kind in KINDS.items():
    register_lattice(_type, _kind)
