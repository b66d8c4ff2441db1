"""The lookup tables behind ggml's lattice quantizers (grid map and neighbour lists), and the
search steps those quantizers share (see the last section).

ggml's i-quant quantizers (IQ1_*, IQ2_*, IQ3_*) round each group of g weights (g = 4 or 8) to
levels l_i and look the point up in `kmap`, indexed by the levels packed b bits apiece
(u = sum l_i << b*i). A point on the codebook maps to its grid index; a point off it to a list of
nearby codebook entries, searched with the group's importance weights. The lists are those of
ggml's iq2xs_init_impl / iq3xs_init_impl: every entry whose squared distance to the point (on
the search grid, values 2l+1) is among the `nwant` smallest distinct distances, in order of
(distance, index) - ggml sorts (distance, index) pairs with a total order, so this is exact.

Stored like ggml's: kmap[u] >= 0 is a grid index; kmap[u] < 0 points at neighbours[-kmap[u] - 1]
= n, followed by the n neighbour indices.

ggml builds them with a qsort of every grid entry per point (2-14 s in C for the 2048-entry IQ1
grid); here a counting pass over the few possible distances selects the same entries in the same
order, in parallel (about 0.6 s of CPU for the IQ1 grid, 0.01 s for an IQ3 grid, once numba's
cache is warm), and `search_tables` keeps them for the life of the process.
"""

from __future__ import annotations

from functools import cache
from typing import NamedTuple

import numpy as np
from numba import njit, prange

from ..errors import UnsupportedError
from ..gguf.constants import TYPE_INFO, GGMLType
from .iq_grids import quantizer_grid
from .kquant_search import F32, FLT_MAX, ONE, ZERO, max_value, nearest_int
from .kquants import importance_weight, sum_squares
from .registry import Codec, Decoder, register

JIT = dict(cache=True, nogil=True)

# ggml's map size for 8 levels of 2 bits each (IQ2_*, IQ1_*: levels 0..2, so u <= 43690)
MAP_SIZE_8X2 = 43692


@njit(**JIT)
def _point(u, bits, pos):
    """The search-grid coordinates 2l+1 of map index u (levels packed `bits` apiece)."""
    mask = (1 << bits) - 1
    for k in range(pos.shape[0]):
        pos[k] = 2 * ((u >> (bits * k)) & mask) + 1


@njit(**JIT)
def _distances(gridT, pos, d2, counts):
    """d2[j] = squared distance of grid entry j (column j of gridT) to pos; counts = histogram."""
    d2[:] = 0
    for k in range(pos.shape[0]):   # over coordinates, then entries: vectorises
        p = pos[k]
        for j in range(gridT.shape[1]):
            diff = gridT[k, j] - p
            d2[j] += diff * diff
    counts[:] = 0
    for j in range(gridT.shape[1]):
        counts[d2[j]] += 1


@njit(**JIT)
def _point_distances(gridT, u, bits, max_d2):
    """(d2, counts): the squared distance of every grid entry to map point u, and their histogram."""
    pos = np.empty(gridT.shape[0], np.int32)
    d2 = np.empty(gridT.shape[1], np.int32)
    counts = np.empty(max_d2 + 1, np.int32)
    _point(u, bits, pos)
    _distances(gridT, pos, d2, counts)
    return d2, counts


@njit(**JIT)
def _cutoff(counts, nwant):
    """The largest distance kept: the nwant-th smallest distinct one (or the largest present)."""
    have = 0
    last = 0
    for d in range(counts.shape[0]):
        if counts[d]:
            last = d
            have += 1
            if have == nwant:
                break
    return last


@njit(parallel=True, **JIT)
def _count_neighbours(gridT, kmap, bits, nwant, max_d2, n_per_point):
    for u in prange(kmap.shape[0]):
        if kmap[u] >= 0:
            n_per_point[u] = 0
            continue
        counts = _point_distances(gridT, u, bits, max_d2)[1]
        cut = _cutoff(counts, nwant)
        n = 0
        for d in range(cut + 1):
            n += counts[d]
        n_per_point[u] = n


