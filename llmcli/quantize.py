"""`llmcli quantize`: a GGUF file in, the same model with llama-quantize's block formats out.

    reader (mmap) ─► plan: a type per tensor (quants/mixes.py), output header, checks up front
                  ─► per tensor, in llama-quantize's order: copy the bytes, or
                     dequantize a slab of rows to float32 ─► quantize ─► write; measure the error
                  ─► atomic rename

What llama-quantize writes, and so what we write: the input's metadata in its order, minus split.*
keys, with `general.quantization_version` (2) and `general.file_type` removed and appended last;
tensors sorted by layer then name; each tensor's dimensions trimmed of trailing 1s (ggml_n_dims);
data padded to 32 bytes. Quantization works row by row, so slabs of rows give the same bytes as the
whole tensor at once; only one tensor's output is held in memory.

With an importance matrix (--imatrix, as `llama-quantize --imatrix`): each tensor it has an entry
for is quantized by ggml's weighted quantizers, the column weights being the entry's mean squared
activations (sums / count, per expert for a 3-D tensor); a few mix rules change; Q2_K_S becomes
possible; and `quantize.imatrix.{file,dataset,entries_count,chunks_count}` are appended to the
metadata. --include-weights / --exclude-weights keep or drop entries whose name contains a string.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from .atomic import check_output_path
from .errors import BadInputError, UnsupportedError
from .gguf import GGUFReader, GGUFWriter
from .gguf.constants import QUANTIZATION_VERSION, TYPE_INFO, GGMLType, ValueType
from .gguf.reader import MetadataValue, TensorInfo
from .imatrix.file import read_imatrix
from .quants import registry
from .quants.error_sums import square_sums
from .quants.mixes import (
    IMATRIX_ONLY_MIXES,
    MIXES_BY_PRECISION,
    Mix,
    ModelFacts,
    QuantizeOptions,
    TypeChoice,
    TypePlanner,
    WEIGHTS_ONLY_TYPES,
    find_mix,
    is_quantized,
    llama_tensor_order,
    n_dims,
)

KEY_FILE_TYPE = "general.file_type"
KEY_QUANTIZATION_VERSION = "general.quantization_version"
SPLIT_KEYS = ("split.no", "split.count", "split.tensors.count")
KEY_IMATRIX_FILE = "quantize.imatrix.file"
KEY_IMATRIX_DATASET = "quantize.imatrix.dataset"
KEY_IMATRIX_N_ENTRIES = "quantize.imatrix.entries_count"
KEY_IMATRIX_N_CHUNKS = "quantize.imatrix.chunks_count"
IMATRIX_TEXT_BYTES = 127  # llama-quantize keeps this much of the file and dataset names

# Rows converted to float32 at once: bounds memory for huge tensors (e.g. a 256k-token embedding).
SLAB_ELEMENTS = 1 << 24


@dataclass
class ImportanceWeights:
    """An importance matrix as llama-quantize uses it: per tensor name, the mean squared activation
    of each input column (sums / count; n_mat * n_cols values for a stack of n_mat matrices)."""

    path: str                        # as given: it goes into the metadata
    weights: dict[str, np.ndarray]
    datasets: list[str]
    chunk_count: int

    def metadata(self) -> dict[str, MetadataValue]:
        """The quantize.imatrix.* keys llama-quantize appends."""
        out = {KEY_IMATRIX_FILE: MetadataValue(ValueType.STRING, _clip(self.path))}
        if self.datasets:
            out[KEY_IMATRIX_DATASET] = MetadataValue(ValueType.STRING, _clip(self.datasets[0]))
        out[KEY_IMATRIX_N_ENTRIES] = MetadataValue(ValueType.UINT32, len(self.weights))
        if self.chunk_count > 0:
            out[KEY_IMATRIX_N_CHUNKS] = MetadataValue(ValueType.UINT32, self.chunk_count)
        return out


def _clip(text: str) -> str:
    raw = text.encode("utf-8", "surrogateescape")[:IMATRIX_TEXT_BYTES]
    return raw.decode("utf-8", "surrogateescape")


def load_importance(path: str | os.PathLike, include: Sequence[str] = (),
                    exclude: Sequence[str] = ()) -> ImportanceWeights | None:
    """Read an importance matrix (GGUF or legacy .dat) into quantization weights, keeping the
    entries whose name contains an `include` string (if any are given) and dropping those that
    contain an `exclude` string. None when no entry is left: quantizing then runs as without."""
    if include and exclude:
        raise BadInputError("--include-weights and --exclude-weights cannot be used together")
    loaded = read_imatrix(path)
    if not loaded.is_legacy and not loaded.has_metadata:
        raise BadInputError(f"{path}: the importance matrix lacks its imatrix.datasets/chunk_count/"
                            f"chunk_size metadata")
    weights: dict[str, np.ndarray] = {}
    for name, entry in loaded.entries.items():
        if loaded.is_legacy:   # values are sum / count * ncall
            ncall = int(entry.counts[0]) if len(entry.counts) else 0
            weights[name] = entry.sums / np.float32(ncall) if ncall > 0 else entry.sums.copy()
            continue
        n_mat = len(entry.counts)
        per_mat = len(entry.sums) // n_mat
        w = np.ones(len(entry.sums), np.float32)
        for m in range(n_mat):   # a matrix that got no rows (an unused expert) weighs 1 everywhere
            if entry.counts[m] > 0:
                w[m * per_mat:(m + 1) * per_mat] = entry.sums[m * per_mat:(m + 1) * per_mat] / \
                    np.float32(entry.counts[m])
        weights[name] = w
    for pattern in exclude:
        weights = {n: w for n, w in weights.items() if pattern not in n}
    if include:
        weights = {n: w for n, w in weights.items() if any(p in n for p in include)}
    for name, w in weights.items():
        if not np.isfinite(w).all():
            raise BadInputError(f"{path}: the importance matrix holds non-finite values ('{name}')")
    if not weights:
        return None
    return ImportanceWeights(str(path), weights, loaded.datasets, loaded.chunk_count)


def quantized_metadata(metadata: dict[str, MetadataValue], mix: Mix,
                       importance: ImportanceWeights | None = None) -> dict[str, MetadataValue]:
    """The output's metadata, in llama-quantize's order (see the module docstring)."""
    appended = importance.metadata() if importance is not None else {}
    out = {k: v for k, v in metadata.items()
           if k not in SPLIT_KEYS and k not in (KEY_FILE_TYPE, KEY_QUANTIZATION_VERSION) and k not in appended}
    out[KEY_QUANTIZATION_VERSION] = MetadataValue(ValueType.UINT32, QUANTIZATION_VERSION)
    out[KEY_FILE_TYPE] = MetadataValue(ValueType.UINT32, int(mix.file_type))
    out.update(appended)
    return out


def output_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """GGUF writes ggml_n_dims dimensions: trailing 1s are dropped (a (256, 1) tensor becomes (256,))."""
    return tuple(shape[:n_dims(shape)]) if shape else (1,)


@dataclass
class TensorPlan:
    """One tensor of a quantize plan: the input tensor, the type chosen for it, the shape written."""

    info: TensorInfo
    choice: TypeChoice
    shape: tuple[int, ...]          # as written (GGUF order)
    importance: np.ndarray | None = None   # column weights (per matrix of a 3-D tensor), if converted with them

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def source(self) -> GGMLType:
        return self.info.type

    @property
    def target(self) -> GGMLType:
        return self.choice.target

    @property
    def converts(self) -> bool:
        """llama-quantize rewrites a tensor only when its type changes; otherwise bytes are copied."""
        return self.target != self.source

    @property
    def bytes_in(self) -> int:
        return self.info.n_bytes

    @property
    def bytes_out(self) -> int:
        return self.info.n_rows * TYPE_INFO[self.target].row_bytes(self.info.row_length)


@dataclass
class QuantizePlan:
    input: Path
    mix: Mix
    model: ModelFacts
    tensors: list[TensorPlan]
    metadata: dict[str, MetadataValue]
    n_fallback: int
    input_file_bytes: int
    importance: ImportanceWeights | None = None

    def writer(self, path: str | os.PathLike, force: bool = False) -> GGUFWriter:
        w = GGUFWriter(path, force=force)
        for key, mv in self.metadata.items():
            w.add(key, mv)
        for t in self.tensors:
            w.add_tensor_info(t.name, t.shape, t.target)
        return w

    @property
    def output_file_bytes(self) -> int:
        return self.writer(os.devnull, force=True).total_bytes

    @property
    def n_parameters(self) -> int:
        return sum(t.info.n_elements for t in self.tensors)


def plan_quantize(reader, mix: Mix, options: QuantizeOptions,
                  allow_requantize: bool = False, importance: ImportanceWeights | None = None) -> QuantizePlan:
    """Choose every tensor's type and check, before any work, that the job can be done.
    `reader`: a GGUFReader, or a source with the same interface (see convert/quantized.py)."""
    where = str(reader.path)
    model = ModelFacts.from_metadata(reader.get, where)
    by_name = {t.name: t for t in reader.tensors}
    planner = TypePlanner(model, mix, options, by_name, has_imatrix=importance is not None)
    tensors = []
    for name in llama_tensor_order(by_name):
        info = by_name[name]
        choice = planner.choose(name, info.shape, info.type)
        tensors.append(TensorPlan(info, choice, output_shape(info.shape)))
    plan = QuantizePlan(reader.path, mix, model, tensors, quantized_metadata(reader.metadata, mix, importance),
                        planner.n_fallback, reader.file_size, importance)
    check_plan(plan, allow_requantize)
    return plan


def _is_token_embedding(name: str) -> bool:
    return name in ("token_embd.weight", "per_layer_token_embd.weight")


def check_plan(plan: QuantizePlan, allow_requantize: bool) -> None:
    importance = plan.importance
    for t in plan.tensors:
        weights = importance.weights.get(t.name) if importance is not None and t.converts else None
        if weights is not None:
            n_cols = t.info.shape[0]
            n_mat = t.info.shape[2] if len(t.info.shape) > 2 else 1
            if len(weights) == n_cols * n_mat:
                t.importance = weights
            elif not _is_token_embedding(t.name):  # llama-quantize lets the embedding go without
                raise BadInputError(
                    f"{importance.path}: the importance matrix has {len(weights)} values for tensor "
                    f"'{t.name}', which needs {n_cols * n_mat} (an importance matrix of another model?)")
        if t.choice.needs_imatrix and importance is None:
            raise UnsupportedError(
                f"{plan.input}: tensor '{t.name}' would become {t.target.name}, which llama.cpp only "
                f"produces with an importance matrix: pass --imatrix FILE (see `llmcli imatrix`)")
        if t.choice.needs_imatrix and t.converts and t.importance is None:
            raise BadInputError(
                f"{importance.path}: no importance data for tensor '{t.name}', which becomes "
                f"{t.target.name} in {plan.mix.name}: a very low-bit type that needs it")
        if t.converts and t.target in WEIGHTS_ONLY_TYPES and t.importance is None:
            why = "the importance matrix has none for it" if importance else "no --imatrix was given"
            raise BadInputError(
                f"{plan.input}: tensor '{t.name}' would become {t.target.name}, which ggml cannot quantize "
                f"without importance data, and {why} (llama-quantize aborts): give it another type "
                f"(--token-embedding-type, --tensor-type)")
    for t in plan.tensors:
        if t.converts and is_quantized(t.source) and not allow_requantize:
            raise BadInputError(
                f"{plan.input}: tensor '{t.name}' is already quantized ({t.source.name}); quantizing "
                f"it again to {t.target.name} compounds the rounding errors - start from the F16/F32 "
                f"model, or pass --allow-requantize to do it anyway")
    missing = sorted({t.source.name for t in plan.tensors if t.converts and t.source not in registry.CODECS} |
                     {t.target.name for t in plan.tensors if t.converts
                      and t.target not in registry.quantizable_types()})
    if missing:
        raise UnsupportedError(f"{plan.input}: llmcli cannot convert tensors of type {', '.join(missing)} "
                               f"needed for {plan.mix.name}")


# --------------------------------------------------------------------------------------------------
# Doing it
# --------------------------------------------------------------------------------------------------


@dataclass
class TensorResult:
    name: str
    shape: tuple[int, ...]
    from_type: str
    to_type: str
    bytes: int
    bytes_in: int
    how: str
    rmse: float | None = None       # RMS error of the dequantized result / RMS of the input
    imatrix: bool = False           # quantized with importance weights

    def to_json(self) -> dict:
        d = {"name": self.name, "shape": list(self.shape), "from_type": self.from_type,
             "to_type": self.to_type, "bytes": self.bytes, "bytes_in": self.bytes_in, "how": self.how,
             "imatrix": self.imatrix}
        if self.rmse is not None:
            d["rmse"] = self.rmse
        return d


@dataclass
class QuantizeReport:
    input: str
    output: str | None
    type: str
    file_type: int
    dry_run: bool
    tensors: list[TensorResult]
    n_parameters: int
    n_fallback: int
    file_bytes_in: int
    file_bytes_out: int
    seconds: float = 0.0
    threads: int | None = None
    warnings: list[str] = field(default_factory=list)
    imatrix: dict | None = None     # the importance matrix used: file, entries, chunks, dataset
    size_choice: dict | None = None  # --max-size: the limit and every candidate's planned file size

    @property
    def bytes_in(self) -> int:
        return sum(t.bytes_in for t in self.tensors)

    @property
    def bytes_out(self) -> int:
        return sum(t.bytes for t in self.tensors)

    def to_json(self) -> dict:
        n = max(self.n_parameters, 1)
        return {
            "input": self.input, "output": self.output, "type": self.type, "file_type": self.file_type,
            "dry_run": self.dry_run, "threads": self.threads, "warnings": self.warnings,
            "imatrix": self.imatrix, "size_choice": self.size_choice,
            "tensors": [t.to_json() for t in self.tensors],
            "totals": {
                "n_tensors": len(self.tensors),
                "n_converted": sum(t.from_type != t.to_type for t in self.tensors),
                "n_fallback": self.n_fallback,
                "n_parameters": self.n_parameters,
                "tensor_bytes_in": self.bytes_in, "tensor_bytes_out": self.bytes_out,
                "bits_per_weight_in": 8.0 * self.bytes_in / n,
                "bits_per_weight_out": 8.0 * self.bytes_out / n,
                "file_bytes_in": self.file_bytes_in, "file_bytes_out": self.file_bytes_out,
                "seconds": self.seconds,
                "input_mb_per_s": (self.bytes_in / 1e6 / self.seconds) if self.seconds > 0 else None,
            },
        }


def decode_into(raw: np.ndarray, ggml_type: GGMLType, buffer: np.ndarray) -> np.ndarray:
    """(rows, row_bytes) of any readable type -> float32 (rows, row_length), written into the front
    of `buffer` (float32, at least that many values) and returned as a view of it: slab after slab
    reuses one buffer instead of faulting in a fresh 64 MB array each time. F32 rows are viewed in place."""
    if ggml_type == GGMLType.F32:
        return np.ascontiguousarray(raw).view(np.float32)
    info = TYPE_INFO[ggml_type]
    out = buffer[:raw.shape[0] * (raw.shape[1] // info.block_bytes * info.block_size)].reshape(raw.shape[0], -1)
    registry.get_codec(ggml_type).decoder(np.ascontiguousarray(raw), out)
    return out


class SlabBuffers:
    """The float32 buffers one run's slabs are decoded into (`decode_into`): a slab's input rows and,
    when the error is measured, its quantized rows decoded back. One pair for the whole run, grown
    when a slab needs more: fresh 64 MB arrays per tensor cost their page faults every time (on a
    1B f16 -> Q8_0, about as long as the decoding itself)."""

    def __init__(self) -> None:
        self.inputs = self.round_trip = np.empty(0, np.float32)

    def fit(self, n_values: int, measure: bool) -> None:
        if self.inputs.size < n_values:
            self.inputs = np.empty(n_values, np.float32)
        if measure and self.round_trip.size < n_values:
            self.round_trip = np.empty(n_values, np.float32)


@dataclass
class ErrorSums:
    """What a tensor's reported error is computed from: sum of (round trip - input)^2 and of input^2."""

    err2: float = 0.0
    ref2: float = 0.0


