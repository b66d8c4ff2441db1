"""The conversion run: plan the tensors, build the metadata, stream the GGUF.

    checkpoint (config.json + shard headers)
        -> architecture converter: ordered list of OutputTensor (nothing loaded)
        -> a GGML type per tensor (llama.cpp's rules, or a TensorQuantizer's choice)
        -> metadata (general.*, hyperparameters, tokenizer) in llama.cpp's key order
        -> GGUFWriter: header, then one tensor at a time: load -> transform -> encode -> write

Memory: one output tensor (its source array, the transformed copy and the encoded bytes) at a time;
a tensor that can be read by rows only ever holds one slice of them (`encode_by_rows`).
"""

from __future__ import annotations

import os
import sys
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Protocol

import numpy as np

from ..atomic import check_output_path
from ..errors import BadInputError
from ..gguf import GGUFWriter
from ..gguf.constants import QUANTIZATION_VERSION, TYPE_INFO, FileType, GGMLType
from .base import ArchConverter, OutputTensor
from .checkpoint import Checkpoint
from .metadata import KV, add_general, parameter_counts
from .registry import converter_for

# --outtype -> (GGML type of the big matrices, general.file_type)
OUTTYPES: dict[str, tuple[GGMLType, FileType]] = {
    "f32": (GGMLType.F32, FileType.ALL_F32),
    "f16": (GGMLType.F16, FileType.MOSTLY_F16),
    "bf16": (GGMLType.BF16, FileType.MOSTLY_BF16),
    "q8_0": (GGMLType.Q8_0, FileType.MOSTLY_Q8_0),
}
OUTTYPE_CHOICES = [*OUTTYPES, "auto"]

# GGUF tensors llama.cpp's converter keeps in F32 whatever the outtype (besides 1-D tensors,
# *_norm.weight and anything not ending in .weight): routers, position/type embeddings, convs.
ALWAYS_F32 = {
    "ffn_gate_inp", "ffn_gate_inp_shexp", "position_embd", "token_types", "ssm_conv1d", "shortconv.conv",
    "time_mix_first", "time_mix_w1", "time_mix_w2", "time_mix_decay_w1", "time_mix_decay_w2",
    "time_mix_lerp_fused", "posnet.norm1", "posnet.norm2", "altup_correct_coef", "altup_predict_coef",
    "ssm_conv1d_q", "ssm_conv1d_k", "ssm_conv1d_v", "indexer.proj",
}


def _base_name(gguf_name: str) -> str:
    """'blk.3.ffn_gate_inp.weight' -> 'ffn_gate_inp'."""
    parts = gguf_name.split(".")
    if parts[0] == "blk" and len(parts) > 2:
        parts = parts[2:]
    return ".".join(parts[:-1])


def float_type_for(name: str, n_dims: int, main_type: GGMLType) -> GGMLType:
    """llama.cpp's converter rule: which type a tensor gets for a given --outtype."""
    if n_dims <= 1 or name.endswith("_norm.weight"):
        return GGMLType.F32
    if _base_name(name) in ALWAYS_F32 or not name.endswith(".weight"):
        return GGMLType.F32
    return main_type


# -- encoders: float32/float16 array -> the bytes of one GGML type -------------------------------


def encode_f32(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float32, copy=False)


def encode_f16(a: np.ndarray) -> np.ndarray:
    """numpy's astype(float16) (round to nearest even, what the converter does), done by a kernel."""
    if a.dtype == np.float16:
        return a
    from .kernels import f32_to_f16

    return f32_to_f16(a)


