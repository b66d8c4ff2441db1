"""Write GGUF v3 files: header first, then tensor data streamed one tensor at a time.

The writer lays tensors out as ggml and gguf-py do - in the order they were added, each at the next
multiple of the alignment, the data section padded with zeros after every tensor - so reading a file
and writing it back gives the same bytes.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterable

import numpy as np

from ..atomic import atomic_output, check_output_path
from ..errors import BadInputError, LlmcliError
from .constants import (
    GGUF_DEFAULT_ALIGNMENT,
    GGUF_MAGIC,
    KEY_ALIGNMENT,
    SCALAR_DTYPE,
    SCALAR_FORMAT,
    TYPE_INFO,
    GGMLType,
    ValueType,
)
from .reader import MetadataValue, TensorInfo


def _pack_string(s: str) -> bytes:
    b = s.encode("utf-8", errors="surrogateescape")
    return struct.pack("<Q", len(b)) + b


def _pack_array(mv: MetadataValue) -> bytes:
    item_type = mv.item_type
    parts = [struct.pack("<IQ", item_type, len(mv.value))]
    if item_type == ValueType.STRING:
        parts.extend(_pack_string(s) for s in mv.value)
    elif item_type == ValueType.ARRAY:
        parts.extend(_pack_array(v) for v in mv.value)
    else:
        parts.append(np.asarray(mv.value, dtype=SCALAR_DTYPE[item_type]).tobytes())
    return b"".join(parts)


def pack_value(mv: MetadataValue) -> bytes:
    """The bytes of one value (without its type tag)."""
    if mv.type == ValueType.STRING:
        return _pack_string(mv.value)
    if mv.type == ValueType.ARRAY:
        return _pack_array(mv)
    return struct.pack("<" + SCALAR_FORMAT[mv.type], mv.value)


@dataclass
class _TensorSlot:
    """A declared tensor's place in the data section: its size and offset (relative to the data start)."""

    name: str
    shape: tuple[int, ...]
    type: GGMLType
    n_bytes: int
    offset: int


# Bytes of output between two write-behind steps (`GGUFWriter._write_behind`).
WRITE_BEHIND_BYTES = 64 << 20


