"""The GGUF file format alone: constants, a zero-copy reader, a streaming writer."""

from .constants import (
    GGUF_DEFAULT_ALIGNMENT,
    TYPE_BY_NAME,
    TYPE_INFO,
    FileType,
    GGMLType,
    TypeInfo,
    ValueType,
)
from .reader import GGUFReader, MetadataValue, TensorInfo
from .writer import GGUFWriter, copy_metadata, rewrite

__all__ = [
    "GGUF_DEFAULT_ALIGNMENT", "TYPE_BY_NAME", "TYPE_INFO", "FileType", "GGMLType", "TypeInfo",
    "ValueType", "GGUFReader", "MetadataValue", "TensorInfo", "GGUFWriter", "copy_metadata", "rewrite",
]