def encode_bf16(a: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits: NaNs made quiet, round to nearest even (ggml's fp32_to_bf16)."""
    n = a.astype(np.float32, copy=False).view(np.uint32)
    n = np.where((n & 0x7FFFFFFF) > 0x7F800000, (n & np.uint32(0xFFFF0000)) | np.uint32(64 << 16), n)
    return ((n.astype(np.uint64) + (0x7FFF + ((n >> 16) & 1))) >> 16).astype(np.uint16)


def encode_q8_0(a: np.ndarray) -> np.ndarray:
    """Q8_0 as convert_hf_to_gguf.py writes it (a numba kernel equal to `encode_q8_0_numpy`)."""
    from .kernels import q8_0_blocks

    return q8_0_blocks(a, encode_q8_0_numpy)


def encode_q8_0_numpy(a: np.ndarray) -> np.ndarray:
    """Q8_0 as gguf-py's numpy quantizer computes it (what convert_hf_to_gguf.py writes).

    Block of 32 values -> [ d: f16 | q[32]: int8 ], d = max|x| / 127, q = round-half-away(x / d)
    computed as x * (1/d) in float32 (ggml's C reference agrees except at rare rounding ties).
    """
    blocks = a.astype(np.float32, copy=False).reshape(-1, 32)
    d = np.abs(blocks).max(axis=1, keepdims=True) / np.float32(127)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):  # inf/NaN as numpy gives them
        inv = np.where(d == 0, np.float32(0), np.float32(1) / d)
        x = blocks * inv
        mag = np.abs(x)
        floored = np.floor(mag)
        q = np.sign(x) * (floored + np.floor(2 * (mag - floored)))
    out = np.empty((blocks.shape[0], 34), dtype=np.uint8)
    with np.errstate(over="ignore", invalid="ignore"):
        out[:, :2] = d.astype(np.float16).view(np.uint8)
        out[:, 2:] = q.astype(np.int8).view(np.uint8)
    return out


ENCODERS: dict[GGMLType, Callable[[np.ndarray], np.ndarray]] = {
    GGMLType.F32: encode_f32,
    GGMLType.F16: encode_f16,
    GGMLType.BF16: encode_bf16,
    GGMLType.Q8_0: encode_q8_0,
}

FLOAT_TYPES = (GGMLType.F32, GGMLType.F16, GGMLType.BF16)
_ROWS_PER_CHUNK_BYTES = 16 * 1024 * 1024  # float32 bytes per slice: keeps temporaries small
# Slices being read while one is encoded (`encode_by_rows`): the reads are exactly their bytes (no
# kernel readahead, checkpoint.SourceTensor), so two in flight keep the disk busy. Qwen1.5-MoE-shaped
# bf16 -> f16, page cache dropped, before the float16 encoder vectorised: one 61.1 s, two 54.5 s,
# three 53.3 s (with it, two: 46.9-49.9 s).
READ_AHEAD_SLICES = 2


def encode(a: np.ndarray, ggml_type: GGMLType) -> np.ndarray:
    """Encode row chunks into one output buffer, so temporaries stay small for big tensors."""
    enc = ENCODERS[ggml_type]
    rows = a.reshape(-1, a.shape[-1]) if a.ndim else a.reshape(1, 1)
    row_bytes = TYPE_INFO[ggml_type].row_bytes(rows.shape[1])
    out = np.empty((rows.shape[0], row_bytes), dtype=np.uint8)
    step = max(1, _ROWS_PER_CHUNK_BYTES // max(1, rows.shape[1] * 4))
    for i in range(0, rows.shape[0], step):
        out[i:i + step] = enc(rows[i:i + step]).reshape(min(step, rows.shape[0] - i), -1).view(np.uint8)
    return out


def encode_by_rows(t: OutputTensor, ggml_type: GGMLType) -> Iterator[np.ndarray]:
    """Encode a tensor slice by slice of its rows (`OutputTensor.load_rows`), yielding each slice's bytes:
    memory = 1 + READ_AHEAD_SLICES slices, whatever the tensor's size (a 152064 x 3584 embedding's
    f16 bytes are 1 GB). The next slices are read on other threads while this one is encoded and
    written (file reads, numpy's widening and the encoders release the GIL), so the second core
    takes the reading and widening."""
    n_rows, row_len = int(np.prod(t.shape[:-1], dtype=np.int64)), t.shape[-1]
    step = max(1, _ROWS_PER_CHUNK_BYTES // 2 // max(1, row_len * 4))
    slices = [(i, min(n_rows, i + step)) for i in range(0, n_rows, step)]
    with ThreadPoolExecutor(READ_AHEAD_SLICES) as reader:
        pending = deque(reader.submit(t.load_rows, *s) for s in slices[:READ_AHEAD_SLICES])
        for k, (i, j) in enumerate(slices):
            rows = pending.popleft().result()
            if k + READ_AHEAD_SLICES < len(slices):
                pending.append(reader.submit(t.load_rows, *slices[k + READ_AHEAD_SLICES]))
            if rows.shape != (j - i, row_len):
                raise BadInputError(f"tensor '{t.name}': rows {i}..{j} have shape {list(rows.shape)}")
            yield encode(rows, ggml_type)


# -- the quantization hook ------------------------------------------------------------------------


class TensorQuantizer(Protocol):
    """Plug-in for converting straight to other GGML types (e.g. a Q4_K_M mix).

    A GGUF header lists every tensor's type and offset before any data, so the type is chosen
    first, from the name and shape only (`choose_type`), and the bytes are produced later, one
    tensor at a time (`quantize`). Tensors llama.cpp always keeps F32 (norms, biases, routers)
    are not offered.
    """

    file_type: int  # general.file_type of the result

    def choose_type(self, name: str, gguf_shape: tuple[int, ...], default: GGMLType) -> GGMLType: ...

    def quantize(self, name: str, rows: np.ndarray, ggml_type: GGMLType) -> bytes | np.ndarray:
        """`rows` float32 (n_rows, row_length) -> the tensor's bytes in `ggml_type`."""
        ...


# -- the run --------------------------------------------------------------------------------------


@dataclass
class TypedTensor:
    """A tensor the converter will write, with the GGML type chosen for it."""

    tensor: OutputTensor
    type: GGMLType


@dataclass
class ConvertSummary:
    output: str
    architecture: str
    hf_architecture: str
    outtype: str
    file_type: int
    tensors: int
    parameters: int
    bytes: int
    seconds: float
    type_counts: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def resolve_outtype(ckpt: Checkpoint, outtype: str) -> str:
    """`auto` -> bf16 when the first matrix is stored bf16, else f16 (llama.cpp's heuristic)."""
    if outtype != "auto":
        if outtype not in OUTTYPES:
            raise BadInputError(f"unknown --outtype '{outtype}', choose one of {', '.join(OUTTYPE_CHOICES)}")
        return outtype
    for t in ckpt.tensors:
        if len(t.shape) < 2:
            continue
        if t.dtype == "BF16":
            return "bf16"
        if t.dtype == "F16":
            return "f16"
    return "f16"


def known_pre_tokenizers() -> set[str]:
    """Names llama.cpp's hash table can produce, plus `default` (SentencePiece vocabularies)."""
    from ..vocab.bpe_hashes import PRE_TOKENIZER_BY_HASH

    return set(PRE_TOKENIZER_BY_HASH.values()) | {"default"}


def default_output(model_dir: Path, outtype: str) -> Path:
    name = model_dir.name if model_dir.name not in ("", ".", "..") else model_dir.resolve().name
    return Path(f"./{name}-{outtype}.gguf")


def convert(model_dir: str | os.PathLike, output: str | os.PathLike | None = None, *, outtype: str = "f16",
            pre: str | None = None, force: bool = False, quantizer: TensorQuantizer | None = None,
            progress: bool = False) -> ConvertSummary:
    """Convert a Hugging Face checkpoint directory to GGUF as llama.cpp's converter would."""
    start = time.perf_counter()
    model_dir = Path(model_dir)
    ckpt = Checkpoint(model_dir)
    outtype = resolve_outtype(ckpt, outtype)
    out_path = Path(output) if output is not None else default_output(model_dir, outtype)
    check_output_path(out_path, force)
    if pre is not None and pre not in known_pre_tokenizers():
        raise BadInputError(f"--pre {pre}: unknown pre-tokenizer; one of: {', '.join(sorted(known_pre_tokenizers()))}")
    conv, planned, kv, counts, file_type = prepare(ckpt, model_dir, outtype, pre, quantizer)

    writer = GGUFWriter(out_path, force=force)
    for key, mv in kv.entries.items():
        writer.add(key, mv)
    for p in planned:
        writer.add_tensor_info(p.tensor.name, p.tensor.gguf_shape, p.type)
    _write(writer, planned, quantizer, progress)

    type_counts: dict[str, int] = {}
    for p in planned:
        type_counts[p.type.name] = type_counts.get(p.type.name, 0) + 1
    return ConvertSummary(output=str(out_path), architecture=conv.gguf_arch, hf_architecture=ckpt.architecture,
                          outtype=outtype, file_type=file_type, tensors=len(planned), parameters=counts[0],
                          bytes=out_path.stat().st_size, seconds=round(time.perf_counter() - start, 3),
                          type_counts=type_counts)


def prepare(ckpt: Checkpoint, model_dir: Path, outtype: str, pre: str | None = None,
            quantizer: TensorQuantizer | None = None) -> tuple[ArchConverter, list[TypedTensor], KV, tuple, int]:
    """Everything before the data: the converter, each tensor's type, the metadata (in llama.cpp's
    order), the parameter counts and the file type. `llmcli convert --outtype Q4_K_M` streams from this too."""
    conv_cls = converter_for(ckpt.architecture, ckpt.config_path)
    conv: ArchConverter = conv_cls(ckpt, pre=pre)
    conv.require_tokenizer()

    main_type, file_type = OUTTYPES[outtype]
    file_type = int(quantizer.file_type) if quantizer is not None else int(file_type)
    planned = [TypedTensor(t, _choose_type(t, main_type, quantizer)) for t in conv.plan()]
    if not planned:
        raise BadInputError(f"{model_dir}: no tensors to convert")

    kv = KV(conv.gguf_arch)
    kv.string("general.architecture", conv.gguf_arch)
    for key, value in conv.early_keys:
        kv.a_f32(key, value)
    counts = parameter_counts((p.tensor.name, p.tensor.shape) for p in planned)
    add_general(kv, model_dir, ckpt.config, *counts)
    conv.set_hparams(kv, file_type)
    kv.u32("general.quantization_version", QUANTIZATION_VERSION)
    conv.set_vocab(kv)
    return conv, planned, kv, counts, file_type


def _choose_type(t: OutputTensor, main_type: GGMLType, quantizer: TensorQuantizer | None) -> GGMLType:
    chosen = float_type_for(t.name, len(t.shape), main_type)
    if quantizer is not None and chosen != GGMLType.F32:
        chosen = quantizer.choose_type(t.name, t.gguf_shape, chosen)
    if t.shape and t.shape[-1] % TYPE_INFO[chosen].block_size:
        chosen = GGMLType.F16  # llama.cpp falls back to F16 when rows do not split into blocks
    return chosen


def _write(writer: GGUFWriter, planned: list[TypedTensor], quantizer: TensorQuantizer | None,
           progress: bool) -> None:
    from tqdm import tqdm

    total = sum(p.tensor.source_bytes for p in planned)
    with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr, disable=not progress,
              desc="converting", leave=False) as bar, writer.open():
        for p in planned:
            # a quantizer's own types go to the quantizer (its Q8_0 may be ggml's, not gguf-py's)
            hooked = quantizer is not None and p.type not in FLOAT_TYPES
            if p.tensor.load_rows is not None and not hooked and p.type in ENCODERS:
                writer.write_tensor_parts(p.tensor.name, encode_by_rows(p.tensor, p.type))
                bar.update(p.tensor.source_bytes)
                continue
            data = p.tensor.load()
            if tuple(data.shape) != p.tensor.shape:
                raise BadInputError(f"tensor '{p.tensor.name}': got shape {list(data.shape)}, "
                                    f"expected {list(p.tensor.shape)}")
            if hooked:
                rows = data.astype(np.float32, copy=False).reshape(-1, data.shape[-1])
                encoded = quantizer.quantize(p.tensor.name, rows, p.type)
            elif p.type in ENCODERS:
                encoded = encode(data, p.type)
            else:
                raise BadInputError(f"tensor '{p.tensor.name}': no encoder for {p.type.name}")
            del data
            writer.write_tensor_data(p.tensor.name, encoded)
            del encoded
            bar.update(p.tensor.source_bytes)
