"""Type -> block-format functions. Each family module registers its codecs on import.

A codec works on whole rows:
    quantize(rows: float32 (n_rows, row_length)) -> uint8 (n_rows, row_bytes)
    quantize(rows, weights: float32 (row_length,))   (codecs with uses_weights only)
    dequantize(raw: uint8 (n_rows, row_bytes))    -> float32 (n_rows, row_length)
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


@dataclass(frozen=True)
class Codec:
    type: GGMLType
    dequantize: Callable[[np.ndarray], np.ndarray]
    quantize: Callable[..., np.ndarray] | None = None  # None: read-only format
    uses_weights: bool = False   # quantize takes importance weights (ggml's quant_weights)


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
