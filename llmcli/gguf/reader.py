"""Read GGUF files (v2 and v3) without copying tensor data.

Layout (ggml docs/gguf.md, all little-endian):

    magic "GGUF" | u32 version | u64 n_tensors | u64 n_kv
    n_kv x      (string key, u32 value type, value)
    n_tensors x (string name, u32 n_dims, u64 ne[n_dims], u32 ggml type, u64 offset)
    zero padding to `general.alignment`
    tensor data; each tensor at data_start + offset, offsets aligned

A string is a u64 byte length and that many UTF-8 bytes; an array is a u32 item type, a u64 count and
the items. Every count and length read from the header is checked against the bytes that remain
before anything is allocated for it, so a hostile header cannot make us allocate gigabytes.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..errors import FormatError
from .constants import (
    GGUF_DEFAULT_ALIGNMENT,
    GGUF_MAGIC,
    GGUF_SUPPORTED_VERSIONS,
    KEY_ALIGNMENT,
    SCALAR_DTYPE,
    SCALAR_FORMAT,
    TYPE_INFO,
    GGMLType,
    TypeInfo,
    ValueType,
)

MAX_DIMS = 4
# Smallest encodings, used to bound counts by the bytes left in the file.
_MIN_KV_BYTES = 8 + 1 + 4 + 1  # empty-ish key, type, smallest value
_MIN_TENSOR_INFO_BYTES = 8 + 1 + 4 + 4 + 8


@dataclass
class MetadataValue:
    """One metadata value with its GGUF type, kept so a file can be written back byte for byte.

    `value` is a Python scalar or str for scalars; for arrays it is a numpy array (scalar items),
    a list of str (string items) or a list of MetadataValue (nested arrays).
    """

    type: ValueType
    value: Any
    item_type: ValueType | None = None

    def to_python(self) -> Any:
        """Plain Python: lists for arrays, recursively."""
        if self.type != ValueType.ARRAY:
            return self.value
        if self.item_type == ValueType.ARRAY:
            return [v.to_python() for v in self.value]
        if isinstance(self.value, np.ndarray):
            return self.value.tolist()
        return list(self.value)

    def __len__(self) -> int:
        return len(self.value)


@dataclass
class TensorInfo:
    """A tensor as the header describes it. `shape` is in GGUF order: ne0 (the row length) first."""

    name: str
    shape: tuple[int, ...]
    type: GGMLType
    offset: int  # relative to the start of the data section
    type_info: TypeInfo = field(repr=False)

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def row_length(self) -> int:
        return self.shape[0] if self.shape else 1

    @property
    def n_rows(self) -> int:
        return self.n_elements // self.row_length if self.row_length else 0

    @property
    def row_bytes(self) -> int:
        return self.type_info.row_bytes(self.row_length)

    @property
    def n_bytes(self) -> int:
        return self.n_rows * self.row_bytes

    @property
    def numpy_shape(self) -> tuple[int, ...]:
        """Shape in numpy (row-major) order: the reverse of the GGUF order."""
        return tuple(reversed(self.shape))


class _Cursor:
    """Bounds-checked sequential reads over the mapped header."""

    def __init__(self, buf: memoryview, path: Path):
        self.buf = buf
        self.pos = 0
        self.path = path

    @property
    def remaining(self) -> int:
        return len(self.buf) - self.pos

    def fail(self, what: str) -> FormatError:
        return FormatError(f"{self.path}: {what}")

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or n > self.remaining:
            raise self.fail(f"truncated header: {what} needs {n} bytes at offset {self.pos}, "
                            f"{self.remaining} left in the file")
        view = self.buf[self.pos:self.pos + n]
        self.pos += n
        return view

    def scalar(self, fmt: str, what: str):
        size = struct.calcsize("<" + fmt)
        return struct.unpack_from("<" + fmt, self.take(size, what))[0]

    def u32(self, what: str) -> int:
        return self.scalar("I", what)

    def u64(self, what: str) -> int:
        return self.scalar("Q", what)

    def string(self, what: str) -> str:
        n = self.u64(f"length of {what}")
        if n > self.remaining:
            raise self.fail(f"{what}: string length {n} exceeds the {self.remaining} bytes left in the file")
        return bytes(self.take(n, what)).decode("utf-8", errors="surrogateescape")

    def strings(self, count: int, what: str) -> list[str]:
        """`count` consecutive GGUF strings (u64 length + UTF-8 bytes each)."""
        starts, end = self._string_starts(count, what)
        if count < self.COMPILED_SCAN_MIN:
            return [bytes(self.buf[s + 8:e]).decode("utf-8", errors="surrogateescape")
                    for s, e in zip(starts, starts[1:] + [end])]
        return self._strings_bulk(starts, end)

    # From this many strings on, they are found and joined by compiled loops (scan.py): a
    # vocabulary of 32k-262k tokens, ~150-230 ms of Python at load otherwise.
    COMPILED_SCAN_MIN = 16384

    def _string_starts(self, count: int, what: str) -> tuple[list[int] | np.ndarray, int]:
        """Offsets of each string's length field, and where the last string ends (bounds-checked)."""
        if count >= self.COMPILED_SCAN_MIN:
            return self._string_starts_compiled(count, what)
        buf, pos, end = self.buf, self.pos, len(self.buf)
        starts = []
        append = starts.append
        unpack = struct.Struct("<Q").unpack_from
        for _ in range(count):
            if pos + 8 > end:
                self.pos = pos
                raise self.fail(f"truncated header: {what} runs past the end of the file")
            (n,) = unpack(buf, pos)
            if n > end - pos - 8:
                self.pos = pos + 8
                raise self.fail(f"{what}: string length {n} exceeds the {end - pos - 8} bytes left in the file")
            append(pos)
            pos += 8 + n
        self.pos = pos
        return starts, pos

    def _string_starts_compiled(self, count: int, what: str) -> tuple[np.ndarray, int]:
        from . import scan

        if count > (len(self.buf) - self.pos) // 8:  # every string needs its 8-byte length field
            raise self.fail(f"truncated header: {what} runs past the end of the file")
        starts = np.empty(count, np.int64)
        status, _, pos = scan.string_starts(np.frombuffer(self.buf, np.uint8), self.pos, count, starts)
        self.pos = pos
        if status == scan.TRUNCATED:
            raise self.fail(f"truncated header: {what} runs past the end of the file")
        if status == scan.TOO_LONG:
            (n,) = struct.unpack_from("<Q", self.buf, pos - 8)
            raise self.fail(f"{what}: string length {n} exceeds the {len(self.buf) - pos} bytes left in the file")
        return starts, pos

    def _strings_bulk(self, starts: list[int] | np.ndarray, end: int) -> list[str]:
        """Decode many strings at once (vocabularies of 100k+ tokens are the hot path at load).

        The strings are joined with a NUL before each, decoded in one go and split. Decoding is per
        byte sequence, so this equals decoding each string apart, unless a string itself holds a NUL
        byte: then decode them one by one.
        """
        from . import scan

        starts = np.asarray(starts, dtype=np.int64)
        joined = np.empty(end - int(starts[0]) - 7 * len(starts), np.uint8)
        if scan.join_strings(np.frombuffer(self.buf, np.uint8), starts, end, joined):
            return joined.tobytes().decode("utf-8", errors="surrogateescape").split("\0")[1:]
        bounds = starts.tolist() + [end]
        return [bytes(self.buf[s + 8:e]).decode("utf-8", errors="surrogateescape")
                for s, e in zip(bounds, bounds[1:])]