@njit(parallel=True, **JIT)
def _fill_neighbours(gridT, kmap, bits, max_d2, offsets, n_per_point, neighbours):
    for u in prange(kmap.shape[0]):
        if offsets[u] < 0:
            continue
        d2, counts = _point_distances(gridT, u, bits, max_d2)
        at = offsets[u]
        neighbours[at] = n_per_point[u]
        at += 1
        n = 0
        # entries in (distance, index) order: one sweep per distance present up to the cut-off
        for d in range(max_d2 + 1):
            if n == n_per_point[u]:
                break
            if counts[d] == 0:
                continue
            for j in range(gridT.shape[1]):
                if d2[j] == d:
                    neighbours[at] = j
                    at += 1
                    n += 1
        kmap[u] = -(offsets[u] + 1)


class SearchTables(NamedTuple):
    qgrid: np.ndarray       # (entries, g) int8: the grid as 2l+1 (iq_grids.quantizer_grid)
    kmap: np.ndarray        # (map_size,) int32
    neighbours: np.ndarray  # uint16 lists, see above


@cache
def search_tables(grid_name: str, nwant: int, map_size: int) -> SearchTables:
    """(search grid (entries, g) int8, kmap int32 (map_size,), neighbours uint16) for one of
    iq_grids' codebooks, as ggml's init builds them for a type (`nwant` distinct distances kept:
    IQ3_XXS 2, IQ3_S 3, IQ1_S/IQ1_M 3, IQ2_XXS/IQ2_XS 2, IQ2_S 1). Built once per process."""
    qgrid = np.ascontiguousarray(quantizer_grid(grid_name))
    group = qgrid.shape[1]
    bits = 3 if group == 4 else 2
    levels = (qgrid.astype(np.int32) - 1) // 2
    kmap = np.full(map_size, -1, np.int32)
    u = (levels << (bits * np.arange(group))).sum(axis=1)
    kmap[u] = np.arange(qgrid.shape[0], dtype=np.int32)
    max_d2 = group * (2 * ((1 << bits) - 1)) ** 2
    gridT = np.ascontiguousarray(qgrid.T, dtype=np.int32)
    counts = np.zeros(map_size, np.int32)
    _count_neighbours(gridT, kmap, bits, nwant, max_d2, counts)
    off_grid = kmap < 0
    sizes = np.where(off_grid, counts + 1, 0)
    offsets = np.where(off_grid, np.cumsum(sizes) - sizes, -1).astype(np.int64)
    neighbours = np.zeros(int(sizes.sum()), np.uint16)
    _fill_neighbours(gridT, kmap, bits, max_d2, offsets, counts, neighbours)
    for a in (qgrid, kmap, neighbours):
        a.flags.writeable = False
    return SearchTables(qgrid, kmap, neighbours)


# ---------------------------------------------------------------------------------------------
# The steps the lattice quantizers share (ggml's quantize_row_iq{1,2,3}_*_impl): importance
# weights, signs, and the search of a sub-block's scale over its groups' grid points.
#
# A group of `group` weights (8 in IQ1/IQ2, 4 in IQ3) has levels l = 0..top (top 2 for 8-wide
# groups, 7 for 4-wide ones), packed `bits` apiece into its map index u; the grid values are the
# 2l + 1 of `qgrid`. Everything is inlined into the type's kernel, where `group` is a constant.
# Every float op is float32 in ggml's order (see kquant_search.py).

HALF = F32(0.5)
F2 = F32(2.0)
F256 = F32(256.0)

# which groups `search_scale` rounds again at the fitted scale (when positive) after its trials
REROUND_OFF_GRID = 0     # those the best trial left off the grid, if any (IQ2_XS, IQ2_S, IQ3_XXS)
REROUND_ALL_IF_OFF = 1   # all of them, if any was off the grid or no trial fitted (IQ3_S)
REROUND_ALL = 2          # all of them, always (IQ2_XXS)


@njit(inline="always")
def _level_range(group):
    """(bits per level in a map index, top level) of a group of 4 or 8 weights."""
    return (3, 7) if group == 4 else (2, 2)


@njit(inline="always")
def super_block(x, out, r, b, nbytes, doubled):
    """Super-block b of row r: its 256 values x[r, 256b:256b+256], its nbytes bytes of out
    (cleared), and ggml's sigma2 of the weights, sum x^2 / 256, doubled (`doubled`) by every type
    but IQ2_XXS and IQ2_XS."""
    xbl = x[r, 256 * b:256 * (b + 1)]
    blk = out[r, nbytes * b:nbytes * (b + 1)]
    blk[:] = 0
    total = sum_squares(xbl)
    return xbl, blk, (F2 * total if doubled else total) / F256


