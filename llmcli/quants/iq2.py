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

import numpy as np
from numba import njit, prange

from ..gguf.constants import GGMLType
from .floats import ggml_fp32_to_fp16
from .half import read_fp16
from .iq_grids import KSIGNS_IQ2XS, grid_bytes
from .iq_search import (MAP_SIZE_8X2, REROUND_ALL, REROUND_OFF_GRID, LatticeKind, block_scale, point_index,
                        register_lattice, scale_code, search_scale, search_scratch, super_block, weigh_and_fold)
from .kquant_search import F32, GROUP_MAX_EPS, TENTH, ZERO, make_qp_quants
from .legacy import read_u32

QK_K = 256
KERNEL = dict(parallel=True, cache=True, nogil=True, error_model="numpy")
HELPER = dict(cache=True, error_model="numpy")

GROUP_MAX_EPS_IQ2_S = F32(1e-8)  # IQ2_S's all-zero threshold (ggml's GROUP_MAX_EPS_IQ2_S)
HALF = F32(0.5)
QUARTER = F32(0.25)
F3 = F32(3.0)                    # kMaxQ: levels 0..kMaxQ-1, grid values 2l+1
F5 = F32(5.0)                    # 2*kMaxQ - 1, the largest grid value
IQ2_S_D_SHRINK = F32(0.9875)     # IQ2_S stores d * 0.9875 (its scales still use the unshrunk d)
MAP_SIZE = MAP_SIZE_8X2          # a point of 8 levels 0..2, two bits each, level k at bits 2k

# Dequantization tables (format data): grid entries as 8 bytes, the 7 -> 8 sign-bit expansion.
GRID_XXS = grid_bytes("iq2xxs_grid")
GRID_XS = grid_bytes("iq2xs_grid")
GRID_S = grid_bytes("iq2s_grid")
KSIGNS = KSIGNS_IQ2XS


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


@njit(inline="always")
def _dequantize_iq2(raw, y, group_of, grid):
    """Blocks raw (n_blocks, block bytes) -> y (n_blocks, 256) for the IQ2 type whose group
    reader is `group_of` (iq2_*_group) and codebook `grid` (GRID_*)."""
    for b in prange(raw.shape[0]):
        d = read_fp16(raw[b], 0)
        for g in range(32):
            index, signs, ls = group_of(raw[b], g)
            iq2_group_values(d, ls, grid, index, signs, y[b], 8 * g)


@njit(**KERNEL)
def _dequantize_iq2_xxs(raw, y):
    _dequantize_iq2(raw, y, iq2_xxs_group, GRID_XXS)


@njit(**HELPER)
def _quantize_block_iq2_xxs(x, qw, c0, sigma2, out, kmap, neighbours, qgrid, scratch):
    """One IQ2_XXS block (out, cleared) of the 256 values x (importances from qw[c0], or qw
    empty); scratch (4, 32)."""
    weight, waux, xval, scales = scratch[0], scratch[1], scratch[2], scratch[3]
    L, Laux, on_grid, on_grid_aux = search_scratch(32, 8)
    levels_u8 = np.zeros(32, np.uint8)
    signs = np.zeros(4, np.int32)
    q2 = np.zeros(16, np.uint32)
    max_scale = ZERO
    for ib in range(8):
        vmax = weigh_and_fold(x[32 * ib:32 * ib + 32], qw, c0 + 32 * ib, sigma2, QUARTER * sigma2, True, weight,
                              waux, xval, signs)
        if vmax < GROUP_MAX_EPS:
            scales[ib] = ZERO
            continue
        # the trial scales centre on make_qp_quants' fit of the magnitudes, not on their maximum
        scale = make_qp_quants(4, xval, levels_u8, weight)
        eff_max = scale * F3
        if eff_max <= ZERO:
            scales[ib] = ZERO
            continue
        scale = search_scale(xval, weight, waux, 32, 8, kmap, neighbours, qgrid, eff_max, F5, TENTH, 6, scale,
                             REROUND_ALL, L, Laux, on_grid, on_grid_aux)
        if scale < ZERO:   # ggml: "should never happen"; flip the scale and the signs
            scale = -scale
            for k in range(4):
                signs[k] = ~signs[k] & 127
        for k in range(4):
            index = kmap[point_index(L, 8 * k, 8)]
            q2[2 * ib] |= np.uint32(index) << np.uint32(8 * k)
            q2[2 * ib + 1] |= np.uint32(signs[k]) << np.uint32(7 * k)
        scales[ib] = scale
        max_scale = max_scale if max_scale > scale else scale
    if max_scale == ZERO:
        return
    d, inv_d = block_scale(max_scale, 15)
    h = ggml_fp32_to_fp16(d)
    out[0], out[1] = h & 0xFF, h >> 8
    for ib in range(8):
        q2[2 * ib + 1] |= np.uint32(scale_code(inv_d, scales[ib], 15)) << np.uint32(28)
    out[2:] = q2.view(np.uint8)


