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

from ..gguf.constants import TYPE_INFO, GGMLType
from .half import read_fp16
from .iq_grids import KSIGN_MASKS, SIGN_BYTE_MASKS, grid, negate_bytes
from .iq_search import search_tables
from .kquant_search import F32, ZERO, nearest_int
from .kquants import importance_weight, put_f16, sum_squares
from .legacy import read_u32
from .registry import Codec, Decoder, register

QK_K = 256
KERNEL = dict(parallel=True, cache=True, nogil=True, error_model="numpy")
HELPER = dict(cache=True, nogil=True, error_model="numpy")

IQ3XXS_POINTS = grid("iq3xxs_grid")       # (256,) uint32: an entry's 4 magnitudes as one word
IQ3S_POINTS = grid("iq3s_grid")           # (512,) uint32
KMAP_SIZE = 1 << 12                       # 4 levels of 3 bits
NWANT_XXS, NWANT_S = 2, 3                 # distinct neighbour distances ggml lists per type
GROUP_MAX_EPS_IQ3_XXS = F32(1e-8)
FLT_MAX = F32(3.4028234663852886e38)
F_HALF = F32(0.5)
F_ONE = F32(1.0)
F_TWO = F32(2.0)
F_FIFTH = F32(0.2)
F15 = F32(15.0)
F31 = F32(31.0)
F256 = F32(256.0)
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
# quantizing: the search over one 32-weight sub-block, shared by both types


@njit(**HELPER)
def _best_neighbour(neighbours, start, qgrid, xval, waux, first, scale, L):
    """ggml's iq3_find_best_neighbour: the listed neighbour nearest (weighted) to the group of
    xval at `first`, scaled; writes its levels to L[first:first+4] and returns its index."""
    n = np.int32(neighbours[start])
    best_d2 = FLT_MAX
    best = -1
    for jj in range(1, n + 1):
        j = np.int32(neighbours[start + jj])
        d2 = ZERO
        for i in range(4):
            diff = scale * F32(qgrid[j, i]) - xval[first + i]
            d2 += waux[first + i] * diff * diff
        if d2 < best_d2:
            best_d2 = d2
            best = j
    for i in range(4):
        L[first + i] = (qgrid[best, i] - 1) // 2
    return best


@njit(**HELPER)
def _round_group(xval, first, inv_scale):
    """The map index of the group at `first` rounded to levels 0..7 at 1/inv_scale."""
    u = 0
    for i in range(4):
        l = nearest_int(F_HALF * (inv_scale * xval[first + i] - F_ONE))
        u |= max(0, min(7, l)) << (3 * i)
    return u


@njit(**HELPER)
def _search_sub_block(xval, weight, waux, qgrid, kmap, neighbours, n_steps, requantize_all,
                      L, Laux, on_grid, on_grid_aux, grid_index):
    """ggml's scale search for one sub-block of 32 magnitudes `xval` (max > 0): trial scales
    (15 + 0.2 * is) / max for |is| <= n_steps. Returns the scale; L holds the chosen levels and
    grid_index the groups' grid indices. `requantize_all` (IQ3_S): ggml requantizes every group
    after the search, not only the ones that fell off the grid (IQ3_XXS)."""
    vmax = xval[0]
    for i in range(1, 32):
        vmax = vmax if vmax > xval[i] else xval[i]
    best = ZERO
    scale = vmax / F15
    for k in range(8):
        on_grid[k] = not requantize_all
    for step in range(-n_steps, n_steps + 1):
        inv = (F15 + F32(step) * F_FIFTH) / vmax
        this_scale = F_ONE / inv
        for k in range(8):
            for i in range(4):
                l = nearest_int(F_HALF * (inv * xval[4 * k + i] - F_ONE))
                Laux[4 * k + i] = max(0, min(7, l))
            u = 0
            for i in range(4):
                u |= np.int32(Laux[4 * k + i]) << (3 * i)
            on_grid_aux[k] = kmap[u] >= 0
            if kmap[u] < 0:
                _best_neighbour(neighbours, -kmap[u] - 1, qgrid, xval, waux, 4 * k, this_scale, Laux)
        sumqx = ZERO
        sumq2 = ZERO
        for i in range(32):
            w = weight[i]
            q = F32(2 * np.int32(Laux[i]) + 1)
            sumqx += w * xval[i] * q
            sumq2 += w * q * q
        if sumq2 > ZERO and sumqx * sumqx > best * sumq2:
            scale = sumqx / sumq2
            best = scale * sumqx
            L[:] = Laux
            on_grid[:] = on_grid_aux
    n_off = 0
    for k in range(8):
        if not on_grid[k]:
            n_off += 1
    if n_off > 0 and scale > ZERO:
        inv = F_ONE / scale
        for k in range(8):
            if on_grid[k] and not requantize_all:
                continue
            u = _round_group(xval, 4 * k, inv)
            j = kmap[u]
            if j < 0:
                j = _best_neighbour(neighbours, -j - 1, qgrid, xval, waux, 4 * k, scale, L)
            for i in range(4):
                L[4 * k + i] = (qgrid[j, i] - 1) // 2
        sumqx = ZERO
        sumq2 = ZERO
        for i in range(32):
            w = weight[i]
            q = F32(2 * np.int32(L[i]) + 1)
            sumqx += w * xval[i] * q
            sumq2 += w * q * q
        if sumq2 > ZERO:
            scale = sumqx / sumq2
    for k in range(8):
        u = 0
        for i in range(4):
            u |= np.int32(L[4 * k + i]) << (3 * i)
        grid_index[k] = kmap[u]   # always on the grid here (ggml aborts otherwise)
    return scale


