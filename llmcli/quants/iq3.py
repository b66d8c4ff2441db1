"""3-bit lattice i-quants IQ3_XXS and IQ3_S, byte-exact with ggml.

Both code 256 weights as 8 sub-blocks of 32 = 8 groups of 4; a group is an index into a grid of
4-value points (iq3xxs_grid: 256 entries, iq3s_grid: 512), each weight's sign is stored apart,
and a 4-bit scale per sub-block multiplies the super-block's fp16 d.

Quantizing equals ggml's `quantize_iq3_xxs` / `quantize_iq3_s` (quantize_row_iq3_*_impl), with
importance weights (w[col] * sqrt(sigma2 + x*x)) or without (x*x), and uses ggml's search: for
31 (IQ3_XXS) or 19 (IQ3_S) trial scales, round each group's magnitudes to levels 0..7, look the
point up in the grid map, else take the nearest of its listed neighbours (iq_search); keep the
trial with the best weighted fit; requantize groups that fell off the grid at the fitted scale.
Every float op is float32 in ggml's order (see kquant_search.py). Rows run in parallel; blocks
are independent, so the thread count never changes the bytes.

ggml quirk kept: in IQ3_S an all-zero sub-block does not advance the qs/signs write position,
so the following sub-blocks' grid indices and signs move up one slot (their qh bits and scales
stay in place).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..gguf.constants import GGMLType
from .half import read_fp16
from .iq_grids import KSIGN_MASKS, SIGN_BYTE_MASKS, grid, negate_bytes
from .iq_search import (REROUND_ALL_IF_OFF, REROUND_OFF_GRID, LatticeKind, block_scale, point_index,
                        register_lattice, scale_code, search_scale, search_scratch, super_block, weigh_and_fold)
from .kquant_search import F32, ZERO
from .kquants import put_f16
from .legacy import read_u32

QK_K = 256
KERNEL = dict(parallel=True, cache=True, nogil=True, error_model="numpy")

IQ3XXS_POINTS = grid("iq3xxs_grid")       # (256,) uint32: an entry's 4 magnitudes as one word
IQ3S_POINTS = grid("iq3s_grid")           # (512,) uint32
KMAP_SIZE = 1 << 12                       # 4 levels of 3 bits
NWANT_XXS, NWANT_S = 2, 3                 # distinct neighbour distances ggml lists per type
GROUP_MAX_EPS_IQ3_XXS = F32(1e-8)
F_HALF = F32(0.5)
F_FIFTH = F32(0.2)
F15 = F32(15.0)
FUDGE_XXS = F32(1.0125)
FUDGE_S = F32(1.033)


# ---------------------------------------------------------------------------------------------
# IQ3_XXS, 98 bytes per 256 weights
#
#   byte  0      2                         66                                   98
#         +------+-------------------------+------------------------------------+
#         |  d   | qs[64]: grid index of   | 8 x u32 LE, one per sub-block s:   |
#         | fp16 | group g (4 weights),    |   bits 7l..7l+6: signs of weights  |
#         |      | iq3xxs_grid, 8 per s    |   8l..8l+7 via ksigns_iq2xs        |
#         |      |                         |   bits 28..31: scale ls            |
#         +------+-------------------------+------------------------------------+
# weight = d * (0.5 + ls) * 0.5 * grid[qs][j] * sign


@njit(inline="always")
def iq3_xxs_block(blk, codes, ls):
    """One IQ3_XXS block (uint8 (98,)) decoded: its signed grid values into codes (uint64 (32,),
    read as int8 (256,): |value| <= 62), the sub-blocks' 4-bit scales into ls (int32 (8,)).
    Weight k = d * (0.5 + ls[k // 32]) * 0.5 * value k. The one decoder of the layout: the
    dequantizer and the engine's kernels (engine/kernels/iq3.py) both use it. Two grid entries (4
    bytes each) make one uint64 in registers, whose 8 signs apply at once (`negate_bytes`): one
    store per 8 weights (narrower stores read back wider stall the store forwarding)."""
    for s in range(8):
        aux = read_u32(blk, 66 + 4 * s)
        for l in range(4):  # weights 8l .. 8l + 7 of sub-block s: two grid entries, one sign byte
            at = 2 + 8 * s + 2 * l
            pair = np.uint64(IQ3XXS_POINTS[blk[at]]) | (np.uint64(IQ3XXS_POINTS[blk[at + 1]]) << np.uint64(32))
            codes[4 * s + l] = negate_bytes(pair, KSIGN_MASKS[(aux >> np.uint32(7 * l)) & np.uint32(127)])
        ls[s] = np.int32(aux >> np.uint32(28))


@njit(**KERNEL)
def _dequantize_iq3_xxs(raw, y):
    for b in prange(raw.shape[0]):
        blk = raw[b]
        codes = np.empty(32, np.uint64)
        values = codes.view(np.int8)
        ls = np.empty(8, np.int32)
        iq3_xxs_block(blk, codes, ls)
        d = read_fp16(blk, 0)
        for s in range(8):
            db = d * (F_HALF + F32(ls[s])) * F_HALF
            for k in range(32 * s, 32 * s + 32):  # db * -g is -(db * g) bit for bit: signs first is fine
                y[b, k] = db * F32(values[k])


# ---------------------------------------------------------------------------------------------
# IQ3_S, 110 bytes per 256 weights
#
#   byte  0      2                 66          74                106         110
#         +------+-----------------+-----------+-----------------+-----------+
#         |  d   | qs[64]: low 8   | qh[8]:    | signs[32]: one  | scales[4] |
#         | fp16 | bits of group   | bit k of  | bit per weight, | nibble per|
#         |      | g's index into  | qh[s] =   | byte 4s+l for   | sub-block |
#         |      | iq3s_grid       | bit 8 of  | weights 8l..8l+7| (lo: even |
#         |      |                 | group 8s+k| of sub-block s  |  hi: odd) |
#         +------+-----------------+-----------+-----------------+-----------+
# weight = d * (1 + 2 * ls) * grid[qs | qh << 8][j] * sign


@njit(inline="always")
def iq3_s_block(blk, codes, ls):
    """One IQ3_S block (uint8 (110,)) decoded: its signed grid values into codes (uint64 (32,),
    read as int8 (256,): |value| <= 15), the sub-blocks' 4-bit scales into ls (int32 (8,)).
    Weight k = d * (1 + 2 ls[k // 32]) * value k. The one decoder of the layout (the
    dequantizer's and engine/kernels/iq3.py's)."""
    for s in range(8):
        qh = np.int32(blk[66 + s])
        for l in range(4):  # weights 8l .. 8l + 7 of sub-block s: groups 2l, 2l + 1, sign byte 4s + l
            g = 2 * l
            low = IQ3S_POINTS[np.int32(blk[2 + 8 * s + g]) | (((qh >> g) & 1) << 8)]
            high = IQ3S_POINTS[np.int32(blk[3 + 8 * s + g]) | (((qh >> (g + 1)) & 1) << 8)]
            pair = np.uint64(low) | (np.uint64(high) << np.uint64(32))
            codes[4 * s + l] = negate_bytes(pair, SIGN_BYTE_MASKS[blk[74 + 4 * s + l]])
        ls[s] = (np.int32(blk[106 + s // 2]) >> (4 * (s % 2))) & 0x0F


@njit(**KERNEL)
def _dequantize_iq3_s(raw, y):
    for b in prange(raw.shape[0]):
        blk = raw[b]
        codes = np.empty(32, np.uint64)
        values = codes.view(np.int8)
        ls = np.empty(8, np.int32)
        iq3_s_block(blk, codes, ls)
        d = read_fp16(blk, 0)
        for s in range(8):
            db = d * F32(1 + 2 * ls[s])
            for k in range(32 * s, 32 * s + 32):
                y[b, k] = db * F32(values[k])


# ---------------------------------------------------------------------------------------------
# quantizing: one driver for both types (iq_search has the search). They differ in the signs
# (IQ3_XXS stores 7 of 8 and implies an even count), the all-zero test, the number of trial
# scales, which groups are rounded again after them, and the layout.


@njit(**KERNEL)
def _quantize_iq3(x, qw, out, qgrid, kmap, neighbours, xxs):
    """Rows x (n, 256 k) -> IQ3_XXS blocks (xxs) or IQ3_S blocks out (n, k block bytes)."""
    nbytes = 98 if xxs else 110
    n_blocks = x.shape[1] // QK_K
    for r in prange(x.shape[0]):
        weight = np.empty(32, np.float32)
        waux = np.empty(32, np.float32)
        xval = np.empty(32, np.float32)
        L, Laux, on_grid, on_grid_aux = search_scratch(32, 4)
        grid_index = np.zeros(8, np.int32)
        scales = np.zeros(8, np.float32)
        block_signs = np.zeros(4, np.uint8)
        sas = np.zeros(8, np.uint32)   # IQ3_XXS: each sub-block's scales_and_signs word
        for ibl in range(n_blocks):
            xbl, blk, sigma2 = super_block(x, out, r, ibl, nbytes, True)
            sas[:] = 0
            max_scale = ZERO
            qs_at = 2     # IQ3_S: ggml's qs / signs pointers, not advanced past an all-zero sub-block
            signs_at = 74
            for s in range(8):
                vmax = weigh_and_fold(xbl[32 * s:32 * s + 32], qw, QK_K * ibl + 32 * s, sigma2, ZERO, xxs, weight,
                                      waux, xval, block_signs)
                L[:] = 0
                if (vmax < GROUP_MAX_EPS_IQ3_XXS) if xxs else (vmax == ZERO):
                    scales[s] = ZERO
                    continue
                scale = search_scale(xval, weight, waux, 32, 4, kmap, neighbours, qgrid, vmax, F15, F_FIFTH,
                                     15 if xxs else 9, vmax / F15, REROUND_OFF_GRID if xxs else REROUND_ALL_IF_OFF,
                                     L, Laux, on_grid, on_grid_aux)
                if scale < ZERO:
                    scale = -scale
                    for k in range(4):
                        block_signs[k] = (~np.int32(block_signs[k])) & (127 if xxs else 0xFF)
                for k in range(8):
                    grid_index[k] = kmap[point_index(L, 4 * k, 4)]   # on the grid (ggml aborts otherwise)
                if xxs:
                    for k in range(8):
                        blk[2 + 8 * s + k] = grid_index[k]
                    sas[s] = (np.uint32(block_signs[0]) | (np.uint32(block_signs[1]) << np.uint32(7))
                              | (np.uint32(block_signs[2]) << np.uint32(14))
                              | (np.uint32(block_signs[3]) << np.uint32(21)))
                else:
                    for k in range(8):
                        blk[qs_at + k] = grid_index[k] & 255
                        blk[66 + s] |= (grid_index[k] >> 8) << k
                    qs_at += 8
                    for k in range(4):
                        blk[signs_at + k] = block_signs[k]
                    signs_at += 4
                scales[s] = scale
                max_scale = max_scale if max_scale > scale else scale
            if max_scale == ZERO:
                if xxs:   # ggml clears an all-zero IQ3_XXS block; IQ3_S keeps the indices it wrote
                    blk[:] = 0
                continue
            d, inv = block_scale(max_scale, 15)
            put_f16(blk, 0, d * (FUDGE_XXS if xxs else FUDGE_S))
            for s in range(8):
                l = scale_code(inv, scales[s], 15)
                if xxs:
                    v = sas[s] | (np.uint32(l) << np.uint32(28))
                    for i in range(4):
                        blk[66 + 4 * s + i] = (v >> np.uint32(8 * i)) & np.uint32(0xFF)
                else:
                    blk[106 + s // 2] |= l << (4 * (s % 2))


# ---------------------------------------------------------------------------------------------
# registration

KINDS = {
    GGMLType.IQ3_XXS: LatticeKind(_quantize_iq3, _dequantize_iq3_xxs, "iq3xxs_grid", NWANT_XXS, KMAP_SIZE, True,
                                  (True,)),
    GGMLType.IQ3_S: LatticeKind(_quantize_iq3, _dequantize_iq3_s, "iq3s_grid", NWANT_S, KMAP_SIZE, True, (False,)),
}

for _type, _kind in KINDS.items():
    register_lattice(_type, _kind)
