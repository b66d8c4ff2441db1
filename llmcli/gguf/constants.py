"""GGUF and ggml constants as data: type table, metadata value types, standard keys.

Sources: ggml's `docs/gguf.md`, `ggml/include/ggml.h` (type ids) and `ggml/src/ggml-common.h`
(block structs). Every type id ggml defines is listed, so a file holding types we cannot compute
still opens and lists.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

GGUF_MAGIC = b"GGUF"
GGUF_SUPPORTED_VERSIONS = (2, 3)
GGUF_DEFAULT_ALIGNMENT = 32
KEY_ALIGNMENT = "general.alignment"

# llama.cpp's current quantization-format version, written by llama-quantize.
QUANTIZATION_VERSION = 2


class GGMLType(enum.IntEnum):
    F32 = 0
    F16 = 1
    Q4_0 = 2
    Q4_1 = 3
    Q5_0 = 6
    Q5_1 = 7
    Q8_0 = 8
    Q8_1 = 9
    Q2_K = 10
    Q3_K = 11
    Q4_K = 12
    Q5_K = 13
    Q6_K = 14
    Q8_K = 15
    IQ2_XXS = 16
    IQ2_XS = 17
    IQ3_XXS = 18
    IQ1_S = 19
    IQ4_NL = 20
    IQ3_S = 21
    IQ2_S = 22
    IQ4_XS = 23
    I8 = 24
    I16 = 25
    I32 = 26
    I64 = 27
    F64 = 28
    IQ1_M = 29
    BF16 = 30
    TQ1_0 = 34
    TQ2_0 = 35
    MXFP4 = 39
    NVFP4 = 40
    Q1_0 = 41
    Q2_0 = 42


@dataclass(frozen=True)
class TypeInfo:
    """How one ggml type lays out a row: `block_size` elements per block of `block_bytes` bytes."""

    type: GGMLType
    block_size: int
    block_bytes: int

    @property
    def name(self) -> str:
        return self.type.name

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.block_bytes / self.block_size

    def row_bytes(self, n_elements: int) -> int:
        return n_elements // self.block_size * self.block_bytes


# (type, elements per block, bytes per block) - sizes as in ggml-common.h's static_asserts.
_TYPE_ROWS = [
    (GGMLType.F32, 1, 4),
    (GGMLType.F16, 1, 2),
    (GGMLType.Q4_0, 32, 2 + 16),
    (GGMLType.Q4_1, 32, 2 + 2 + 16),
    (GGMLType.Q5_0, 32, 2 + 4 + 16),
    (GGMLType.Q5_1, 32, 2 + 2 + 4 + 16),
    (GGMLType.Q8_0, 32, 2 + 32),
    (GGMLType.Q8_1, 32, 2 + 2 + 32),
    (GGMLType.Q2_K, 256, 2 + 2 + 16 + 64),
    (GGMLType.Q3_K, 256, 2 + 64 + 32 + 12),
    (GGMLType.Q4_K, 256, 2 + 2 + 12 + 128),
    (GGMLType.Q5_K, 256, 2 + 2 + 12 + 128 + 32),
    (GGMLType.Q6_K, 256, 2 + 16 + 192),
    (GGMLType.Q8_K, 256, 4 + 256 + 32),
    (GGMLType.IQ2_XXS, 256, 2 + 64),
    (GGMLType.IQ2_XS, 256, 2 + 64 + 8),
    (GGMLType.IQ3_XXS, 256, 2 + 96),
    (GGMLType.IQ1_S, 256, 2 + 32 + 16),
    (GGMLType.IQ4_NL, 32, 2 + 16),
    (GGMLType.IQ3_S, 256, 2 + 104 + 4),
    (GGMLType.IQ2_S, 256, 2 + 64 + 16),
    (GGMLType.IQ4_XS, 256, 2 + 2 + 4 + 128),
    (GGMLType.I8, 1, 1),
    (GGMLType.I16, 1, 2),
    (GGMLType.I32, 1, 4),
    (GGMLType.I64, 1, 8),
    (GGMLType.F64, 1, 8),
    (GGMLType.IQ1_M, 256, 32 + 16 + 8),
    (GGMLType.BF16, 1, 2),
    (GGMLType.TQ1_0, 256, 2 + 4 + 48),
    (GGMLType.TQ2_0, 256, 2 + 64),
    (GGMLType.MXFP4, 32, 1 + 16),
    (GGMLType.NVFP4, 64, 4 + 32),
    (GGMLType.Q1_0, 128, 2 + 16),
    (GGMLType.Q2_0, 64, 2 + 16),
]

TYPE_INFO: dict[GGMLType, TypeInfo] = {t: TypeInfo(t, bs, bb) for t, bs, bb in _TYPE_ROWS}
TYPE_BY_NAME: dict[str, GGMLType] = {t.name: t for t in GGMLType}


class ValueType(enum.IntEnum):
    """GGUF metadata value types (docs/gguf.md, `gguf_metadata_value_type`)."""

    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


# struct format character of every fixed-size scalar value type (little-endian).
SCALAR_FORMAT: dict[ValueType, str] = {
    ValueType.UINT8: "B",
    ValueType.INT8: "b",
    ValueType.UINT16: "H",
    ValueType.INT16: "h",
    ValueType.UINT32: "I",
    ValueType.INT32: "i",
    ValueType.FLOAT32: "f",
    ValueType.BOOL: "?",
    ValueType.UINT64: "Q",
    ValueType.INT64: "q",
    ValueType.FLOAT64: "d",
}

# numpy dtype of every scalar value type, for reading arrays in one go.
SCALAR_DTYPE: dict[ValueType, str] = {
    ValueType.UINT8: "<u1",
    ValueType.INT8: "<i1",
    ValueType.UINT16: "<u2",
    ValueType.INT16: "<i2",
    ValueType.UINT32: "<u4",
    ValueType.INT32: "<i4",
    ValueType.FLOAT32: "<f4",
    ValueType.BOOL: "?",
    ValueType.UINT64: "<u8",
    ValueType.INT64: "<i8",
    ValueType.FLOAT64: "<f8",
}


class FileType(enum.IntEnum):
    """`general.file_type` values (llama.cpp's `llama_ftype`)."""

    ALL_F32 = 0
    MOSTLY_F16 = 1
    MOSTLY_Q4_0 = 2
    MOSTLY_Q4_1 = 3
    MOSTLY_Q8_0 = 7
    MOSTLY_Q5_0 = 8
    MOSTLY_Q5_1 = 9
    MOSTLY_Q2_K = 10
    MOSTLY_Q3_K_S = 11
    MOSTLY_Q3_K_M = 12
    MOSTLY_Q3_K_L = 13
    MOSTLY_Q4_K_S = 14
    MOSTLY_Q4_K_M = 15
    MOSTLY_Q5_K_S = 16
    MOSTLY_Q5_K_M = 17
    MOSTLY_Q6_K = 18
    MOSTLY_IQ2_XXS = 19
    MOSTLY_IQ2_XS = 20
    MOSTLY_Q2_K_S = 21
    MOSTLY_IQ3_XS = 22
    MOSTLY_IQ3_XXS = 23
    MOSTLY_IQ1_S = 24
    MOSTLY_IQ4_NL = 25
    MOSTLY_IQ3_S = 26
    MOSTLY_IQ3_M = 27
    MOSTLY_IQ2_S = 28
    MOSTLY_IQ2_M = 29
    MOSTLY_IQ4_XS = 30
    MOSTLY_IQ1_M = 31
    MOSTLY_BF16 = 32
    MOSTLY_TQ1_0 = 36
    MOSTLY_TQ2_0 = 37
    MOSTLY_MXFP4_MOE = 38
    MOSTLY_NVFP4 = 39
    MOSTLY_Q1_0 = 40
    MOSTLY_Q2_0 = 41


# How llama.cpp names a file type in model descriptions (llama_ftype_name), e.g. for llama-bench's
# `model_type` column; types missing here are shown by their enum name.
FILE_TYPE_DESCRIPTIONS: dict[FileType, str] = {
    FileType.ALL_F32: "all F32",
    FileType.MOSTLY_F16: "F16",
    FileType.MOSTLY_BF16: "BF16",
    FileType.MOSTLY_Q4_0: "Q4_0",
    FileType.MOSTLY_Q4_1: "Q4_1",
    FileType.MOSTLY_Q5_0: "Q5_0",
    FileType.MOSTLY_Q5_1: "Q5_1",
    FileType.MOSTLY_Q8_0: "Q8_0",
    FileType.MOSTLY_Q2_K: "Q2_K - Medium",
    FileType.MOSTLY_Q2_K_S: "Q2_K - Small",
    FileType.MOSTLY_Q3_K_S: "Q3_K - Small",
    FileType.MOSTLY_Q3_K_M: "Q3_K - Medium",
    FileType.MOSTLY_Q3_K_L: "Q3_K - Large",
    FileType.MOSTLY_Q4_K_S: "Q4_K - Small",
    FileType.MOSTLY_Q4_K_M: "Q4_K - Medium",
    FileType.MOSTLY_Q5_K_S: "Q5_K - Small",
    FileType.MOSTLY_Q5_K_M: "Q5_K - Medium",
    FileType.MOSTLY_Q6_K: "Q6_K",
    FileType.MOSTLY_IQ4_NL: "IQ4_NL - 4.5 bpw",
    FileType.MOSTLY_IQ4_XS: "IQ4_XS - 4.25 bpw",
}