# ---------------------------------------------------------------------------------------------
# IQ2_XS and IQ2_S: 16 sub-blocks of 16 weights (two groups of 8), a 4-bit scale each.
#
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
    _dequantize_iq2(raw, y, iq2_xs_group, GRID_XS)


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
    _dequantize_iq2(raw, y, iq2_s_group, GRID_S)


# Quantizing IQ2_XS and IQ2_S: the same search, 19 trial scales around max/5, then the off-grid
# groups of the best re-rounded once. They differ in the signs (IQ2_S stores all 8), the weights'
# sigma2 (IQ2_S doubles it), the all-zero threshold, the layout and IQ2_S's shrunk d.

@njit(**HELPER)
def _quantize_block_iq2_16(x, qw, c0, sigma2, out, kmap, neighbours, qgrid, scratch, iq2_s):
    """One IQ2_S block (iq2_s) or IQ2_XS block (out, cleared) of the 256 values x (importances
    from qw[c0], or qw empty); scratch (4, 16)."""
    weight, waux, xval, scales = scratch[0], scratch[1], scratch[2], scratch[3]
    L, Laux, on_grid, on_grid_aux = search_scratch(16, 8)
    signs = np.zeros(2, np.int32)
    q2 = np.zeros(32, np.uint16)             # IQ2_XS's (index, signs) words
    max_scale = ZERO
    for ib in range(16):
        vmax = weigh_and_fold(x[16 * ib:16 * ib + 16], qw, c0 + 16 * ib, sigma2, QUARTER * sigma2, not iq2_s,
                              weight, waux, xval, signs)
        L[:] = 0
        if vmax < (GROUP_MAX_EPS_IQ2_S if iq2_s else GROUP_MAX_EPS):
            scales[ib] = ZERO
            continue
        scale = search_scale(xval, weight, waux, 16, 8, kmap, neighbours, qgrid, vmax, F5, TENTH, 9, vmax / F5,
                             REROUND_OFF_GRID, L, Laux, on_grid, on_grid_aux)
        if scale < ZERO:
            scale = -scale
            for k in range(2):
                signs[k] = ~signs[k] & (255 if iq2_s else 127)
        for k in range(2):
            index = kmap[point_index(L, 8 * k, 8)]
            g = 2 * ib + k
            if iq2_s:
                out[2 + g] = index & 255
                out[66 + g // 4] |= (index >> 8) << (2 * (g % 4))
                out[34 + g] = signs[k]
            else:
                q2[g] = index | (signs[k] << 9)
        scales[ib] = scale
        max_scale = max_scale if max_scale > scale else scale
    if max_scale == ZERO:
        return
    d, inv_d = block_scale(max_scale, 15)
    h = ggml_fp32_to_fp16(d * IQ2_S_D_SHRINK if iq2_s else d)
    out[0], out[1] = h & 0xFF, h >> 8
    if not iq2_s:
        out[2:66] = q2.view(np.uint8)
    scales_at = 74 if iq2_s else 66
    for ib in range(16):
        out[scales_at + ib // 2] |= scale_code(inv_d, scales[ib], 15) << (4 * (ib % 2))


# the three types' blocks, in the order of `_quantize_iq2`'s `kind`
XXS, XS, S = 0, 1, 2
BLOCK_BYTES = (66, 74, 82)


@njit(**KERNEL)
def _quantize_iq2(x, qw, out, qgrid, kmap, neighbours, kind):
    """Rows x (n, 256 k) -> out (n, k block bytes) for IQ2 type `kind` (XXS, XS, S)."""
    n_blocks = x.shape[1] // QK_K
    nbytes = BLOCK_BYTES[kind]
    for r in prange(x.shape[0]):
        scratch = np.zeros((4, 32 if kind == XXS else 16), np.float32)
        for b in range(n_blocks):
            xb, blk, sigma2 = super_block(x, out, r, b, nbytes, kind == S)
            if kind == XXS:
                _quantize_block_iq2_xxs(xb, qw, b * QK_K, sigma2, blk, kmap, neighbours, qgrid, scratch)
            else:
                _quantize_block_iq2_16(xb, qw, b * QK_K, sigma2, blk, kmap, neighbours, qgrid, scratch, kind == S)


# ---------------------------------------------------------------------------------------------
# registration

KINDS = {
    GGMLType.IQ2_XXS: LatticeKind(_quantize_iq2, _dequantize_iq2_xxs, "iq2xxs_grid", 2, MAP_SIZE, False, (XXS,)),
    GGMLType.IQ2_XS: LatticeKind(_quantize_iq2, _dequantize_iq2_xs, "iq2xs_grid", 2, MAP_SIZE, False, (XS,)),
    GGMLType.IQ2_S: LatticeKind(_quantize_iq2, _dequantize_iq2_s, "iq2s_grid", 1, MAP_SIZE, True, (S,)),
}

for _type, _kind in KINDS.items():
    register_lattice(_type, _kind)
