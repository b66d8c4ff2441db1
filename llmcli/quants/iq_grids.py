"""The i-quants' lattice codebooks (ggml-common.h's iq*_grid tables), and what is derived from them.

A block of IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ1_S or IQ1_M stores, per group of 8 (IQ2,
IQ1) or 4 (IQ3) weights, an index into one of these fixed grids. A grid entry packs its group's
values as bytes of one little-endian integer:

    iq2xxs_grid[k] (uint64)   byte i = magnitude of weight i, one of  8, 25, 43
    iq3xxs_grid[k] (uint32)   byte i = one of 4, 12, 20, 28, 36, 44, 52, 62
    iq3s_grid[k]   (uint32)   byte i = one of 1, 3, 5, ..., 15
    iq1s_grid[k]   (uint64)   byte i = int8 -1, 0 or 1

The tables are format data, read from ggml's source by scripts/make_iquant_grids.py into
iq_grids.npz. ggml's quantizers search a second form of each grid, every byte replaced by its
level's rank l and stored as 2l+1 (`quantizer_grid`); that form is derived here, not stored (the
script checks it equals ggml's kgrid_* tables).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
from numba import njit

_FILE = Path(__file__).with_name("iq_grids.npz")

GRID_NAMES = ("iq2xxs_grid", "iq2xs_grid", "iq2s_grid", "iq3xxs_grid", "iq3s_grid", "iq1s_grid")


@cache
def _arrays() -> dict[str, np.ndarray]:
    with np.load(_FILE) as npz:
        return {name: npz[name] for name in GRID_NAMES}


def grid(name: str) -> np.ndarray:
    """A dequantization grid as ggml stores it (uint64 or uint32 entries), read-only."""
    a = _arrays()[name]
    a.flags.writeable = False
    return a


def grid_bytes(name: str) -> np.ndarray:
    """The grid as (entries, group size) signed bytes: row k = the values entry k stands for."""
    a = grid(name)
    signed = name == "iq1s_grid"
    return a.view(np.int8 if signed else np.uint8).reshape(a.size, -1).astype(np.int8 if signed else np.uint8)


@cache
def quantizer_grid(name: str) -> np.ndarray:
    """ggml's search grid for `name` (its iq2xs_init_impl / iq3xs_init_impl `the_grid`): each value
    replaced by 2l + 1, l its level's rank; (entries, group size) int8."""
    values = grid_bytes(name)
    levels = np.unique(values)
    out = (2 * np.searchsorted(levels, values) + 1).astype(np.int8)
    out.flags.writeable = False
    return out


def _sign_table() -> np.ndarray:
    # ksigns_iq2xs: 7 stored sign bits, the 8th their parity (an even count of minus signs)
    i = np.arange(128)
    parity = np.array([bin(v).count("1") & 1 for v in range(128)])
    return (i | (parity << 7)).astype(np.uint8)


KSIGNS_IQ2XS = _sign_table()
KSIGNS_IQ2XS.flags.writeable = False


def _sign_byte_masks() -> np.ndarray:
    # entry b (uint64, little-endian): byte j = 0xFF where bit j of b is set
    bits = (np.arange(256)[:, None] >> np.arange(8)) & 1
    return np.ascontiguousarray((bits * 0xFF).astype(np.uint8)).view("<u8").reshape(256)


# A sign byte (bit j: weight j of a group of 8 is negative) as a mask over the 8 weights' bytes.
SIGN_BYTE_MASKS = _sign_byte_masks()
SIGN_BYTE_MASKS.flags.writeable = False
# The same for the 7 stored sign bits of IQ2_XXS / IQ2_XS / IQ3_XXS (their KSIGNS_IQ2XS byte): one
# lookup instead of two (ggml's keven_signs_q2xs).
KSIGN_MASKS = SIGN_BYTE_MASKS[KSIGNS_IQ2XS]
KSIGN_MASKS.flags.writeable = False
_LOW_BITS = np.uint64(0x0101010101010101)


@njit(inline="always")
def negate_bytes(word, mask):
    """The 8 bytes of `word` (uint64), each negated (two's complement) where `mask` has 0xFF: the
    signs of 8 grid magnitudes at once. Needs every byte under the mask >= 1 (true of every grid
    with stored signs: IQ2 and IQ3 magnitudes are >= 1), so no byte borrows from its neighbour."""
    return (word ^ mask) + (mask & _LOW_BITS)
