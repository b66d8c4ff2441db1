"""Importance-matrix files as llama.cpp writes and reads them: GGUF, and the legacy .dat.

An importance matrix holds, for every weight matrix a model multiplies activations with, the sum
over the evaluated tokens of each input column's squared activation (`in_sum2`) and how many
activation rows were summed (`counts`) - one sum vector and one count per matrix of a 3-D tensor
(per expert of a MoE `*_exps` tensor), else one.

GGUF (llama-imatrix's default):

    metadata  general.type = "imatrix"
              imatrix.datasets    [str]  the text files it was computed on
              imatrix.chunk_count u32    chunks evaluated (largest count // chunk_size)
              imatrix.chunk_size  u32    tokens per chunk (-c)
    tensors   per entry, by name:  <name>.in_sum2  F32 (n_cols, n_mat)   raw sums
                                   <name>.counts   F32 (1, n_mat)        rows summed
              (GGUF drops trailing 1 dimensions: (n_cols,) and (1,) when n_mat is 1)

Legacy .dat (little-endian; the sums are stored as means scaled by the chunk count):

    int32 n_entries
    n_entries x { int32 name_len, name bytes, int32 ncall, int32 n_values,
                  float32 values[n_values] = sum / count * ncall }
    int32 chunk_count, int32 dataset_len, dataset bytes          (optional trailer)

`read_imatrix` reads either (as llama.cpp's common_imatrix_load: not GGUF means .dat), `write_gguf`
and `write_dat` write what llama-imatrix writes for the same data, byte for byte.
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..atomic import atomic_output
from ..errors import FormatError
from ..gguf import GGUFReader, GGUFWriter
from ..gguf.constants import GGUF_MAGIC, GGMLType, ValueType

KEY_TYPE = "general.type"
KEY_DATASETS = "imatrix.datasets"
KEY_CHUNK_COUNT = "imatrix.chunk_count"
KEY_CHUNK_SIZE = "imatrix.chunk_size"
SUM_SUFFIX = ".in_sum2"
COUNT_SUFFIX = ".counts"


@dataclass
class ImatrixEntry:
    """One weight matrix (or stack of them): sums float32 (n_mat * n_cols,), counts int64 (n_mat,).
    A legacy file gives one count (its ncall) whatever the number of matrices."""

    sums: np.ndarray
    counts: np.ndarray

    @property
    def n_mat(self) -> int:
        return len(self.counts)


@dataclass
class ImatrixFile:
    """A file's content as read: entries by name (sorted), datasets, chunk count and size."""

    path: Path
    entries: dict[str, ImatrixEntry]
    datasets: list[str] = field(default_factory=list)
    chunk_count: int = 0
    chunk_size: int = 0
    is_legacy: bool = False
    has_metadata: bool = False  # GGUF with all three imatrix.* keys


def read_imatrix(path: str | os.PathLike) -> ImatrixFile:
    path = Path(path)
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise FormatError(f"{path}: cannot read the importance matrix ({e.strerror})") from None
    return _read_gguf(path) if magic == GGUF_MAGIC else _read_dat(path)


def _read_gguf(path: Path) -> ImatrixFile:
    with GGUFReader(path) as r:
        if not r.tensors:
            raise FormatError(f"{path}: no data in the importance matrix")
        pairs: dict[str, list] = {}
        for t in r.tensors:
            for suffix, slot in ((SUM_SUFFIX, 0), (COUNT_SUFFIX, 1)):
                if t.name.endswith(suffix):
                    pairs.setdefault(t.name[:-len(suffix)], [None, None])[slot] = t
        entries = {}
        for name in sorted(pairs, key=lambda n: n.encode("utf-8", "surrogateescape")):
            sums, counts = pairs[name]
            if sums is None or counts is None:
                raise FormatError(f"{path}: '{name}' has {'counts' if sums is None else 'sums'} "
                                  f"but no {'sums' if sums is None else 'counts'}")
            if sums.type != GGMLType.F32 or counts.type != GGMLType.F32:
                raise FormatError(f"{path}: sums and counts of '{name}' must be F32")
            raw_counts = r.tensor_array(counts).reshape(-1).astype(np.float64)
            entries[name] = ImatrixEntry(np.array(r.tensor_array(sums), np.float32).reshape(-1),
                                         np.array([_lround(c) for c in raw_counts], np.int64))
        datasets_mv = r.metadata.get(KEY_DATASETS)
        datasets = (list(datasets_mv.value) if datasets_mv is not None and datasets_mv.type == ValueType.ARRAY
                    and datasets_mv.item_type == ValueType.STRING else [])
        has_metadata = all(k in r.metadata for k in (KEY_DATASETS, KEY_CHUNK_COUNT, KEY_CHUNK_SIZE))
        return ImatrixFile(path, entries, datasets, int(r.get(KEY_CHUNK_COUNT, 0) or 0),
                           int(r.get(KEY_CHUNK_SIZE, 0) or 0), False, has_metadata)


def _lround(v: float) -> int:
    """C's lround: nearest integer, halves away from zero."""
    return int(math.copysign(math.floor(abs(v) + 0.5), v))


