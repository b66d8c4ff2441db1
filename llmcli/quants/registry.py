"""Type -> block-format functions. Each family module registers its codecs on import.

A codec works on whole rows:
    quantize(rows: float32 (n_rows, row_length)) -> uint8 (n_rows, row_bytes)
    quantize(rows, weights: float32 (row_length,))   (codecs with uses_weights only)
    dequantize(raw: uint8 (n_rows, row_bytes))    -> float32 (n_rows, row_length)
    decoder(raw, out)                             the same into `out`, in place (`Decoder`)
Both must equal ggml bit for bit: `quantize_*(..., quant_weights)` - its reference functions
(`quantize_row_*_ref`) without importance weights, its weighted `quantize_row_*_impl` with them -
and `dequantize_row_*`. Types whose ggml quantizer ignores importance weights (Q8_0, F16, ...) are
quantized the same with or without them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import UnsupportedError
from ..gguf.constants import TYPE_INFO, GGMLType


def reshaped(array: np.ndarray, shape) -> np.ndarray:
    """A view of `array` with another shape; an error where numpy would have to copy (a copy
    would swallow the writes of a kernel that fills it)."""
    view = array.view()
    view.shape = shape
    return view


class Decoder:
    """A type's dequantize kernel, run in place: `decoder(raw, out)` writes the values of raw's
    blocks into float32 `out` (both C-contiguous, any shapes holding whole blocks: a tensor's rows,
    or the tile of weight rows the engine's prompt GEMM decodes). The kernel sees
    (n_blocks, block_bytes) uint8 -> (n_blocks, block_size) float32, or for the float types
    (`element` set) 1-D arrays of raw elements -> values. Kernels release the GIL: the engine runs
    them on its own thread."""

    def __init__(self, kernel, ggml_type: GGMLType, element=None):
        info = TYPE_INFO[ggml_type]
        self.kernel, self.type, self.element = kernel, ggml_type, element
        self.block_bytes, self.block_size = info.block_bytes, info.block_size

    def __call__(self, raw: np.ndarray, out: np.ndarray) -> None:
        if self.element is not None:
            self.kernel(reshaped(raw.view(self.element), (-1,)), reshaped(out, (-1,)))
        else:
            self.kernel(reshaped(raw.view(np.uint8), (-1, self.block_bytes)), reshaped(out, (-1, self.block_size)))

    def dequantize(self, raw: np.ndarray) -> np.ndarray:
        """uint8 rows (n_rows, row_bytes) -> float32 (n_rows, row_length)."""
        raw = np.ascontiguousarray(raw).view(np.uint8)
        out = np.empty((raw.shape[0], raw.shape[1] // self.block_bytes * self.block_size), np.float32)
        self(raw, out)
        return out


@dataclass(frozen=True)
class Codec:
    type: GGMLType
    dequantize: Callable[[np.ndarray], np.ndarray]
    quantize: Callable[..., np.ndarray] | None = None  # None: read-only format
    uses_weights: bool = False   # quantize takes importance weights (ggml's quant_weights)
    decoder: Decoder | None = None  # dequantize in place (None: F32, whose bytes are the values)


CODECS: dict[GGMLType, Codec] = {}


def register(codec: Codec) -> Codec:
    CODECS[codec.type] = codec
    return codec


def get_codec(ggml_type: GGMLType) -> Codec:
    try:
        return CODECS[ggml_type]
    except KeyError:
        raise UnsupportedError(f"ggml type {ggml_type.name} is not supported "
                               f"(supported: {', '.join(t.name for t in CODECS)})") from None


def quantizable_types() -> list[GGMLType]:
    return [t for t, c in CODECS.items() if c.quantize is not None]


def quantize(rows: np.ndarray, ggml_type: GGMLType, weights: np.ndarray | None = None) -> np.ndarray:
    """float32 rows -> uint8 blocks (n_rows, row_bytes). `weights`: one importance weight per
    column (from an importance matrix), shared by every row; None quantizes without."""
    codec = get_codec(ggml_type)
    if codec.quantize is None:
        raise UnsupportedError(f"quantizing to {ggml_type.name} is not supported (read only)")
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    if rows.ndim == 1:
        rows = rows.reshape(1, -1)
    block = TYPE_INFO[ggml_type].block_size
    if rows.shape[1] % block:
        raise UnsupportedError(f"{ggml_type.name} needs rows of a multiple of {block} values, "
                               f"got {rows.shape[1]}")
    if weights is None or not codec.uses_weights:
        return codec.quantize(rows)
    weights = np.ascontiguousarray(weights, dtype=np.float32).reshape(-1)
    if weights.shape[0] != rows.shape[1]:
        raise UnsupportedError(f"{weights.shape[0]} importance weights for rows of {rows.shape[1]} values")
    return codec.quantize(rows, weights)


def dequantize(raw: np.ndarray, ggml_type: GGMLType) -> np.ndarray:
    """uint8 blocks (n_rows, row_bytes) -> float32 (n_rows, row_length)."""
    codec = get_codec(ggml_type)
    raw = np.ascontiguousarray(raw).view(np.uint8)
    if raw.ndim == 1:
        raw = raw.reshape(1, -1)
    info = TYPE_INFO[ggml_type]
    if raw.shape[1] % info.block_bytes:
        raise UnsupportedError(f"{ggml_type.name}: {raw.shape[1]} bytes per row is not a whole "
                               f"number of {info.block_bytes}-byte blocks")
    return codec.dequantize(raw)
