"""IEEE half-precision conversions usable inside numba kernels, and the one reader of a block's
stored fp16 scale (`read_fp16`) that the codecs and the engine's kernels share.

Numba has no float16 type on the CPU, and ggml stores every block scale as fp16. These two
intrinsics emit LLVM's `fptrunc float -> half` (round to nearest even, what ggml's
GGML_FP32_TO_FP16 does with F16C) and `fpext half -> float`; on x86 they compile to
`vcvtps2ph` / `vcvtph2ps`.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic


@intrinsic
def _f32_to_f16_bits(typingctx, x):
    if not isinstance(x, types.Float):
        return None

    def codegen(context, builder, signature, args):
        val = args[0]
        if x.bitwidth == 64:
            val = builder.fptrunc(val, ir.FloatType())
        half = builder.fptrunc(val, ir.HalfType())
        return builder.bitcast(half, ir.IntType(16))

    return types.uint16(x), codegen


@intrinsic
def _f16_bits_to_f32(typingctx, h):
    if not isinstance(h, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        val = args[0]
        if h.bitwidth != 16:
            val = builder.trunc(val, ir.IntType(16))
        half = builder.bitcast(val, ir.HalfType())
        return builder.fpext(half, ir.FloatType())

    return types.float32(h), codegen


@intrinsic
def f32_bits(typingctx, x):
    """The uint32 bit pattern of a float32."""
    if not isinstance(x, types.Float):
        return None

    def codegen(context, builder, signature, args):
        val = args[0]
        if x.bitwidth == 64:
            val = builder.fptrunc(val, ir.FloatType())
        return builder.bitcast(val, ir.IntType(32))

    return types.uint32(x), codegen


@intrinsic
def f32_from_bits(typingctx, b):
    """The float32 whose bit pattern is the given uint32."""
    if not isinstance(b, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        val = args[0]
        if b.bitwidth > 32:
            val = builder.trunc(val, ir.IntType(32))
        return builder.bitcast(val, ir.FloatType())

    return types.float32(b), codegen


@njit(inline="always")
def fp32_to_fp16(x):
    """float -> fp16 bit pattern (uint16), round to nearest even."""
    return _f32_to_f16_bits(x)


@njit(inline="always")
def fp16_to_fp32(h):
    """fp16 bit pattern -> float32 (exact)."""
    return _f16_bits_to_f32(h)


@njit(inline="always")
def read_fp16(block, pos):
    """The fp16 stored little-endian at block[pos], block[pos + 1] (a uint8 array), as float32."""
    return _f16_bits_to_f32(np.int32(block[pos]) | (np.int32(block[pos + 1]) << 8))


@njit(inline="always")
def bf16_to_fp32(h):
    """bf16 bit pattern -> float32 (exact: the top half of the float's bits)."""
    return f32_from_bits(np.uint32(h) << np.uint32(16))


@njit(inline="always")
def fp32_round_fp16(x):
    """x rounded through fp16 and back, as ggml does when it re-reads a stored scale."""
    return _f16_bits_to_f32(_f32_to_f16_bits(x))


def fp16_bits_to_f32_array(bits: np.ndarray) -> np.ndarray:
    """Vectorised fp16 bits -> float32 for numpy code."""
    return np.ascontiguousarray(bits, dtype=np.uint16).view(np.float16).astype(np.float32)
