"""Reading and writing a KV cache of either element type with one kernel.

An f16 cache (`--cache-type-k/-v f16`) is a uint16 array of half-precision bits, since numba has no
float16 on the CPU; the conversions are quants.half's (LLVM's fpext / fptrunc: vcvtph2ps and
vcvtps2ph, round to nearest even, vectorised in loops). `as_float(x)` and `to_storage(x, array)`
let one kernel body serve a float32 and an f16 cache: numba compiles it once per cache dtype, and
for float32 both are the identity.
"""

from __future__ import annotations

from numba import types
from numba.extending import overload

from ..quants.half import fp16_to_fp32, fp32_to_fp16


def as_float(x):
    """An element of a KV cache as float32 (see the module doc); usable inside njit only."""
    raise NotImplementedError("as_float is only available in numba-compiled code")


def to_storage(x, array):
    """float32 `x` as an element of `array` (uint16: half bits); usable inside njit only."""
    raise NotImplementedError("to_storage is only available in numba-compiled code")


@overload(as_float, inline="always")
def _as_float(x):
    if x == types.uint16:
        return lambda x: fp16_to_fp32(x)
    if isinstance(x, types.Float):
        return lambda x: x
    return None


@overload(to_storage, inline="always")
def _to_storage(x, array):
    if array.dtype == types.uint16:
        return lambda x, array: fp32_to_fp16(x)
    if isinstance(array.dtype, types.Float):
        return lambda x, array: x
    return None