def _value_type(code: int, cur: _Cursor, what: str) -> ValueType:
    try:
        return ValueType(code)
    except ValueError:
        raise cur.fail(f"{what} has unknown metadata value type {code}") from None


def _read_value(cur: _Cursor, vtype: ValueType, what: str) -> MetadataValue:
    if vtype == ValueType.STRING:
        return MetadataValue(vtype, cur.string(what))
    if vtype == ValueType.ARRAY:
        return _read_array(cur, what, depth=0)
    return MetadataValue(vtype, cur.scalar(SCALAR_FORMAT[vtype], what))


def _read_array(cur: _Cursor, what: str, depth: int) -> MetadataValue:
    """An array body: u32 item type, u64 count, items (nested arrays repeat this body)."""
    if depth > 8:
        raise cur.fail(f"{what}: arrays nested more than 8 deep")
    item_type = _value_type(cur.u32(f"item type of {what}"), cur, what)
    count = cur.u64(f"item count of {what}")
    if item_type == ValueType.STRING:
        if count * 8 > cur.remaining:
            raise cur.fail(f"{what}: array of {count} strings cannot fit in the {cur.remaining} bytes left")
        return MetadataValue(ValueType.ARRAY, cur.strings(count, what), item_type)
    if item_type == ValueType.ARRAY:
        if count * 12 > cur.remaining:
            raise cur.fail(f"{what}: array of {count} arrays cannot fit in the {cur.remaining} bytes left")
        items = [_read_array(cur, f"{what}[{i}]", depth + 1) for i in range(count)]
        return MetadataValue(ValueType.ARRAY, items, item_type)
    dtype = np.dtype(SCALAR_DTYPE[item_type])
    nbytes = count * dtype.itemsize
    if nbytes > cur.remaining:
        raise cur.fail(f"{what}: array of {count} {item_type.name} values cannot fit in the "
                       f"{cur.remaining} bytes left")
    arr = np.frombuffer(cur.take(nbytes, what), dtype=dtype).copy()
    return MetadataValue(ValueType.ARRAY, arr, item_type)


