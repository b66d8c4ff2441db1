"""2-bit i-quants IQ2_XXS, IQ2_XS, IQ2_S: lattice codebooks of 8 weights, byte-exact with ggml.

A super-block holds 256 weights in groups of 8. A group stores the index of one entry of a fixed
grid (iq_grids: iq2xxs_grid 256 entries, iq2xs_grid 512, iq2s_grid 1024; each entry 8 magnitudes
from {8, 25, 43}) and 8 sign bits; IQ2_XXS and IQ2_XS keep 7 of them and imply the 8th by an even
count of minus signs (KSIGNS_IQ2XS). A 4-bit scale per 32 (IQ2_XXS) or 16 (IQ2_XS, IQ2_S) weights
multiplies the block's fp16 d:  weight = d * (0.5 + ls) / 4 * grid[index][j] * sign[j].
Dequantizing equals ggml's `dequantize_row_iq2_xxs` / `_xs` / `_s`.

Quantizing equals ggml's `quantize_iq2_xxs` / `_xs` / `_s` with importance weights (the only way
llama-quantize runs them: it refuses these types for a tensor without imatrix data). Without
weights ggml aborts for IQ2_XXS and IQ2_XS (`GGML_ASSERT(quant_weights)`), so these codecs refuse;
IQ2_S has a weightless path (weights sigma2/4 + x*x), reproduced here. Per group of 8 the search
rounds x / scale to levels 0..2, reads the grid entry at that point of ggml's map `kmap` or, off
the grid, picks the best of the point's precomputed grid neighbours - the entries at the nearest
one (IQ2_S) or two (IQ2_XXS, IQ2_XS) distances, ggml's `iq2xs_init_impl`. `search_tables` builds
map and neighbour lists once per process (a fraction of a second). Every float op is float32 in
ggml's order (see kquant_search.py); kernels run `prange` over rows, so the thread count never
changes the bytes.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit, prange

from ..errors import UnsupportedError
from ..gguf.constants import TYPE_INFO, GGMLType
from .floats import ggml_fp32_to_fp16
from .half import read_fp16
from .iq_grids import KSIGNS_IQ2XS, grid_bytes
from .iq_search import MAP_SIZE_8X2, search_tables
from .kquant_search import F32, GROUP_MAX_EPS, ONE, TENTH, ZERO, make_qp_quants, nearest_int
from .kquants import importance_weight, sum_squares
from .legacy import read_u32
from .registry import Codec, Decoder, register

QK_K = 256
KERNEL = dict(parallel=True, cache=True, nogil=True, error_model="numpy")
HELPER = dict(cache=True, error_model="numpy")

GROUP_MAX_EPS_IQ2_S = F32(1e-8)  # IQ2_S's all-zero threshold (ggml's GROUP_MAX_EPS_IQ2_S)
HALF = F32(0.5)
QUARTER = F32(0.25)
F3 = F32(3.0)                    # kMaxQ: levels 0..kMaxQ-1, grid values 2l+1
F5 = F32(5.0)                    # 2*kMaxQ - 1, the largest grid value
F31 = F32(31.0)
F256 = F32(256.0)
F2 = F32(2.0)
IQ2_S_D_SHRINK = F32(0.9875)     # IQ2_S stores d * 0.9875 (its scales still use the unshrunk d)
MAP_SIZE = MAP_SIZE_8X2          # a point of 8 levels 0..2, two bits each, level k at bits 2k

# Dequantization tables (format data): grid entries as 8 bytes, the 7 -> 8 sign-bit expansion.
GRID_XXS = grid_bytes("iq2xxs_grid")
GRID_XS = grid_bytes("iq2xs_grid")
GRID_S = grid_bytes("iq2s_grid")
KSIGNS = KSIGNS_IQ2XS


# ---------------------------------------------------------------------------------------------
# Shared pieces of the three searches


@njit(**HELPER)
def _best_neighbour(tables_neighbours, qgrid, o, xval, waux, first, scale, L):
    """ggml's iq2_find_best_neighbour: of the neighbour list at o, the entry nearest to
    xval[first:first+8] / scale by waux-weighted squared error (first best wins ties); writes its
    levels to L[first:first+8] and returns it."""
    best_d2 = F32(3.4028234663852886e38)
    index = -1
    for j in range(1, tables_neighbours[o] + 1):
        entry = tables_neighbours[o + j]
        d2 = ZERO
        for i in range(8):
            diff = scale * F32(qgrid[entry, i]) - xval[first + i]
            d2 += waux[first + i] * diff * diff
        if d2 < best_d2:
            best_d2 = d2
            index = entry
    for i in range(8):
        L[first + i] = (qgrid[index, i] - 1) // 2
    return index


@njit(**HELPER)
def _round_group(xval, first, inv_scale, L):
    """L[first:first+8] = x / scale rounded to the levels 0..2 (x ~ scale * (2l + 1)); the point's
    map index."""
    u = 0
    for i in range(8):
        level = nearest_int(HALF * (inv_scale * xval[first + i] - ONE))
        level = max(0, min(2, level))
        L[first + i] = level
        u |= level << (2 * i)
    return u


@njit(**HELPER)
def _snap_group(kmap, neighbours, qgrid, xval, waux, first, inv_scale, scale, L):
    """Round a group of 8 and move it onto the grid; returns whether it was on the grid already."""
    u = _round_group(xval, first, inv_scale, L)
    if kmap[u] >= 0:
        return True
    _best_neighbour(neighbours, qgrid, -kmap[u] - 1, xval, waux, first, scale, L)
    return False


@njit(**HELPER)
def _fit(xval, weight, L, n):
    """(sum w*x*q, sum w*q*q) over n values with q = 2l + 1, in ggml's order."""
    sumqx = ZERO
    sumq2 = ZERO
    for i in range(n):
        w = weight[i]
        q = F32(2 * L[i] + 1)
        sumqx += w * xval[i] * q
        sumq2 += w * q * q
    return sumqx, sumq2


