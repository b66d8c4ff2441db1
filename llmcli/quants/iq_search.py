"""The lookup tables behind ggml's lattice quantizers: grid map and neighbour lists.

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

from .iq_grids import quantizer_grid

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
