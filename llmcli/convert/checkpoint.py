"""A Hugging Face checkpoint directory, read lazily: config.json and safetensors shards.

Safetensors layout (one file):

    u64 little-endian N | N bytes of JSON header | data
    header: {"name": {"dtype": "BF16", "shape": [rows, cols], "data_offsets": [begin, end]}, ...,
             "__metadata__": {...}}            offsets relative to the start of data

We parse the header ourselves (numpy has no bfloat16, and we want exact file ranges) and read one
tensor's bytes at a time with a plain file read, so memory holds at most the tensor being converted.
Tensors are listed the way llama.cpp's converter visits them: shards in sorted file-name order,
names sorted within each shard.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BadInputError, FormatError, UnsupportedError

# safetensors dtype -> (numpy dtype of the stored bytes, bytes per element)
_STORED_DTYPE: dict[str, str] = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2",
    "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "?",
}
_MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class SourceTensor:
    """One tensor in a safetensors shard; nothing is read until `load()`."""

    name: str
    dtype: str  # safetensors dtype name: F32, F16, BF16, ...
    shape: tuple[int, ...]
    path: Path
    offset: int  # absolute file offset of the first byte
    n_bytes: int

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1

    def load(self) -> np.ndarray:
        """The tensor as llama.cpp's converter works on it: F16 and F32 as stored, all else float32."""
        return self.load_rows(0, self.shape[0]) if self.shape else self._read(0, 1).reshape(())

    def load_rows(self, start: int, stop: int) -> np.ndarray:
        """Rows start..stop (first axis) of the tensor, converted as `load()` does."""
        row = int(np.prod(self.shape[1:], dtype=np.int64))
        return self._read(start * row, (stop - start) * row).reshape((stop - start, *self.shape[1:]))

    def _read(self, first: int, count: int) -> np.ndarray:
        dtype = np.dtype(_STORED_DTYPE[self.dtype])
        with open(self.path, "rb") as f:
            if hasattr(os, "posix_fadvise"):
                # Read exactly these bytes, no readahead past them: a MoE's stacks take every third
                # expert tensor of a layer (down, then gate, then up), and the kernel's readahead
                # (8 MB here) past each read re-read pages already converted and dropped - a
                # Qwen1.5-MoE-shaped checkpoint read 43 GB from disk for its 28.6 GB. The reads are
                # megabytes each, and `pipeline.encode_by_rows` keeps READ_AHEAD_SLICES in flight.
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_RANDOM)
            f.seek(self.offset + first * dtype.itemsize)
            raw = np.fromfile(f, dtype=dtype, count=count)
            if hasattr(os, "posix_fadvise"):  # read once: its pages would only crowd the page cache
                os.posix_fadvise(f.fileno(), self.offset + first * dtype.itemsize, raw.nbytes, os.POSIX_FADV_DONTNEED)
        if raw.size != count:
            raise FormatError(f"{self.path}: tensor '{self.name}' is cut short (file truncated?)")
        if self.dtype in ("F32", "F16"):
            return raw
        if self.dtype == "BF16":
            # bfloat16 is the top half of a float32: widen exactly.
            wide = raw.astype(np.uint32)
            del raw
            wide <<= 16
            return wide.view(np.float32)
        return raw.astype(np.float32)