@njit(**HELPER)
def _sub_block_weights(xb, qw, ibl, s, sigma2, weight, waux):
    """ggml's per-weight importance: qw[col] * sqrt(sigma2 + x*x), or x*x without weights."""
    for i in range(32):
        if qw.shape[0]:
            weight[i] = importance_weight(qw[QK_K * ibl + 32 * s + i], sigma2, xb[i])
        else:
            weight[i] = xb[i] * xb[i]
    for i in range(32):
        waux[i] = np.sqrt(weight[i])


@njit(**KERNEL)
def _quantize_iq3_xxs(x, qw, out, qgrid, kmap, neighbours):
    n_blocks = x.shape[1] // QK_K
    for r in prange(x.shape[0]):
        weight = np.empty(32, np.float32)
        waux = np.empty(32, np.float32)
        xval = np.empty(32, np.float32)
        L = np.zeros(32, np.int8)
        Laux = np.zeros(32, np.int8)
        on_grid = np.zeros(8, np.bool_)
        on_grid_aux = np.zeros(8, np.bool_)
        grid_index = np.zeros(8, np.int32)
        scales = np.zeros(8, np.float32)
        block_signs = np.zeros(4, np.uint8)
        sas = np.zeros(8, np.uint32)   # scales_and_signs
        for ibl in range(n_blocks):
            xbl = x[r, QK_K * ibl:QK_K * (ibl + 1)]
            blk = out[r, 98 * ibl:98 * (ibl + 1)]
            blk[:] = 0
            sas[:] = 0
            max_scale = ZERO
            sigma2 = F_TWO * sum_squares(xbl) / F256
            for s in range(8):
                xb = xbl[32 * s:32 * s + 32]
                _sub_block_weights(xb, qw, ibl, s, sigma2, weight, waux)
                for k in range(4):
                    n_flip = 0
                    signs = 0
                    for i in range(8):
                        v = xb[8 * k + i]
                        if v >= ZERO:
                            xval[8 * k + i] = v
                        else:
                            xval[8 * k + i] = -v
                            n_flip += 1
                            signs |= 1 << i
                    if n_flip % 2:
                        # an odd count of minus signs cannot be stored: flip the cheapest weight
                        imin = 0
                        vmin = weight[8 * k] * xb[8 * k] * xb[8 * k]
                        for i in range(1, 8):
                            a = weight[8 * k + i] * xb[8 * k + i] * xb[8 * k + i]
                            if a < vmin:
                                vmin = a
                                imin = i
                        xval[8 * k + imin] = -xval[8 * k + imin]
                        signs ^= 1 << imin
                    block_signs[k] = signs & 127
                vmax = xval[0]
                for i in range(1, 32):
                    vmax = vmax if vmax > xval[i] else xval[i]
                L[:] = 0
                if vmax < GROUP_MAX_EPS_IQ3_XXS:
                    scales[s] = ZERO
                    continue
                scale = _search_sub_block(xval, weight, waux, qgrid, kmap, neighbours, 15, False,
                                          L, Laux, on_grid, on_grid_aux, grid_index)
                if scale < ZERO:
                    scale = -scale
                    for k in range(4):
                        block_signs[k] = (~np.int32(block_signs[k])) & 127
                for k in range(8):
                    blk[2 + 8 * s + k] = grid_index[k]
                sas[s] = (np.uint32(block_signs[0]) | (np.uint32(block_signs[1]) << np.uint32(7))
                          | (np.uint32(block_signs[2]) << np.uint32(14))
                          | (np.uint32(block_signs[3]) << np.uint32(21)))
                scales[s] = scale
                max_scale = max_scale if max_scale > scale else scale
            if max_scale == ZERO:
                blk[:] = 0
                continue
            d = max_scale / F31
            put_f16(blk, 0, d * FUDGE_XXS)
            inv = F_ONE / d
            for s in range(8):
                l = nearest_int(F_HALF * (inv * scales[s] - F_ONE))
                l = max(0, min(15, l))
                v = sas[s] | (np.uint32(l) << np.uint32(28))
                for i in range(4):
                    blk[66 + 4 * s + i] = (v >> np.uint32(8 * i)) & np.uint32(0xFF)