def convert_rows(raw: np.ndarray, source: GGMLType, target: GGMLType, where: str, buffers: SlabBuffers,
                 sums: ErrorSums | None = None, on_slab: Callable[[int, int], None] | None = None,
                 importance: np.ndarray | None = None, rows_per_matrix: int = 0) -> Iterator[np.ndarray]:
    """Rows of `source` bytes -> rows of `target` bytes, yielded slab by slab (the caller writes
    each; only one slab's rows are ever in memory, whatever the tensor's size).

    `buffers`: where slabs are decoded. `sums`: the error sums to add to (None: not measured).
    `on_slab(lo, hi)` is called once a slab's output has been taken, with the slab's byte range in
    `raw` (progress, and dropping the input pages it read). `importance`: column weights, one vector
    per `rows_per_matrix` rows (per expert of a 3-D tensor); slabs stop at those boundaries so each
    is quantized with its matrix's weights."""
    n_rows = raw.shape[0]
    if n_rows == 0:
        return
    row_length = raw.shape[1] // TYPE_INFO[source].block_bytes * TYPE_INFO[source].block_size
    slab = max(1, SLAB_ELEMENTS // max(row_length, 1))
    buffers.fit(min(n_rows, slab) * row_length, sums is not None)
    starts = list(range(0, n_rows, slab))
    if importance is not None:  # cut at every matrix boundary too
        starts = sorted(set(starts) | set(range(0, n_rows, rows_per_matrix)))
    for start, stop in zip(starts, starts[1:] + [n_rows]):
        weights = None
        if importance is not None:
            m = start // rows_per_matrix
            weights = importance[m * row_length:(m + 1) * row_length]
        x = decode_into(raw[start:stop], source, buffers.inputs)
        _, ref2 = square_sums(x, x)
        if not math.isfinite(ref2):  # (no float32 square overflows the float64 sum)
            bad = start + int(np.argwhere(~np.isfinite(x))[0][0])
            raise BadInputError(f"{where}: row {bad} holds NaN or infinite values; "
                                f"ggml cannot quantize it to a valid {target.name} block")
        q = registry.quantize(x, target, weights)
        if sums is not None:
            err2, _ = square_sums(x, decode_into(q, target, buffers.round_trip))
            sums.err2 += err2
            sums.ref2 += ref2
        yield q
        if on_slab is not None:
            on_slab(start * raw.shape[1], stop * raw.shape[1])


def relative_rmse(err2: float, ref2: float) -> float:
    if ref2 > 0:
        return math.sqrt(err2 / ref2)
    return 0.0 if err2 == 0 else math.inf


def _result(t: TensorPlan, rmse: float | None = None) -> TensorResult:
    return TensorResult(t.name, t.shape, t.source.name, t.target.name, t.bytes_out, t.bytes_in,
                        t.choice.how, rmse, t.importance is not None)


def set_threads(threads: int | None) -> int | None:
    """--threads: numba's worker count for the parallel kernels."""
    if threads is None:
        return None
    import numba

    limit = numba.config.NUMBA_NUM_THREADS
    if not 1 <= threads <= limit:
        raise BadInputError(f"--threads {threads}: must be between 1 and {limit} on this machine")
    numba.set_num_threads(threads)
    return threads


def _progress_bar(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
                disable=None if enabled else True, leave=False, dynamic_ncols=True)


def quantize_file(input_path: str | os.PathLike, output_path: str | os.PathLike | None, type_name: str | None,
                  options: QuantizeOptions | None = None, *, allow_requantize: bool = False,
                  dry_run: bool = False, threads: int | None = None, force: bool = False,
                  progress: bool = False, measure: bool = True,
                  on_tensor: Callable[[TensorResult], None] | None = None,
                  imatrix: str | os.PathLike | None = None, include_weights: Sequence[str] = (),
                  exclude_weights: Sequence[str] = (), max_size: int | None = None) -> QuantizeReport:
    """Quantize a GGUF file as `llama-quantize [options] IN OUT TYPE` would, byte for byte;
    `imatrix` (with --include-weights / --exclude-weights) as `llama-quantize --imatrix FILE`.
    With `max_size` (bytes) instead of a type: the most precise mix whose file fits."""
    if (include_weights or exclude_weights) and imatrix is None:
        raise BadInputError("--include-weights / --exclude-weights select entries of an importance "
                            "matrix: give one with --imatrix")
    importance = load_importance(imatrix, include_weights, exclude_weights) if imatrix is not None else None
    if (type_name is None) == (max_size is None):
        raise BadInputError("quantize: give a quantization type or a maximum file size (not both)")
    options = options or QuantizeOptions()
    mix = find_mix(type_name, has_imatrix=importance is not None, pure=options.pure) \
        if type_name is not None else None
    if not dry_run:
        if output_path is None:
            raise BadInputError("an output file is needed (or pass --dry-run)")
        check_output_path(output_path, force)
        if Path(output_path).exists() and Path(input_path).exists() and \
                os.path.samefile(input_path, output_path):
            raise BadInputError(f"{output_path}: is the input file; write the quantized model elsewhere")
    threads = set_threads(threads)
    with GGUFReader(input_path) as reader:
        size_choice = None
        if mix is None:
            mix, size_choice = mix_for_size(reader, max_size, options, importance)
        report = run_quantize(reader, None if dry_run else output_path, mix, options,
                              allow_requantize=allow_requantize, threads=threads, force=force,
                              progress=progress, measure=measure, on_tensor=on_tensor, importance=importance)
        report.size_choice = size_choice
        return report


def mix_for_size(source, max_size: int, options: QuantizeOptions,
                 importance: ImportanceWeights | None = None) -> tuple[Mix, dict]:
    """The most precise quantized mix (MIXES_BY_PRECISION) whose planned file is at most
    `max_size` bytes, and {"max_size", "sizes": {mix: planned file bytes}} of those tried."""
    sizes: dict[str, int] = {}
    for name in MIXES_BY_PRECISION:
        if name in IMATRIX_ONLY_MIXES and importance is None:
            continue
        mix = find_mix(name, has_imatrix=importance is not None)
        sizes[name] = plan_quantize(source, mix, options, True, importance).output_file_bytes
        if sizes[name] <= max_size:
            return mix, {"max_size": max_size, "sizes": sizes}
    smallest = min(sizes, key=sizes.get)
    raise BadInputError(f"{source.path}: no quantization fits in {max_size:,} bytes (the smallest, "
                        f"{smallest}, needs {sizes[smallest]:,})")


def run_quantize(source, output_path: str | os.PathLike | None, mix: Mix, options: QuantizeOptions, *,
                 allow_requantize: bool = False, threads: int | None = None, force: bool = False,
                 progress: bool = False, measure: bool = True,
                 on_tensor: Callable[[TensorResult], None] | None = None,
                 importance: ImportanceWeights | None = None) -> QuantizeReport:
    """Plan and (unless `output_path` is None: a dry run) write. `source` is a GGUFReader or
    anything with the same `path`, `metadata`, `get`, `tensors`, `tensor_bytes` and `file_size`."""
    dry_run = output_path is None
    # like llama-quantize, a dry run shows the plan of a quantized input without --allow-requantize
    plan = plan_quantize(source, mix, options, allow_requantize or dry_run, importance)
    report = QuantizeReport(str(source.path), None if dry_run else str(output_path), mix.name,
                            int(mix.file_type), dry_run, [], plan.n_parameters, plan.n_fallback,
                            source.file_size, plan.output_file_bytes, threads=threads)
    if importance is not None:
        report.imatrix = {"file": importance.path, "entries": len(importance.weights),
                          "chunks": importance.chunk_count, "datasets": importance.datasets,
                          "tensors_weighted": sum(t.importance is not None for t in plan.tensors)}
    if dry_run:
        report.tensors = [_result(t) for t in plan.tensors]
        if not allow_requantize and any(t.converts and is_quantized(t.source) for t in plan.tensors):
            report.warnings.append("the input is already quantized: the real run needs --allow-requantize")
        return report
    started = time.perf_counter()
    writer = plan.writer(output_path, force=force)
    bar = _progress_bar(sum(t.bytes_in for t in plan.tensors), progress)
    buffers = SlabBuffers()
    try:
        with writer.open():
            for t in plan.tensors:
                bar.set_postfix_str(t.name, refresh=False)
                result = write_tensor(source, writer, t, buffers, measure, on_slab=bar.update)
                report.tensors.append(result)
                if not t.converts:
                    bar.update(t.bytes_in)
                if on_tensor is not None:
                    on_tensor(result)
    finally:
        bar.close()
    report.seconds = time.perf_counter() - started
    return report


def write_tensor(reader, writer: GGUFWriter, t: TensorPlan, buffers: SlabBuffers, measure: bool = True,
                 on_slab: Callable[[int], None] | None = None) -> TensorResult:
    """Write tensor t (converted slab by slab, or copied) and drop its mapped input pages from this
    process as they are used: a 7B f16 input otherwise stayed resident as it was read (peak RSS
    13.6 GB, the whole file), and a big tensor's input pages and output held until it was written
    made a Qwen2.5-7B-shaped Q4_K_M peak at 1.96 GB (now 0.38). `on_slab(n)`: n more input bytes are done (progress)."""
    raw = reader.tensor_bytes(t.info)
    release = getattr(reader, "release_pages", None)  # (a source other than a GGUFReader may not map)
    if not t.converts:
        writer.write_tensor_data(t.name, raw)
        result = _result(t)
    else:
        def slab_done(lo: int, hi: int) -> None:
            if release is not None:
                release(t.info, lo, hi)
            if on_slab is not None:
                on_slab(hi - lo)

        sums = ErrorSums() if measure else None
        writer.write_tensor_parts(t.name, convert_rows(
            raw, t.source, t.target, f"{reader.path}: tensor '{t.name}'", buffers, sums, slab_done, t.importance,
            t.info.shape[1] if len(t.info.shape) > 1 else 1))
        result = _result(t, relative_rmse(sums.err2, sums.ref2) if measure else None)
    if release is not None:
        release(t.info, 0, t.info.n_bytes)
    return result
