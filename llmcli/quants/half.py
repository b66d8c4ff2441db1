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


def _as_float32(builder, value, numba_type):
    """A float argument as an LLVM float (a double is rounded to it first)."""
    return builder.fptrunc(value, ir.FloatType()) if numba_type.bitwidth == 64 else value


def _low_bits(builder, value, numba_type, bits):
    """The low `bits` bits of an integer argument at least that wide."""
    return builder.trunc(value, ir.IntType(bits)) if numba_type.bitwidth > bits else value


def _bit_conversion(name, accepts, result, emit, doc=None):
    """An intrinsic of one numba number of class `accepts` returning `result`, whose LLVM IR is
    emit(builder, value, the argument's numba type)."""

    def typer(typingctx, x):
        if not isinstance(x, accepts):
            return None

        def codegen(context, builder, signature, args):
            return emit(builder, args[0], x)

        return result(x), codegen

    typer.__name__ = typer.__qualname__ = name
    typer.__doc__ = doc
    return intrinsic(typer)


_f32_to_f16_bits = _bit_conversion(
    "_f32_to_f16_bits", types.Float, types.uint16,
    lambda b, v, t: b.bitcast(b.fptrunc(_as_float32(b, v, t), ir.HalfType()), ir.IntType(16)))
_f16_bits_to_f32 = _bit_conversion(
    "_f16_bits_to_f32", types.Integer, types.float32,
    lambda b, v, t: b.fpext(b.bitcast(_low_bits(b, v, t, 16), ir.HalfType()), ir.FloatType()))
f32_bits = _bit_conversion(
    "f32_bits", types.Float, types.uint32,
    lambda b, v, t: b.bitcast(_as_float32(b, v, t), ir.IntType(32)),
    "The uint32 bit pattern of a float32.")
f32_from_bits = _bit_conversion(
    "f32_from_bits", types.Integer, types.float32,
    lambda b, v, t: b.bitcast(_low_bits(b, v, t, 32), ir.FloatType()),
    "The float32 whose bit pattern is the given uint32.")


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