@njit(**HELPER)
def _grid_index(kmap, L, first):
    u = 0
    for i in range(8):
        u |= np.int32(L[first + i]) << (2 * i)
    return kmap[u]


@njit(**HELPER)
def _vmax(xval, n):
    m = xval[0]
    for i in range(1, n):
        m = m if m > xval[i] else xval[i]   # ggml's MAX(max, x)
    return m


@njit(**HELPER)
def _weights(x, qw, c0, first, n, sigma2, weight, waux):
    """weight = importance * sqrt(sigma2 + x*x) (IQ2_S without importance: sigma2/4 + x*x) for
    x[first:first+n] of a block whose importances start at qw[c0]; waux = sqrt(weight), the
    neighbour search's weights."""
    for i in range(n):
        xi = x[first + i]
        if qw.shape[0]:
            weight[i] = importance_weight(qw[c0 + first + i], sigma2, xi)
        else:
            weight[i] = QUARTER * sigma2 + xi * xi
    for i in range(n):
        waux[i] = np.sqrt(weight[i])


@njit(**HELPER)
def _even_signs(x, first, weight, xval, k):
    """|x| of group k into xval and its 7 stored sign bits. An odd count of negatives flips the
    value of least weight*x*x (its sign is then wrong in the block; xval carries it negative)."""
    s = 0
    nflip = 0
    for i in range(8):
        v = x[first + 8 * k + i]
        if v >= ZERO:
            xval[8 * k + i] = v
        else:
            xval[8 * k + i] = -v
            nflip += 1
            s |= 1 << i
    if nflip % 2:
        imin = 0
        v = x[first + 8 * k]
        least = weight[8 * k] * v * v
        for i in range(1, 8):
            v = x[first + 8 * k + i]
            ax = weight[8 * k + i] * v * v
            if ax < least:
                least = ax
                imin = i
        xval[8 * k + imin] = -xval[8 * k + imin]
        s ^= 1 << imin
    return s & 127


@njit(**HELPER)
def _block_scale_d(max_scale):
    """The super-block's d = max_scale / 31 and its inverse for the 4-bit scales."""
    d = max_scale / F31
    return d, ONE / d


@njit(**HELPER)
def _scale_code(inv_d, scale):
    return max(0, min(15, nearest_int(HALF * (inv_d * scale - ONE))))