def read_safetensors_header(path: Path) -> list[SourceTensor]:
    """The tensors a safetensors file lists, each checked to lie inside the file.

    Every field of the header is checked for type and range before use (a hostile header is a
    one-line FormatError, never a TypeError or an allocation of what it claims): dtype a known
    name, shape a list of non-negative integers, data_offsets two integers 0 <= begin <= end whose
    difference is exactly what the dtype and shape need, and the data inside the file.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise FormatError(f"{path}: truncated safetensors file ({size} bytes)")
        n = int.from_bytes(head, "little")
        if n > _MAX_HEADER or 8 + n > size:
            raise FormatError(f"{path}: truncated or corrupt safetensors header (says {n} bytes, file has {size})")
        try:
            header = json.loads(f.read(n).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise FormatError(f"{path}: corrupt safetensors header ({e})") from None
        except RecursionError:
            raise FormatError(f"{path}: corrupt safetensors header (JSON nested too deeply)") from None
    if not isinstance(header, dict):
        raise FormatError(f"{path}: corrupt safetensors header (not a JSON object)")
    data_start = 8 + n
    out = []
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        dtype, shape, offsets = _entry_fields(path, name, meta)
        if dtype not in _STORED_DTYPE:
            raise UnsupportedError(f"{path}: tensor {name!r} has dtype {dtype[:40]!r}, which convert cannot read")
        begin, end = offsets
        expected = math.prod(shape) * np.dtype(_STORED_DTYPE[dtype]).itemsize
        if end - begin != expected:
            raise FormatError(f"{path}: tensor {name!r} has {end - begin} bytes, its {dtype} shape "
                              f"{_short(list(shape))} needs {expected}")
        if data_start + end > size:
            raise FormatError(f"{path}: truncated: tensor {name!r} ends at byte {data_start + end}, file has {size}")
        out.append(SourceTensor(name, dtype, shape, path, data_start + begin, end - begin))
    out.sort(key=lambda t: t.name)
    return out


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _entry_fields(path: Path, name: str, meta: Any) -> tuple[str, tuple[int, ...], tuple[int, int]]:
    """(dtype, shape, (begin, end)) of one header entry, or a FormatError saying what is wrong."""
    def bad(what: str) -> FormatError:
        return FormatError(f"{path}: corrupt safetensors entry for tensor {_short(name)}: {what}")

    if not isinstance(meta, dict):
        raise bad(f"expected an object, got {type(meta).__name__}")
    missing = [k for k in ("dtype", "shape", "data_offsets") if k not in meta]
    if missing:
        raise bad(f"no {', '.join(repr(k) for k in missing)}")
    dtype, shape, offsets = meta["dtype"], meta["shape"], meta["data_offsets"]
    if not isinstance(dtype, str):
        raise bad(f"'dtype' is {_short(dtype)}, not a string")
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise bad(f"'shape' is {_short(shape)}, not a list of non-negative integers")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)
            and 0 <= offsets[0] <= offsets[1]):
        raise bad(f"'data_offsets' is {_short(offsets)}, not [begin, end] with 0 <= begin <= end")
    return dtype, tuple(shape), (offsets[0], offsets[1])


class Checkpoint:
    """config.json + the list of tensors of a Hugging Face model directory."""

    def __init__(self, model_dir: str | os.PathLike):
        self.dir = Path(model_dir)
        if not self.dir.is_dir():
            raise BadInputError(f"{self.dir}: not a directory")
        self.config_path = self.dir / "config.json"
        if not self.config_path.is_file():
            raise BadInputError(f"{self.dir}: no config.json (expected a Hugging Face model directory)")
        try:
            self.config: dict[str, Any] = json.loads(self.config_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise FormatError(f"{self.config_path}: not valid JSON ({e})") from None
        if not isinstance(self.config, dict):
            raise FormatError(f"{self.config_path}: not a JSON object")
        self.shards = self._shard_paths()
        self.tensors: list[SourceTensor] = []
        for shard in self.shards:
            self.tensors.extend(read_safetensors_header(shard))
        self._check_index()

    @property
    def architecture(self) -> str:
        archs = self.config.get("architectures")
        if not isinstance(archs, list) or not archs or not isinstance(archs[0], str):
            raise BadInputError(f"{self.config_path}: missing 'architectures'")
        return archs[0]

    def _index(self) -> dict | None:
        path = self.dir / "model.safetensors.index.json"
        if not path.is_file():
            return None
        try:
            index = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise FormatError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(index, dict) or not isinstance(index.get("weight_map"), dict):
            raise FormatError(f"{path}: no 'weight_map'")
        return index

    def _shard_paths(self) -> list[Path]:
        index = self._index()
        if index is not None:
            names = sorted(set(index["weight_map"].values()))
            missing = [n for n in names if not (self.dir / n).is_file()]
            if missing:
                raise BadInputError(f"{self.dir / missing[0]}: shard listed in model.safetensors.index.json is missing")
            return [self.dir / n for n in names]
        names = sorted(n for n in os.listdir(self.dir) if n.startswith("model") and n.endswith(".safetensors"))
        if not names:
            raise BadInputError(f"{self.dir}: no model*.safetensors weights found")
        # without an index, shard names (model-00002-of-00003.safetensors) still say how many there are
        for n in names:
            if m := re.fullmatch(r"model-(\d+)-of-(\d+)\.safetensors", n):
                width, total = len(m.group(1)), int(m.group(2))
                for i in range(1, total + 1):
                    expected = f"model-{i:0{width}d}-of-{m.group(2)}.safetensors"
                    if expected not in names:
                        raise BadInputError(f"{self.dir / expected}: shard missing (and no model.safetensors.index.json)")
                break
        return [self.dir / n for n in names]

    def _check_index(self) -> None:
        index = self._index()
        if index is None:
            return
        listed = set(index["weight_map"])
        present = {t.name for t in self.tensors}
        missing = sorted(listed - present)
        if missing:
            shard = index["weight_map"][missing[0]]
            raise BadInputError(f"{self.dir / shard}: tensor '{missing[0]}' listed in the index is not in the shard "
                                f"({len(missing)} missing)")
        extra = sorted(present - listed)
        if extra:
            raise BadInputError(f"{self.dir / 'model.safetensors.index.json'}: tensor '{extra[0]}' is in a shard but "
                                f"not in the index")

    @property
    def total_bytes(self) -> int:
        return sum(t.n_bytes for t in self.tensors)