class GGUFReader:
    """A GGUF file opened read-only and memory-mapped.

    `metadata` maps key -> MetadataValue in file order; `tensors` lists TensorInfo in file order.
    `tensor_bytes(name)` is a zero-copy uint8 view shaped (rows, bytes per row).

    As llama.cpp's --no-mmap and --mlock: `use_mmap=False` reads the whole file into process memory
    instead (no page-cache dependence, e.g. on a network file system; a slower start), and
    `mlock=True` locks the data in RAM so the OS never pages it out (a warning, not an error, when
    the memlock limit forbids it).
    """

    def __init__(self, path: str | os.PathLike, use_mmap: bool = True, mlock: bool = False):
        self.path = Path(path)
        try:
            self._file = open(self.path, "rb")
        except OSError as e:
            raise FormatError(f"{self.path}: cannot open: {e.strerror}") from None
        try:
            size = os.fstat(self._file.fileno()).st_size
            if size < 24:
                raise FormatError(f"{self.path}: not a GGUF file (only {size} bytes)")
            self._mmap = (mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ) if use_mmap
                          else self._read_whole(size))
            self.file_size = size
            self.mlock = mlock
            self._parse()
            if mlock:
                self._lock_in_memory()
        except BaseException:
            self.close()
            raise

    # Bytes read per call when the file is read into memory (--no-mmap).
    READ_CHUNK_BYTES = 64 << 20

    def _read_whole(self, size: int) -> np.ndarray:
        data = np.empty(size, np.uint8)
        view = memoryview(data)
        done = 0
        while done < size:
            n = self._file.readinto(view[done:done + self.READ_CHUNK_BYTES])
            if not n:
                raise FormatError(f"{self.path}: the file ended after {done} of {size} bytes while reading it")
            done += n
        return data

    def _lock_in_memory(self) -> None:
        """mlock(2) the file's bytes (faulting them all in now). A refusal (RLIMIT_MEMLOCK) is a
        warning on stderr, as llama.cpp gives: the model still runs, only unlocked."""
        import ctypes
        import ctypes.util
        import sys

        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        address = np.frombuffer(self._mmap, np.uint8).ctypes.data
        if getattr(libc, "mlock", None) is None or libc.mlock(ctypes.c_void_p(address), ctypes.c_size_t(self.file_size)):
            reason = os.strerror(ctypes.get_errno()) if hasattr(libc, "mlock") else "mlock is not available"
            print(f"warning: {self.path}: could not lock {self.file_size} bytes in memory ({reason}); "
                  f"raise the memlock limit (ulimit -l) to use --mlock", file=sys.stderr)

    # -- parsing -------------------------------------------------------------------------------

    def _parse(self) -> None:
        buf = memoryview(self._mmap)
        cur = _Cursor(buf, self.path)
        magic = bytes(cur.take(4, "magic"))
        if magic != GGUF_MAGIC:
            raise cur.fail(f"not a GGUF file (magic {magic!r}, expected {GGUF_MAGIC!r})")
        self.version = cur.u32("version")
        if self.version not in GGUF_SUPPORTED_VERSIONS:
            raise cur.fail(f"unsupported GGUF version {self.version} (supported: 2 and 3)")
        n_tensors = cur.u64("tensor count")
        n_kv = cur.u64("metadata count")
        if n_kv * _MIN_KV_BYTES > cur.remaining:
            raise cur.fail(f"metadata count {n_kv} is impossible for a file of {self.file_size} bytes")
        if n_tensors * _MIN_TENSOR_INFO_BYTES > cur.remaining:
            raise cur.fail(f"tensor count {n_tensors} is impossible for a file of {self.file_size} bytes")

        self.metadata: dict[str, MetadataValue] = {}
        for i in range(n_kv):
            key = cur.string(f"metadata key #{i}")
            if not key:
                raise cur.fail(f"metadata key #{i} is empty")
            if key in self.metadata:
                raise cur.fail(f"duplicate metadata key '{key}'")
            vtype = _value_type(cur.u32(f"type of '{key}'"), cur, f"metadata '{key}'")
            self.metadata[key] = _read_value(cur, vtype, f"metadata '{key}'")

        self.alignment = GGUF_DEFAULT_ALIGNMENT
        if KEY_ALIGNMENT in self.metadata:
            al = self.metadata[KEY_ALIGNMENT]
            if al.type != ValueType.UINT32:
                raise cur.fail(f"'{KEY_ALIGNMENT}' must be UINT32, not {al.type.name}")
            if al.value == 0 or al.value & (al.value - 1):
                raise cur.fail(f"'{KEY_ALIGNMENT}' is {al.value}, not a power of two")
            self.alignment = int(al.value)

        self.tensors: list[TensorInfo] = []
        self._by_name: dict[str, TensorInfo] = {}
        for i in range(n_tensors):
            name = cur.string(f"name of tensor #{i}")
            if name in self._by_name:
                raise cur.fail(f"duplicate tensor name '{name}'")
            n_dims = cur.u32(f"dimension count of '{name}'")
            if n_dims > MAX_DIMS:
                raise cur.fail(f"tensor '{name}' has {n_dims} dimensions (at most {MAX_DIMS})")
            shape = tuple(cur.u64(f"shape of '{name}'") for _ in range(n_dims))
            type_id = cur.u32(f"type of '{name}'")
            offset = cur.u64(f"offset of '{name}'")
            try:
                ggml_type = GGMLType(type_id)
            except ValueError:
                raise cur.fail(f"tensor '{name}' has unknown ggml type id {type_id}") from None
            info = TensorInfo(name, shape, ggml_type, offset, TYPE_INFO[ggml_type])
            if shape and shape[0] % info.type_info.block_size:
                raise cur.fail(f"tensor '{name}' row length {shape[0]} is not a multiple of "
                               f"{ggml_type.name}'s block size {info.type_info.block_size}")
            # every dimension, the element count and a row's bytes must fit ggml's int64 sizes (a
            # zero dimension does not excuse a huge one: numpy cannot even shape an empty view so)
            n = 1
            for d in shape:
                n *= d
            if any(d > 2**62 for d in shape) or n > 2**62 or info.row_bytes > 2**62:
                raise cur.fail(f"tensor '{name}' shape {shape} is absurdly large")
            self.tensors.append(info)
            self._by_name[name] = info

        pad = -cur.pos % self.alignment
        self.data_offset = cur.pos + pad if self.tensors else cur.pos
        self.header_size = cur.pos
        for t in self.tensors:
            if t.offset % self.alignment:
                raise cur.fail(f"tensor '{t.name}' offset {t.offset} is not a multiple of the "
                               f"alignment {self.alignment}")
            end = self.data_offset + t.offset + t.n_bytes
            if end > self.file_size:
                raise cur.fail(f"tensor '{t.name}' data ({t.n_bytes} bytes at offset {t.offset}) runs "
                               f"past the end of the file (truncated?)")

    # -- access --------------------------------------------------------------------------------

    def __enter__(self) -> "GGUFReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        mm = getattr(self, "_mmap", None)
        if isinstance(mm, mmap.mmap):
            try:
                mm.close()
            except BufferError:
                # numpy views still point into the map; it is released when they are.
                pass
        self._mmap = None  # (read into memory: freed with the last view)
        f = getattr(self, "_file", None)
        if f is not None:
            f.close()
            self._file = None

    def __contains__(self, key: str) -> bool:
        return key in self.metadata

    def get(self, key: str, default: Any = None) -> Any:
        """The value of `key` as plain Python (lists for arrays), or `default`."""
        mv = self.metadata.get(key)
        return default if mv is None else mv.to_python()

    def get_array(self, key: str) -> Any:
        """An array value as stored: numpy array for numbers, list for strings."""
        return self.metadata[key].value

    def require(self, key: str) -> Any:
        mv = self.metadata.get(key)
        if mv is None:
            raise FormatError(f"{self.path}: required metadata key '{key}' is missing")
        return mv.to_python()

    @property
    def architecture(self) -> str | None:
        return self.get("general.architecture")

    def tensor(self, name: str) -> TensorInfo:
        try:
            return self._by_name[name]
        except KeyError:
            raise FormatError(f"{self.path}: has no tensor '{name}'") from None

    def has_tensor(self, name: str) -> bool:
        return name in self._by_name

    def tensor_bytes(self, name_or_info: str | TensorInfo) -> np.ndarray:
        """Zero-copy uint8 view of a tensor's data shaped (rows, bytes per row)."""
        t = self.tensor(name_or_info) if isinstance(name_or_info, str) else name_or_info
        start = self.data_offset + t.offset
        arr = np.frombuffer(self._mmap, dtype=np.uint8, count=t.n_bytes, offset=start)
        return arr.reshape(t.n_rows, t.row_bytes)

    # Bytes copied between releases of the mapped pages in `tensor_copy`.
    COPY_CHUNK_BYTES = 16 << 20

    def tensor_copy(self, name_or_info: str | TensorInfo) -> np.ndarray:
        """A tensor's data copied into process memory, shaped as `tensor_bytes`, and its file pages
        released from this mapping (where the OS allows) as the copy goes, so resident memory
        does not hold both. numpy backs large arrays with transparent huge pages on Linux: a
        matrix streamed once per token is then read with ~1/500 of the TLB misses of the 4 KiB
        page-cache pages of the map (~15 % faster for the demo model's 178 MB output matrix)."""
        t = self.tensor(name_or_info) if isinstance(name_or_info, str) else name_or_info
        src = self.tensor_bytes(t).reshape(-1)
        out = np.empty(t.n_bytes, np.uint8)
        for lo in range(0, t.n_bytes, self.COPY_CHUNK_BYTES):
            hi = min(t.n_bytes, lo + self.COPY_CHUNK_BYTES)
            out[lo:hi] = src[lo:hi]
            self.release_pages(t, 0, hi)
        return out.reshape(t.n_rows, t.row_bytes)

    @property
    def releases_pages(self) -> bool:
        """Whether `release_pages` frees memory: a plain map (not --no-mmap's copy, not --mlock's
        locked pages)."""
        return (isinstance(self._mmap, mmap.mmap) and hasattr(self._mmap, "madvise") and hasattr(mmap, "MADV_DONTNEED")
                and not self.mlock)

    def release_pages(self, t: TensorInfo, lo: int, hi: int) -> None:
        """Drop the mapped pages wholly inside bytes lo..hi-1 of tensor t from this process's
        resident memory, once their contents have been copied elsewhere (they are read from the
        file again if touched); nothing where the OS cannot."""
        if not self.releases_pages:  # (madvise refuses locked pages)
            return
        start = self.data_offset + t.offset
        first = -(-(start + lo) // mmap.PAGESIZE) * mmap.PAGESIZE
        end = (start + hi) // mmap.PAGESIZE * mmap.PAGESIZE
        if end > first:
            self._mmap.madvise(mmap.MADV_DONTNEED, first, end - first)

    def tensor_array(self, name_or_info: str | TensorInfo) -> np.ndarray:
        """Zero-copy typed view for plain-element types (F32, F16, BF16 as uint16, I8..F64),
        in numpy order (the reverse of the GGUF shape)."""
        t = self.tensor(name_or_info) if isinstance(name_or_info, str) else name_or_info
        dtype = _PLAIN_DTYPES.get(t.type)
        if dtype is None:
            raise FormatError(f"{self.path}: tensor '{t.name}' is {t.type.name}, a block format")
        raw = self.tensor_bytes(t)
        return raw.reshape(-1).view(dtype).reshape(t.numpy_shape or (1,))

    def iter_tensors(self) -> Iterator[tuple[TensorInfo, np.ndarray]]:
        for t in self.tensors:
            yield t, self.tensor_bytes(t)


_PLAIN_DTYPES = {
    GGMLType.F32: np.dtype("<f4"),
    GGMLType.F16: np.dtype("<f2"),
    GGMLType.BF16: np.dtype("<u2"),
    GGMLType.F64: np.dtype("<f8"),
    GGMLType.I8: np.dtype("i1"),
    GGMLType.I16: np.dtype("<i2"),
    GGMLType.I32: np.dtype("<i4"),
    GGMLType.I64: np.dtype("<i8"),
}