# ---------------------------------------------------------------------------------------------
# IQ2_XXS, 66 bytes per 256 weights: 8 sub-blocks of 32, each two little-endian uint32
#
#   byte  0      2                                                              66
#         +------+---------------------------------------------------------------+
#         |  d   | per sub-block s (8 bytes at 2 + 8s):                          |
#         | fp16 |   bytes 0..3  grid index (iq2xxs_grid, 256 entries) of group l |
#         |      |   uint32 at 4: bits 7l..7l+6 sign bits of group l (KSIGNS),    |
#         |      |                bits 28..31 scale ls                            |
#         +------+---------------------------------------------------------------+
#   weight 32s + 8l + j = d * (0.5 + ls) * 0.25 * grid[j] * (-1 if sign bit j)


@njit(inline="always")
def iq2_xxs_group(blk, g):
    """(grid index, 8 sign bits, 4-bit scale ls) of group g < 32 (weights 8g .. 8g+7) of an
    IQ2_XXS block (uint8 (66,))."""
    s, l = g // 4, g % 4
    aux = read_u32(blk, 2 + 8 * s + 4)
    return (np.int32(blk[2 + 8 * s + l]), np.int32(KSIGNS[(aux >> np.uint32(7 * l)) & np.uint32(127)]),
            np.int32(aux >> np.uint32(28)))


@njit(inline="always")
def iq2_group_values(d, ls, grid, index, signs, out, first):
    """out[first + j] = weight j < 8 of a group: d * (0.5 + ls) * 0.25 * grid[index, j], negated
    where bit j of signs is set (ggml's dequantize_row_iq2_* arithmetic, every IQ2 type)."""
    db = d * (HALF + F32(ls)) * QUARTER
    for j in range(8):
        v = db * F32(grid[index, j])
        out[first + j] = -v if (signs >> j) & 1 else v


@njit(**KERNEL)
def _dequantize_iq2_xxs(raw, y):
    for b in prange(raw.shape[0]):
        d = read_fp16(raw[b], 0)
        for g in range(32):
            index, signs, ls = iq2_xxs_group(raw[b], g)
            iq2_group_values(d, ls, GRID_XXS, index, signs, y[b], 8 * g)


@njit(**HELPER)
def _quantize_block_iq2_xxs(x, qw, c0, out, kmap, neighbours, qgrid, scratch, levels_u8):
    weight, waux, xval, scales = scratch[0], scratch[1], scratch[2], scratch[3]
    L = np.zeros(32, np.int8)
    Laux = np.zeros(32, np.int8)
    signs = np.zeros(4, np.int32)
    q2 = np.zeros(16, np.uint32)
    sigma2 = sum_squares(x[:QK_K]) / F256
    max_scale = ZERO
    for ib in range(8):
        _weights(x, qw, c0, 32 * ib, 32, sigma2, weight, waux)
        for k in range(4):
            signs[k] = _even_signs(x, 32 * ib, weight, xval, k)
        if _vmax(xval, 32) < GROUP_MAX_EPS:
            scales[ib] = ZERO
            continue
        scale = make_qp_quants(4, xval[:32], levels_u8, weight[:32])
        eff_max = scale * F3
        if eff_max <= ZERO:
            scales[ib] = ZERO
            continue
        best = ZERO
        for step in range(-6, 7):
            inv = (F5 + F32(step) * TENTH) / eff_max
            this_scale = ONE / inv
            for k in range(4):
                _snap_group(kmap, neighbours, qgrid, xval, waux, 8 * k, inv, this_scale, Laux)
            sumqx, sumq2 = _fit(xval, weight, Laux, 32)
            if sumq2 > ZERO and sumqx * sumqx > best * sumq2:
                scale = sumqx / sumq2
                best = scale * sumqx
                L[:] = Laux
        if scale > ZERO:
            inv = ONE / scale
            for k in range(4):
                _snap_group(kmap, neighbours, qgrid, xval, waux, 8 * k, inv, scale, L)
            sumqx, sumq2 = _fit(xval, weight, L, 32)
            if sumq2 > ZERO:
                scale = sumqx / sumq2
        if scale < ZERO:   # ggml: "should never happen"; flip the scale and the signs
            scale = -scale
            for k in range(4):
                signs[k] = ~signs[k] & 127
        for k in range(4):
            index = _grid_index(kmap, L, 8 * k)
            q2[2 * ib] |= np.uint32(index) << np.uint32(8 * k)
            q2[2 * ib + 1] |= np.uint32(signs[k]) << np.uint32(7 * k)
        scales[ib] = scale
        max_scale = max_scale if max_scale > scale else scale
    out[:] = 0
    if max_scale == ZERO:
        return
    d, inv_d = _block_scale_d(max_scale)
    h = ggml_fp32_to_fp16(d)
    out[0], out[1] = h & 0xFF, h >> 8
    for ib in range(8):
        q2[2 * ib + 1] |= np.uint32(_scale_code(inv_d, scales[ib])) << np.uint32(28)
    out[2:] = q2.view(np.uint8)