@njit(inline="always")
def importance_weights(xb, qw, first, sigma2, bias, weight):
    """weight[i] of the values xb of a sub-block whose columns start at `first`: ggml's importance
    qw[first + i] * sqrt(sigma2 + x*x), or, with qw empty, bias + x*x (bias 0, IQ2_S: sigma2 / 4)."""
    for i in range(xb.shape[0]):
        if qw.shape[0]:
            weight[i] = importance_weight(qw[first + i], sigma2, xb[i])
        else:
            weight[i] = bias + xb[i] * xb[i]


@njit(inline="always")
def root_weights(weight, n, waux):
    """waux = sqrt(weight) over n values: the weights of the neighbour search."""
    for i in range(n):
        waux[i] = np.sqrt(weight[i])


@njit(inline="always")
def all_signs(x, first, xval, k):
    """|x| of group k of 8 (x[first + 8k ...]) into xval[8k ...]; its 8 sign bits (1: negative)."""
    s = 0
    for i in range(8):
        v = x[first + 8 * k + i]
        if v >= ZERO:
            xval[8 * k + i] = v
        else:
            xval[8 * k + i] = -v
            s |= 1 << i
    return s


@njit(inline="always")
def even_signs(x, first, weight, xval, k):
    """`all_signs`, for formats that store 7 sign bits and imply an even count of negatives: an
    odd count flips the value of least weight*x*x (its sign is then wrong in the block; xval
    carries it negative). Returns the 7 stored bits."""
    s = all_signs(x, first, xval, k)
    nflip = 0
    for i in range(8):
        nflip += (s >> i) & 1
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