class _Bytes:
    def __init__(self, data: bytes, path: Path):
        self.data, self.pos, self.path = data, 0, path

    def left(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise FormatError(f"{self.path}: not an importance matrix (GGUF or legacy .dat): "
                              f"the file ends inside {what}")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def i32(self, what: str) -> int:
        return struct.unpack("<i", self.take(4, what))[0]


def _read_dat(path: Path) -> ImatrixFile:
    cur = _Bytes(path.read_bytes(), path)
    n_entries = cur.i32("the entry count") if cur.left() >= 4 else 0
    if n_entries < 1:
        raise FormatError(f"{path}: not an importance matrix (GGUF or legacy .dat): no entries")
    entries = {}
    for i in range(n_entries):
        name = cur.take(cur.i32(f"entry {i + 1}"), f"the name of entry {i + 1}")
        name = name.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        ncall = cur.i32(f"entry '{name}'")
        n_values = cur.i32(f"entry '{name}'")
        if n_values < 1:
            raise FormatError(f"{path}: entry '{name}' has {n_values} values")
        sums = np.frombuffer(cur.take(4 * n_values, f"the values of '{name}'"), "<f4").astype(np.float32)
        entries[name] = ImatrixEntry(sums, np.array([ncall], np.int64))
    datasets, chunk_count = [], 0
    if cur.left() >= 4:  # the optional trailer: chunk count, then the dataset's name
        chunk_count = cur.i32("the chunk count")
        if cur.left() >= 4:
            n = cur.i32("the dataset name")
            if 0 < n <= cur.left():
                datasets.append(cur.take(n, "the dataset name").split(b"\0", 1)[0]
                                .decode("utf-8", "surrogateescape"))
    entries = dict(sorted(entries.items(), key=lambda kv: kv[0].encode("utf-8", "surrogateescape")))
    return ImatrixFile(path, entries, datasets, chunk_count, 0, True, False)


def _by_name(entries: dict[str, ImatrixEntry]) -> list[str]:
    """llama-imatrix's order: names sorted bytewise (std::sort of std::string)."""
    return sorted(entries, key=lambda n: n.encode("utf-8", "surrogateescape"))


def write_gguf(path: str | os.PathLike, entries: dict[str, ImatrixEntry], datasets: list[str],
               chunk_count: int, chunk_size: int, force: bool = False) -> Path:
    """The GGUF llama-imatrix writes; entries without any count are still written (as it does)."""
    w = GGUFWriter(path, force=force)
    w.add_string(KEY_TYPE, "imatrix")
    w.add_array(KEY_DATASETS, list(datasets), ValueType.STRING)
    w.add_uint32(KEY_CHUNK_COUNT, chunk_count)
    w.add_uint32(KEY_CHUNK_SIZE, chunk_size)
    stored = []
    for name in _by_name(entries):
        e = entries[name]
        n_values, n_mat = len(e.sums), e.n_mat
        if n_values == 0 or n_mat == 0:
            continue
        cols = n_values // n_mat
        w.add_tensor_info(name + SUM_SUFFIX, (cols, n_mat) if n_mat > 1 else (cols,), GGMLType.F32)
        w.add_tensor_info(name + COUNT_SUFFIX, (1, n_mat) if n_mat > 1 else (1,), GGMLType.F32)
        stored.append((name, e))
    with w.open():
        for name, e in stored:
            w.write_tensor_data(name + SUM_SUFFIX, np.ascontiguousarray(e.sums[:len(e.sums) // e.n_mat * e.n_mat],
                                                                       np.float32))
            w.write_tensor_data(name + COUNT_SUFFIX, e.counts.astype(np.float32))
    return Path(path)


def write_dat(path: str | os.PathLike, entries: dict[str, ImatrixEntry], chunk_count: int, chunk_size: int,
              dataset: str, force: bool = False) -> tuple[Path, list[str]]:
    """The legacy file llama-imatrix writes (--output-format dat). Entries with no count at all
    are left out, as llama-imatrix does; returns the path and their names."""
    stored, skipped = [], []
    for name in _by_name(entries):
        e = entries[name]
        if e.n_mat == 0:
            continue
        if not e.counts.any():
            skipped.append(name)
            continue
        stored.append(name)
    parts = [struct.pack("<i", len(stored))]
    for name in stored:
        e = entries[name]
        raw = name.encode("utf-8", "surrogateescape")
        ncall = (int(e.counts.max()) + chunk_size - 1) // chunk_size  # rounded up: no accidental zeros
        n_values = len(e.sums)
        parts.append(struct.pack("<i", len(raw)) + raw + struct.pack("<ii", ncall, n_values))
        per_mat = n_values // e.n_mat
        counts = np.repeat(e.counts.astype(np.float32), per_mat)[:n_values]
        sums = e.sums.astype(np.float32)
        empty = counts == 0            # a matrix never used (an expert no token chose): stored as 1
        sums = np.where(empty, np.float32(1.0), sums)
        counts = np.where(empty, np.float32(1.0), counts)
        parts.append(((sums / counts) * np.float32(ncall)).astype("<f4").tobytes())
    raw_dataset = dataset.encode("utf-8", "surrogateescape")
    parts.append(struct.pack("<ii", chunk_count, len(raw_dataset)) + raw_dataset)
    with atomic_output(path, force=force) as f:
        f.write(b"".join(parts))
    return Path(path), skipped
