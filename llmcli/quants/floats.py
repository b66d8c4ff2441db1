"""Float formats: F32, F16, BF16 — element-wise, one value per "block".

What ggml does when llama-quantize (`ggml_quantize_chunk`) writes these types:
- F16: `ggml_fp32_to_fp16_row`, a bit-manipulating conversion that rounds to nearest even for every
  finite value (subnormals included, overflow -> inf) and writes every NaN as the canonical quiet NaN
  0x7E00 with the input's sign. LLVM's `fptrunc` rounds the same way; only NaN needs a fix-up.
- BF16: `ggml_fp32_to_bf16_row_ref`: round to nearest even by adding 0x7FFF plus the lowest kept
  bit, no flush of subnormals; a NaN keeps its top 16 bits with the quiet bit (0x40) forced on.
- Back to float32: F16 widens exactly (a signalling NaN comes back quieted, as ggml's conversion does);
  BF16 is the top half of a float32, so widening is a shift.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..gguf.constants import GGMLType
from .half import bf16_to_fp32, f32_bits, fp16_to_fp32, fp32_to_fp16
from .registry import Codec, Decoder, register

F16_CANONICAL_NAN = 0x7E00
BF16_QUIET_BIT = 0x0040


# Layout of all three formats: a row is a plain little-endian array, one element per value.
#   F32 : | f32 | f32 | ...      F16 / BF16 : | u16 | u16 | ...
# Kernels run over the flattened array in prange chunks so one long row still uses every thread.
_CHUNK = 1 << 16


@njit(inline="always")
def ggml_fp32_to_fp16(v):
    """float32 -> fp16 bits exactly as ggml's GGML_FP32_TO_FP16 (also used for block scales)."""
    if v != v:  # NaN: ggml writes the canonical quiet NaN, keeping the sign
        return np.uint16(((f32_bits(v) >> np.uint32(16)) & np.uint32(0x8000)) | np.uint32(F16_CANONICAL_NAN))
    return fp32_to_fp16(v)


@njit(inline="always")
def ggml_fp32_to_bf16(v):
    """float32 -> bf16 bits exactly as ggml's ggml_fp32_to_bf16_row_ref."""
    u = f32_bits(v)
    if (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000):  # NaN: keep it, make it quiet
        return np.uint16(u >> np.uint32(16)) | np.uint16(BF16_QUIET_BIT)
    # round to nearest even; cannot wrap: the largest finite input stays below 2**32
    rounding = np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))
    return np.uint16((u + rounding) >> np.uint32(16))


# Every kernel converts element by element over the flattened arrays, a prange chunk at a time,
# looping over a slice per chunk: a loop from 0 vectorises, one between computed bounds stayed
# scalar here (~9x slower).
@njit(inline="always")
def _convert_chunks(src, dst, convert):
    """dst[i] = convert(src[i]) over two flat arrays of one size."""
    n = src.size
    for c in prange((n + _CHUNK - 1) // _CHUNK):
        s, d = src[c * _CHUNK:(c + 1) * _CHUNK], dst[c * _CHUNK:(c + 1) * _CHUNK]
        for i in range(s.size):
            d[i] = convert(s[i])


@njit(parallel=True, cache=True)
def _f32_to_f16_kernel(x, out):
    _convert_chunks(x, out, ggml_fp32_to_fp16)


@njit(parallel=True, cache=True)
def _f32_to_bf16_kernel(x, out):
    _convert_chunks(x, out, ggml_fp32_to_bf16)


# The widening kernels also decode the engine's prompt-GEMM tiles (Decoder), so they release the GIL.
@njit(parallel=True, cache=True, nogil=True)
def _f16_to_f32_kernel(h, out):
    _convert_chunks(h, out, fp16_to_fp32)


@njit(parallel=True, cache=True, nogil=True)
def _bf16_to_f32_kernel(h, out):
    _convert_chunks(h, out, bf16_to_fp32)


def _narrow(kernel, rows: np.ndarray) -> np.ndarray:
    """float rows (n, k) -> uint8 (n, 2k) through a float32 -> 16-bit kernel."""
    src = np.ascontiguousarray(rows, dtype=np.float32)
    out = np.empty(src.shape, dtype=np.uint16)
    kernel(src.reshape(-1), out.reshape(-1))
    return out.view(np.uint8)


def quantize_f32(rows: np.ndarray) -> np.ndarray:
    """Zero-copy when the input is already contiguous float32 (the result shares its memory)."""
    return np.ascontiguousarray(rows, dtype=np.float32).view(np.uint8)


def dequantize_f32(raw: np.ndarray) -> np.ndarray:
    """Zero-copy: a float32 view of the bytes (read-only if they are a read-only mmap)."""
    return np.ascontiguousarray(raw).view(np.uint8).view(np.float32)


def quantize_f16(rows: np.ndarray) -> np.ndarray:
    return _narrow(_f32_to_f16_kernel, rows)


def quantize_bf16(rows: np.ndarray) -> np.ndarray:
    return _narrow(_f32_to_bf16_kernel, rows)


register(Codec(GGMLType.F32, dequantize_f32, quantize_f32))
for _type, _quantize, _widen in ((GGMLType.F16, quantize_f16, _f16_to_f32_kernel),
                                 (GGMLType.BF16, quantize_bf16, _bf16_to_f32_kernel)):
    _decoder = Decoder(_widen, _type, element=np.uint16)
    register(Codec(_type, _decoder.dequantize, _quantize, decoder=_decoder))