@njit(**KERNEL)
def _quantize_iq2_xxs(x, qw, out, kmap, neighbours, qgrid):
    n_blocks = x.shape[1] // QK_K
    for r in prange(x.shape[0]):
        scratch = np.zeros((4, 32), np.float32)
        levels_u8 = np.zeros(32, np.uint8)
        for b in range(n_blocks):
            _quantize_block_iq2_xxs(x[r, b * QK_K:(b + 1) * QK_K], qw, b * QK_K,
                                    out[r, b * 66:(b + 1) * 66], kmap, neighbours, qgrid, scratch, levels_u8)


# ---------------------------------------------------------------------------------------------
# IQ2_XS and IQ2_S: 16 sub-blocks of 16 weights (two groups of 8), a 4-bit scale each. The same
# search: 19 trial scales around max/5, then the off-grid groups of the best re-rounded once.


@njit(**HELPER)
def _search_16(xval, weight, waux, kmap, neighbours, qgrid, L, Laux, on_grid, on_grid_aux):
    """The scale of one sub-block of 16 and its levels in L (both groups on the grid)."""
    vmax = _vmax(xval, 16)
    best = ZERO
    scale = vmax / F5
    on_grid[0] = on_grid[1] = True
    for step in range(-9, 10):
        inv = (F5 + F32(step) * TENTH) / vmax
        this_scale = ONE / inv
        for k in range(2):
            on_grid_aux[k] = _snap_group(kmap, neighbours, qgrid, xval, waux, 8 * k, inv, this_scale, Laux)
        sumqx, sumq2 = _fit(xval, weight, Laux, 16)
        if sumq2 > ZERO and sumqx * sumqx > best * sumq2:
            scale = sumqx / sumq2
            best = scale * sumqx
            L[:] = Laux
            on_grid[0], on_grid[1] = on_grid_aux[0], on_grid_aux[1]
    if (not on_grid[0] or not on_grid[1]) and scale > ZERO:
        inv = ONE / scale
        for k in range(2):
            if not on_grid[k]:
                _snap_group(kmap, neighbours, qgrid, xval, waux, 8 * k, inv, scale, L)
        sumqx, sumq2 = _fit(xval, weight, L, 16)
        if sumq2 > ZERO:
            scale = sumqx / sumq2
    return scale


# IQ2_XS, 74 bytes per 256 weights
#
#   byte  0      2                                          66               74
#         +------+------------------------------------------+----------------+
#         |  d   | qs[32] uint16 LE, group g = 0..31:        | scales[8]:     |
#         | fp16 |   bits 0..8  grid index (iq2xs_grid, 512) | lo nibble: 16  |
#         |      |   bits 9..15 sign bits (KSIGNS)           | weights 32s,   |
#         |      |                                           | hi: 32s + 16   |
#         +------+------------------------------------------+----------------+
#   weight 8g + j = d * (0.5 + ls) * 0.25 * grid[j] * (-1 if sign bit j), ls the nibble of 8g + j