@njit(inline="always")
def weigh_and_fold(xb, qw, first, sigma2, bias, even, weight, waux, xval, signs):
    """A sub-block's weights (`importance_weights`; waux their roots), its magnitudes into xval
    and each group of 8's sign bits into signs (`even_signs` if `even`, else `all_signs`).
    Returns the largest magnitude (`max_value`)."""
    n = xb.shape[0]
    importance_weights(xb, qw, first, sigma2, bias, weight)
    root_weights(weight, n, waux)
    for k in range(n // 8):
        signs[k] = even_signs(xb, 0, weight, xval, k) if even else all_signs(xb, 0, xval, k)
    return max_value(xval, n)


@njit(inline="always")
def best_neighbour(neighbours, start, qgrid, xval, waux, first, scale, L, group):
    """ggml's iq2/iq3_find_best_neighbour: of the neighbour list at `start`, the entry nearest to
    xval[first:first+group] / scale by waux-weighted squared error (the first best wins ties);
    writes its levels to L[first:first+group] and returns it."""
    best_d2 = FLT_MAX
    best = -1
    for jj in range(1, np.int32(neighbours[start]) + 1):
        j = np.int32(neighbours[start + jj])
        d2 = ZERO
        for i in range(group):
            diff = scale * F32(qgrid[j, i]) - xval[first + i]
            d2 += waux[first + i] * diff * diff
        if d2 < best_d2:
            best_d2 = d2
            best = j
    for i in range(group):
        L[first + i] = (qgrid[best, i] - 1) // 2
    return best


@njit(inline="always")
def point_index(L, first, group):
    """The map index u of the levels L[first:first+group]."""
    bits = _level_range(group)[0]
    u = 0
    for i in range(group):
        u |= np.int32(L[first + i]) << (bits * i)
    return u


@njit(inline="always")
def snap_group(kmap, neighbours, qgrid, xval, waux, first, inv_scale, scale, L, group):
    """Round xval[first:first+group] / scale to levels into L, and move them onto the grid (the
    best listed neighbour) if they are off it; returns whether they were on it already."""
    bits, top = _level_range(group)
    u = 0
    for i in range(group):
        level = max(0, min(top, nearest_int(HALF * (inv_scale * xval[first + i] - ONE))))
        L[first + i] = level
        u |= level << (bits * i)
    if kmap[u] >= 0:
        return True
    best_neighbour(neighbours, -kmap[u] - 1, qgrid, xval, waux, first, scale, L, group)
    return False


@njit(inline="always")
def fit(xval, weight, L, n):
    """(sum w*x*q, sum w*q*q) over n values with q = 2l + 1, in ggml's order."""
    sumqx = ZERO
    sumq2 = ZERO
    for i in range(n):
        w = weight[i]
        q = F32(2 * np.int32(L[i]) + 1)
        sumqx += w * xval[i] * q
        sumq2 += w * q * q
    return sumqx, sumq2


@njit(inline="always")
def search_scratch(n, group):
    """search_scale's buffers for n values in groups of `group`: (L, Laux, on_grid, on_grid_aux)."""
    return (np.zeros(n, np.int8), np.zeros(n, np.int8), np.zeros(n // group, np.bool_),
            np.zeros(n // group, np.bool_))


@njit(inline="always")
def search_scale(xval, weight, waux, n, group, kmap, neighbours, qgrid, ref, center, delta, n_steps,
                 scale, reround, L, Laux, on_grid, on_grid_aux):
    """ggml's scale search for the n magnitudes xval of a sub-block: trial scales ref / (center +
    delta * step), |step| <= n_steps, each rounding every group onto the grid; the trial with the
    best weighted fit sets the scale (`scale` if none fits) and the levels L, then `reround`
    decides which groups are rounded again at that scale, and the scale is refitted. Returns the
    scale; Laux, on_grid, on_grid_aux (n // group) are scratch."""
    n_groups = n // group
    best = ZERO
    for k in range(n_groups):
        on_grid[k] = reround != REROUND_ALL_IF_OFF
    for step in range(-n_steps, n_steps + 1):
        inv = (center + F32(step) * delta) / ref
        this_scale = ONE / inv
        for k in range(n_groups):
            on_grid_aux[k] = snap_group(kmap, neighbours, qgrid, xval, waux, group * k, inv, this_scale, Laux,
                                        group)
        sumqx, sumq2 = fit(xval, weight, Laux, n)
        if sumq2 > ZERO and sumqx * sumqx > best * sumq2:
            scale = sumqx / sumq2
            best = scale * sumqx
            L[:] = Laux
            on_grid[:] = on_grid_aux
    n_off = 0
    for k in range(n_groups):
        if not on_grid[k]:
            n_off += 1
    if (n_off > 0 or reround == REROUND_ALL) and scale > ZERO:
        inv = ONE / scale
        for k in range(n_groups):
            if reround == REROUND_OFF_GRID and on_grid[k]:
                continue
            snap_group(kmap, neighbours, qgrid, xval, waux, group * k, inv, scale, L, group)
        sumqx, sumq2 = fit(xval, weight, L, n)
        if sumq2 > ZERO:
            scale = sumqx / sumq2
    return scale


@njit(inline="always")
def block_scale(max_scale, top):
    """(d, 1/d) of a super-block whose sub-block scales get codes 0..top: d = max_scale / (2 top + 1)."""
    d = max_scale / F32(2 * top + 1)
    return d, ONE / d


@njit(inline="always")
def scale_code(inv_d, scale, top):
    """The code l (0..top) of a sub-block scale ~ d * (2l + 1)."""
    return max(0, min(top, nearest_int(HALF * (inv_d * scale - ONE))))


# ---------------------------------------------------------------------------------------------
# registration of a lattice type's codec


class LatticeKind(NamedTuple):
    quantize: object        # kernel (rows (n, 256 k) f32, importance (256 k,) or empty, out, *SearchTables)
    dequantize: object      # kernel (blocks (n_blocks, block bytes), values (n_blocks, 256))
    grid: str               # iq_grids name of the codebook
    nwant: int              # neighbour distances kept (ggml's nwant)
    map_size: int           # size of the grid map
    weightless: bool        # whether ggml quantizes without importance weights
    variant: tuple = ()     # the kernel's arguments after the tables (which type of a shared kernel)


def register_lattice(ggml_type: GGMLType, kind: LatticeKind) -> Codec:
    """Register the codec of a lattice type: quantize(rows, weights=None) with importance weights
    (one per column) or, where ggml can, without."""
    block_bytes = TYPE_INFO[ggml_type].block_bytes
    no_weights = np.empty(0, np.float32)

    def quantize(rows: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        if weights is None and not kind.weightless:
            raise UnsupportedError(f"{ggml_type.name} needs importance weights (an importance matrix: --imatrix)")
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        qw = no_weights if weights is None else np.ascontiguousarray(weights, dtype=np.float32)
        out = np.zeros((rows.shape[0], rows.shape[1] // 256 * block_bytes), np.uint8)
        kind.quantize(rows, qw, out, *search_tables(kind.grid, kind.nwant, kind.map_size), *kind.variant)
        return out

    quantize.__name__ = f"quantize_{ggml_type.name.lower()}"
    decoder = Decoder(kind.dequantize, ggml_type)
    return register(Codec(ggml_type, decoder.dequantize, quantize, uses_weights=True, decoder=decoder))
