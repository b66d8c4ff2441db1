"""A GGUF file described as plain data: what `llmcli inspect` shows and prints as JSON."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from .constants import FileType, ValueType
from .reader import GGUFReader, MetadataValue

ARRAY_PREVIEW = 8  # items shown of a long array


def summarize_value(mv: MetadataValue, preview: int = ARRAY_PREVIEW) -> Any:
    """JSON-friendly value; arrays longer than `preview` become {type, length, head}."""
    if mv.type != ValueType.ARRAY:
        return mv.value
    n = len(mv.value)
    if n <= preview:
        return mv.to_python()
    head = mv.value[:preview]
    if isinstance(head, np.ndarray):
        head = head.tolist()
    elif mv.item_type == ValueType.ARRAY:
        head = [summarize_value(v, preview) for v in head]
    return {"array_of": mv.item_type.name, "length": n, "head": list(head)}


def describe(reader: GGUFReader, with_tensors: bool = True) -> dict[str, Any]:
    tensors = reader.tensors
    n_params = sum(t.n_elements for t in tensors)
    n_bytes = sum(t.n_bytes for t in tensors)
    file_type = reader.get("general.file_type")
    try:
        file_type_name = FileType(file_type).name if file_type is not None else None
    except ValueError:
        file_type_name = f"unknown ({file_type})"
    counts = Counter(t.type.name for t in tensors)
    out: dict[str, Any] = {
        "file": str(reader.path),
        "file_size": reader.file_size,
        "gguf_version": reader.version,
        "alignment": reader.alignment,
        "architecture": reader.architecture,
        "file_type": file_type_name,
        "n_tensors": len(tensors),
        "n_parameters": n_params,
        "tensor_bytes": n_bytes,
        "bits_per_weight": round(8.0 * n_bytes / n_params, 4) if n_params else 0.0,
        "type_counts": dict(sorted(counts.items())),
        "metadata": {
            key: {"type": mv.type.name if mv.type != ValueType.ARRAY else f"ARRAY[{mv.item_type.name}]",
                  "value": summarize_value(mv)}
            for key, mv in reader.metadata.items()
        },
    }
    if with_tensors:
        out["tensors"] = [
            {"name": t.name, "shape": list(t.shape), "type": t.type.name, "bytes": t.n_bytes,
             "offset": t.offset}
            for t in tensors
        ]
    return out