class GGUFWriter:
    """Collects metadata and tensor descriptions, then streams the file.

        w = GGUFWriter(path, force=False)
        w.add_string("general.architecture", "llama")
        w.add_tensor_info("token_embd.weight", (n_embd, n_vocab), GGMLType.F16)
        with w.open():
            w.write_tensor_data("token_embd.weight", data)   # in the order added

    Nothing exists at `path` until the `with` block ends without error.
    """

    def __init__(self, path: str | os.PathLike, *, force: bool = False):
        self.path = check_output_path(path, force)
        self.force = force
        self.metadata: dict[str, MetadataValue] = {}
        self._tensors: list[_TensorSlot] = []
        self._names: set[str] = set()
        self._file: BinaryIO | None = None
        self._next_write = 0
        self._behind = (0, 0)  # file offsets: pages before [0] dropped, [0]..[1] handed to writeback

    # -- metadata ------------------------------------------------------------------------------

    def add(self, key: str, value: MetadataValue) -> None:
        if key in self.metadata:
            raise LlmcliError(f"{self.path}: metadata key '{key}' added twice")
        self.metadata[key] = value

    def add_scalar(self, key: str, value: Any, vtype: ValueType) -> None:
        self.add(key, MetadataValue(vtype, value))

    def add_string(self, key: str, value: str) -> None:
        self.add(key, MetadataValue(ValueType.STRING, value))

    def add_bool(self, key: str, value: bool) -> None:
        self.add(key, MetadataValue(ValueType.BOOL, bool(value)))

    def add_uint32(self, key: str, value: int) -> None:
        self.add(key, MetadataValue(ValueType.UINT32, int(value)))

    def add_int32(self, key: str, value: int) -> None:
        self.add(key, MetadataValue(ValueType.INT32, int(value)))

    def add_uint64(self, key: str, value: int) -> None:
        self.add(key, MetadataValue(ValueType.UINT64, int(value)))

    def add_float32(self, key: str, value: float) -> None:
        self.add(key, MetadataValue(ValueType.FLOAT32, float(value)))

    def add_array(self, key: str, values: Iterable[Any] | np.ndarray, item_type: ValueType) -> None:
        if item_type == ValueType.STRING:
            values = list(values)
        elif item_type != ValueType.ARRAY:
            values = np.asarray(values, dtype=SCALAR_DTYPE[item_type])
        self.add(key, MetadataValue(ValueType.ARRAY, values, item_type))

    @property
    def alignment(self) -> int:
        mv = self.metadata.get(KEY_ALIGNMENT)
        return int(mv.value) if mv is not None else GGUF_DEFAULT_ALIGNMENT

    # -- tensors -------------------------------------------------------------------------------

    def add_tensor_info(self, name: str, shape: tuple[int, ...], ggml_type: GGMLType) -> None:
        """Declare a tensor; `shape` in GGUF order (row length first)."""
        if name in self._names:
            raise LlmcliError(f"{self.path}: tensor '{name}' added twice")
        if self._file is not None:
            raise LlmcliError(f"{self.path}: tensor '{name}' added after the header was written")
        info = TYPE_INFO[ggml_type]
        shape = tuple(int(d) for d in shape)
        if shape and shape[0] % info.block_size:
            raise BadInputError(f"tensor '{name}': row length {shape[0]} is not a multiple of "
                                f"{ggml_type.name}'s block size {info.block_size}")
        n_elements = int(np.prod(shape, dtype=np.int64)) if shape else 1
        n_bytes = n_elements // info.block_size * info.block_bytes
        offset = 0
        if self._tensors:
            last = self._tensors[-1]
            offset = last.offset + _pad(last.n_bytes, self.alignment)
        self._tensors.append(_TensorSlot(name, shape, ggml_type, n_bytes, offset))
        self._names.add(name)

    def add_tensor_infos_from(self, tensors: Iterable[TensorInfo]) -> None:
        for t in tensors:
            self.add_tensor_info(t.name, t.shape, t.type)

    # -- writing -------------------------------------------------------------------------------

    def header_bytes(self) -> bytes:
        parts = [GGUF_MAGIC, struct.pack("<IQQ", 3, len(self._tensors), len(self.metadata))]
        for key, mv in self.metadata.items():
            parts.append(_pack_string(key))
            parts.append(struct.pack("<I", mv.type))
            parts.append(pack_value(mv))
        for t in self._tensors:
            parts.append(_pack_string(t.name))
            parts.append(struct.pack("<I", len(t.shape)))
            parts.append(struct.pack(f"<{len(t.shape)}Q", *t.shape))
            parts.append(struct.pack("<IQ", t.type, t.offset))
        header = b"".join(parts)
        return header + b"\0" * (-len(header) % self.alignment)

    def open(self) -> "_OpenWriter":
        return _OpenWriter(self)

    def write_tensor_data(self, name: str, data: np.ndarray | bytes | memoryview) -> None:
        """Write the next tensor's bytes; tensors must come in the order they were added."""
        self.write_tensor_parts(name, (data,))

    def write_tensor_parts(self, name: str, parts: Iterable[np.ndarray | bytes | memoryview]) -> None:
        """Write the next tensor's bytes as consecutive parts (a big tensor encoded slab by slab is
        never whole in memory); together they must be exactly the tensor's size."""
        if self._file is None:
            raise LlmcliError(f"{self.path}: write_tensor_data outside `with writer.open()`")
        if self._next_write >= len(self._tensors):
            raise LlmcliError(f"{self.path}: more tensor data than declared tensors ('{name}')")
        t = self._tensors[self._next_write]
        if t.name != name:
            raise LlmcliError(f"{self.path}: expected data for '{t.name}', got '{name}'")
        written = 0
        for part in parts:
            buf = memoryview(np.ascontiguousarray(part)).cast("B") if isinstance(part, np.ndarray) \
                else memoryview(part).cast("B")
            written += buf.nbytes
            if written > t.n_bytes:
                break
            self._write_behind(buf)
        if written != t.n_bytes:
            got = f"more than {t.n_bytes}" if written > t.n_bytes else str(written)
            raise LlmcliError(f"{self.path}: tensor '{name}' has {got} bytes, "
                              f"its {t.type.name} shape {t.shape} needs {t.n_bytes}")
        self._file.write(b"\0" * (-t.n_bytes % self.alignment))
        self._next_write += 1

    def _write_behind(self, buf: memoryview) -> None:
        """Write buf; every WRITE_BEHIND_BYTES, start the writeback of what came since and drop
        from the page cache what was handed to writeback the time before (clean by now). A
        multi-GB output is never read back, and its dirty pages crowding out everything else made
        the kernel reclaim page by page: a 15 GB convert spent ~half its time in the system."""
        self._file.write(buf)
        if not hasattr(os, "posix_fadvise") or self._file.tell() - self._behind[1] < WRITE_BEHIND_BYTES:
            return
        self._file.flush()
        end = self._file.tell()
        # (for dirty pages, DONTNEED starts their writeback; clean ones it drops)
        os.posix_fadvise(self._file.fileno(), self._behind[0], end - self._behind[0], os.POSIX_FADV_DONTNEED)
        self._behind = (self._behind[1], end)

    @property
    def total_bytes(self) -> int:
        """Size of the finished file."""
        data = self._tensors[-1].offset + _pad(self._tensors[-1].n_bytes, self.alignment) if self._tensors else 0
        return len(self.header_bytes()) + data


class _OpenWriter:
    def __init__(self, writer: GGUFWriter):
        self.writer = writer
        self._ctx = None

    def __enter__(self) -> GGUFWriter:
        w = self.writer
        self._ctx = atomic_output(w.path, w.force)
        w._file = self._ctx.__enter__()
        w._next_write = 0
        w._file.write(w.header_bytes())
        return w

    def __exit__(self, exc_type, exc, tb) -> bool:
        w = self.writer
        try:
            if exc_type is None and w._next_write != len(w._tensors):
                missing = w._tensors[w._next_write].name
                exc = LlmcliError(f"{w.path}: tensor data missing from '{missing}' on")
                exc_type = type(exc)
                self._ctx.__exit__(exc_type, exc, None)
                raise exc
            return bool(self._ctx.__exit__(exc_type, exc, tb))
        finally:
            w._file = None


def _pad(n: int, alignment: int) -> int:
    return n + (-n % alignment)


def copy_metadata(src: dict[str, MetadataValue], writer: GGUFWriter, skip: Iterable[str] = ()) -> None:
    skip = set(skip)
    for key, mv in src.items():
        if key not in skip:
            writer.add(key, mv)


def rewrite(reader, path: str | os.PathLike, force: bool = False) -> Path:
    """Write `reader`'s file again at `path` (the round trip used by tests and `inspect`)."""
    w = GGUFWriter(path, force=force)
    copy_metadata(reader.metadata, w)
    w.add_tensor_infos_from(reader.tensors)
    with w.open():
        for t, data in reader.iter_tensors():
            w.write_tensor_data(t.name, data)
    return Path(path)