@njit(**KERNEL)
def _quantize_iq3_s(x, qw, out, qgrid, kmap, neighbours):
    n_blocks = x.shape[1] // QK_K
    for r in prange(x.shape[0]):
        weight = np.empty(32, np.float32)
        waux = np.empty(32, np.float32)
        xval = np.empty(32, np.float32)
        L = np.zeros(32, np.int8)
        Laux = np.zeros(32, np.int8)
        on_grid = np.zeros(8, np.bool_)
        on_grid_aux = np.zeros(8, np.bool_)
        grid_index = np.zeros(8, np.int32)
        scales = np.zeros(8, np.float32)
        block_signs = np.zeros(4, np.uint8)
        for ibl in range(n_blocks):
            xbl = x[r, QK_K * ibl:QK_K * (ibl + 1)]
            blk = out[r, 110 * ibl:110 * (ibl + 1)]
            blk[:] = 0
            max_scale = ZERO
            sigma2 = F_TWO * sum_squares(xbl) / F256
            qs_at = 2     # ggml's qs / signs pointers: not advanced past an all-zero sub-block
            signs_at = 74
            for s in range(8):
                xb = xbl[32 * s:32 * s + 32]
                _sub_block_weights(xb, qw, ibl, s, sigma2, weight, waux)
                for k in range(4):
                    signs = 0
                    for i in range(8):
                        v = xb[8 * k + i]
                        if v >= ZERO:
                            xval[8 * k + i] = v
                        else:
                            xval[8 * k + i] = -v
                            signs |= 1 << i
                    block_signs[k] = signs
                vmax = xval[0]
                for i in range(1, 32):
                    vmax = vmax if vmax > xval[i] else xval[i]
                L[:] = 0
                if vmax == ZERO:
                    scales[s] = ZERO
                    continue
                scale = _search_sub_block(xval, weight, waux, qgrid, kmap, neighbours, 9, True,
                                          L, Laux, on_grid, on_grid_aux, grid_index)
                if scale < ZERO:
                    scale = -scale
                    for k in range(4):
                        block_signs[k] = (~np.int32(block_signs[k])) & 0xFF
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
                continue
            d = max_scale / F31
            put_f16(blk, 0, d * FUDGE_S)
            inv = F_ONE / d
            for s in range(0, 8, 2):
                l1 = max(0, min(15, nearest_int(F_HALF * (inv * scales[s] - F_ONE))))
                l2 = max(0, min(15, nearest_int(F_HALF * (inv * scales[s + 1] - F_ONE))))
                blk[106 + s // 2] = l1 | (l2 << 4)


# ---------------------------------------------------------------------------------------------
# registration

# type -> (quantize kernel, dequantize kernel, codebook, neighbour distances kept)
KERNELS = {
    GGMLType.IQ3_XXS: (_quantize_iq3_xxs, _dequantize_iq3_xxs, "iq3xxs_grid", NWANT_XXS),
    GGMLType.IQ3_S: (_quantize_iq3_s, _dequantize_iq3_s, "iq3s_grid", NWANT_S),
}


def _codec(ggml_type: GGMLType) -> Codec:
    quantize_kernel, dequantize_kernel, grid_name, nwant = KERNELS[ggml_type]
    block_bytes = TYPE_INFO[ggml_type].block_bytes
    no_weights = np.empty(0, np.float32)

    def quantize(rows: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        """ggml's quantize_iq3_*: importance weights (one per column) or None (x*x)."""
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        qw = no_weights if weights is None else np.ascontiguousarray(weights, dtype=np.float32)
        out = np.zeros((rows.shape[0], rows.shape[1] // QK_K * block_bytes), np.uint8)
        quantize_kernel(rows, qw, out, *search_tables(grid_name, nwant, KMAP_SIZE))
        return out

    quantize.__name__ = f"quantize_{ggml_type.name.lower()}"
    decoder = Decoder(dequantize_kernel, ggml_type)
    return register(Codec(ggml_type, decoder.dequantize, quantize, uses_weights=True, decoder=decoder))


for _type in KERNELS:
    _codec(_type)
