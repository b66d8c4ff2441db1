"""Non-linear 4-bit formats IQ4_NL and IQ4_XS: dequantize only (read-only codecs).

Both map a 4-bit index through ggml's fixed 16-entry table `kvalues_iq4nl` (a non-uniform grid,
denser near zero) and scale it; equal to ggml's `dequantize_row_iq4_nl` / `dequantize_row_iq4_xs`.
Quantizing to them (ggml's search over scales and grid points) is not offered: these codecs exist
so that GGUFs holding IQ4 tensors can be read.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..gguf.constants import GGMLType
from .half import read_fp16
from .registry import Codec, Decoder, register

# ggml's IQ4 grid: the value each 4-bit index stands for, before scaling.
IQ4_GRID = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113],
                    dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# IQ4_NL, 18 bytes per 32 weights; weight = d * GRID[i]
#
#   byte  0      2                                  18
#         +------+----------------------------------+
#         |  d   | qs[16]: lo nibble = i[j]          |
#         | fp16 |         hi nibble = i[j + 16]     |
#         +------+----------------------------------+

@njit(parallel=True, cache=True, nogil=True)
def _dequantize_iq4_nl(raw, y):
    for b in prange(raw.shape[0]):
        d = read_fp16(raw[b], 0)
        for j in range(16):
            q = raw[b, 2 + j]
            y[b, j] = d * IQ4_GRID[q & 0x0F]
            y[b, j + 16] = d * IQ4_GRID[q >> 4]


# ---------------------------------------------------------------------------------------------
# IQ4_XS, 136 bytes per 256 weights = 8 sub-blocks of 32; weight = d * (ls - 32) * GRID[i]
#
#   byte  0      2          4             8                                        136
#         +------+----------+-------------+------------------------------------------+
#         |  d   | scales_h | scales_l[4] | qs[128]: sub-block s uses qs[16s..16s+15] |
#         | fp16 | u16 LE   |             |   lo nibble = i[32s + j]                  |
#         |      |          |             |   hi nibble = i[32s + j + 16]             |
#         +------+----------+-------------+------------------------------------------+
# 6-bit sub-block scale ls(s) = low 4 bits: nibble (s % 2) of scales_l[s // 2]
#                               high 2 bits: bits 2s..2s+1 of scales_h

@njit(inline="always")
def iq4_xs_scale(block, s):
    """ls(s) - 32: the signed 6-bit scale of sub-block s of one IQ4_XS block (a uint8 array)."""
    scales_h = np.int32(block[2]) | (np.int32(block[3]) << 8)
    low = (np.int32(block[4 + s // 2]) >> (4 * (s % 2))) & 0x0F
    return (low | (((scales_h >> (2 * s)) & 3) << 4)) - 32


@njit(parallel=True, cache=True, nogil=True)
def _dequantize_iq4_xs(raw, y):
    for b in prange(raw.shape[0]):
        d = read_fp16(raw[b], 0)
        for s in range(8):
            dl = d * np.float32(iq4_xs_scale(raw[b], s))
            for j in range(16):
                q = raw[b, 8 + 16 * s + j]
                y[b, 32 * s + j] = dl * IQ4_GRID[q & 0x0F]
                y[b, 32 * s + j + 16] = dl * IQ4_GRID[q >> 4]


for _type, _kernel in ((GGMLType.IQ4_NL, _dequantize_iq4_nl), (GGMLType.IQ4_XS, _dequantize_iq4_xs)):
    _decoder = Decoder(_kernel, _type)
    register(Codec(_type, _decoder.dequantize, decoder=_decoder))