@njit(inline="always")
def iq2_xs_group(blk, g):
    """(grid index, 8 sign bits, 4-bit scale ls) of group g < 32 of an IQ2_XS block (uint8 (74,))."""
    q = np.int32(blk[2 + 2 * g]) | (np.int32(blk[3 + 2 * g]) << 8)
    return q & 511, np.int32(KSIGNS[q >> 9]), (np.int32(blk[66 + g // 4]) >> (4 * ((g // 2) % 2))) & 0xF


@njit(**KERNEL)
def _dequantize_iq2_xs(raw, y):
    for b in prange(raw.shape[0]):
        d = read_fp16(raw[b], 0)
        for g in range(32):
            index, signs, ls = iq2_xs_group(raw[b], g)
            iq2_group_values(d, ls, GRID_XS, index, signs, y[b], 8 * g)


@njit(**HELPER)
def _quantize_block_iq2_xs(x, qw, c0, out, kmap, neighbours, qgrid, scratch):
    weight, waux, xval, scales = scratch[0], scratch[1], scratch[2], scratch[3]
    L = np.zeros(16, np.int8)
    Laux = np.zeros(16, np.int8)
    on_grid = np.zeros(2, np.bool_)
    on_grid_aux = np.zeros(2, np.bool_)
    signs = np.zeros(2, np.int32)
    q2 = np.zeros(32, np.uint16)
    sigma2 = sum_squares(x[:QK_K]) / F256
    max_scale = ZERO
    for ib in range(16):
        _weights(x, qw, c0, 16 * ib, 16, sigma2, weight, waux)
        for k in range(2):
            signs[k] = _even_signs(x, 16 * ib, weight, xval, k)
        L[:] = 0
        if _vmax(xval, 16) < GROUP_MAX_EPS:
            scales[ib] = ZERO
            continue
        scale = _search_16(xval, weight, waux, kmap, neighbours, qgrid, L, Laux, on_grid, on_grid_aux)
        if scale < ZERO:
            scale = -scale
            for k in range(2):
                signs[k] = ~signs[k] & 127
        for k in range(2):
            q2[2 * ib + k] = _grid_index(kmap, L, 8 * k) | (signs[k] << 9)
        scales[ib] = scale
        max_scale = max_scale if max_scale > scale else scale
    out[:] = 0
    if max_scale == ZERO:
        return
    d, inv_d = _block_scale_d(max_scale)
    h = ggml_fp32_to_fp16(d)
    out[0], out[1] = h & 0xFF, h >> 8
    out[2:66] = q2.view(np.uint8)
    for ib in range(16):
        out[66 + ib // 2] |= _scale_code(inv_d, scales[ib]) << (4 * (ib % 2))


@njit(**KERNEL)
def _quantize_iq2_xs(x, qw, out, kmap, neighbours, qgrid):
    n_blocks = x.shape[1] // QK_K
    for r in prange(x.shape[0]):
        scratch = np.zeros((4, 16), np.float32)
        for b in range(n_blocks):
            _quantize_block_iq2_xs(x[r, b * QK_K:(b + 1) * QK_K], qw, b * QK_K,
                                   out[r, b * 74:(b + 1) * 74], kmap, neighbours, qgrid, scratch)


# IQ2_S, 82 bytes per 256 weights
#
#   byte  0      2             34               66          74          82
#         +------+-------------+----------------+-----------+-----------+
#         |  d   | qs[32]      | signs[32]      | qh[8]     | scales[8] |
#         | fp16 | grid index  | 8 sign bits    | bits 2l.. | as IQ2_XS |
#         |      | low 8 bits, | of group g     | 2l+1 of   |           |
#         |      | group g     |                | qh[s]:    |           |
#         |      |             |                | index bits|           |
#         |      |             |                | 8..9 of   |           |
#         |      |             |                | group 4s+l|           |
#         +------+-------------+----------------+-----------+-----------+
#   grid iq2s_grid (1024 entries); weight 8g + j = d * (0.5 + ls) * 0.25 * grid[j] * (-1 if sign j)

@njit(inline="always")
def iq2_s_group(blk, g):
    """(grid index, 8 sign bits, 4-bit scale ls) of group g < 32 of an IQ2_S block (uint8 (82,))."""
    s, l = g // 4, g % 4
    index = np.int32(blk[2 + g]) | ((np.int32(blk[66 + s]) << (8 - 2 * l)) & 0x300)
    return index, np.int32(blk[34 + g]), (np.int32(blk[74 + s]) >> (4 * (l // 2))) & 0xF


@njit(**KERNEL)
def _dequantize_iq2_s(raw, y):
    for b in prange(raw.shape[0]):
        d = read_fp16(raw[b], 0)
        for g in range(32):
            index, signs, ls = iq2_s_group(raw[b], g)
            iq2_group_values(d, ls, GRID_S, index, signs, y[b], 8 * g)


@njit(**HELPER)
def _quantize_block_iq2_s(x, qw, c0, out, kmap, neighbours, qgrid, scratch):
    weight, waux, xval, scales = scratch[0], scratch[1], scratch[2], scratch[3]
    L = np.zeros(16, np.int8)
    Laux = np.zeros(16, np.int8)
    on_grid = np.zeros(2, np.bool_)
    on_grid_aux = np.zeros(2, np.bool_)
    signs = np.zeros(2, np.int32)
    out[:] = 0
    sigma2 = F2 * sum_squares(x[:QK_K]) / F256
    max_scale = ZERO
    for ib in range(16):
        _weights(x, qw, c0, 16 * ib, 16, sigma2, weight, waux)
        for k in range(2):       # all 8 sign bits stored: no parity flip
            s = 0
            for i in range(8):
                v = x[16 * ib + 8 * k + i]
                if v >= ZERO:
                    xval[8 * k + i] = v
                else:
                    xval[8 * k + i] = -v
                    s |= 1 << i
            signs[k] = s
        L[:] = 0
        if _vmax(xval, 16) < GROUP_MAX_EPS_IQ2_S:
            scales[ib] = ZERO
            continue
        scale = _search_16(xval, weight, waux, kmap, neighbours, qgrid, L, Laux, on_grid, on_grid_aux)
        if scale < ZERO:
            scale = -scale
            for k in range(2):
                signs[k] = ~signs[k] & 255
        for k in range(2):
            index = _grid_index(kmap, L, 8 * k)
            g = 2 * ib + k
            out[2 + g] = index & 255
            out[66 + g // 4] |= (index >> 8) << (2 * (g % 4))
            out[34 + g] = signs[k]
        scales[ib] = scale
        max_scale = max_scale if max_scale > scale else scale
    if max_scale == ZERO:
        return
    d, inv_d = _block_scale_d(max_scale)
    h = ggml_fp32_to_fp16(d * IQ2_S_D_SHRINK)
    out[0], out[1] = h & 0xFF, h >> 8
    for ib in range(16):
        out[74 + ib // 2] |= _scale_code(inv_d, scales[ib]) << (4 * (ib % 2))


@njit(**KERNEL)
def _quantize_iq2_s(x, qw, out, kmap, neighbours, qgrid):
    n_blocks = x.shape[1] // QK_K
    for r in prange(x.shape[0]):
        scratch = np.zeros((4, 16), np.float32)
        for b in range(n_blocks):
            _quantize_block_iq2_s(x[r, b * QK_K:(b + 1) * QK_K], qw, b * QK_K,
                                  out[r, b * 82:(b + 1) * 82], kmap, neighbours, qgrid, scratch)


# ---------------------------------------------------------------------------------------------
# registration

class _Kind(NamedTuple):
    quantize: object
    dequantize: object
    grid: str               # iq_grids name
    nwant: int              # neighbour distances kept (ggml's nwant)
    weightless: bool        # whether ggml quantizes without importance weights


KINDS = {
    GGMLType.IQ2_XXS: _Kind(_quantize_iq2_xxs, _dequantize_iq2_xxs, "iq2xxs_grid", 2, False),
    GGMLType.IQ2_XS: _Kind(_quantize_iq2_xs, _dequantize_iq2_xs, "iq2xs_grid", 2, False),
    GGMLType.IQ2_S: _Kind(_quantize_iq2_s, _dequantize_iq2_s, "iq2s_grid", 1, True),
}


def _codec(ggml_type: GGMLType, kind: _Kind) -> Codec:
    info = TYPE_INFO[ggml_type]
    no_weights = np.empty(0, np.float32)

    def quantize(rows: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        if weights is None and not kind.weightless:
            raise UnsupportedError(f"quantizing to {ggml_type.name} needs importance weights "
                                   f"(an importance matrix: --imatrix)")
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        qw = no_weights if weights is None else np.ascontiguousarray(weights, dtype=np.float32)
        out = np.zeros((rows.shape[0], rows.shape[1] // QK_K * info.block_bytes), np.uint8)
        tables = search_tables(kind.grid, kind.nwant, MAP_SIZE)
        kind.quantize(rows, qw, out, tables.kmap, tables.neighbours, tables.qgrid)
        return out

    quantize.__name__ = f"quantize_{ggml_type.name.lower()}"
    decoder = Decoder(kind.dequantize, ggml_type)
    return register(Codec(ggml_type, decoder.dequantize, quantize, uses_weights=True, decoder=decoder))

for _type, _kind in KINDS.items():
    _codec(_type, _kind)
