"""`llmcli convert DIR --outtype Q4_K_M`: Hugging Face checkpoint -> quantized GGUF, no f16 file in between.

The bridge between the two pipelines lives here, on the convert side: convert builds on quantize's
pieces (plan, mixes, row conversion), never the other way round.

    checkpoint ─► ConvertedSource: the f16 GGUF `convert --outtype f16` would write, as a reader
              ─► quantize.run_quantize: plan with llama-quantize's mix, quantize, stream, atomic rename
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from ..atomic import check_output_path
from ..errors import BadInputError
from ..gguf import GGUFWriter
from ..gguf.constants import TYPE_INFO
from ..gguf.reader import MetadataValue, TensorInfo
from ..quantize import mix_for_size, run_quantize, set_threads
from ..quants.mixes import SUPPORTED_MIXES, QuantizeOptions, find_mix
from .checkpoint import Checkpoint
from .pipeline import ConvertSummary, default_output, encode, prepare


class ConvertedSource:
    """The f16 GGUF `llmcli convert --outtype f16` would write, never written: the header is built
    up front and each tensor's bytes are made (loaded, transformed, encoded) when asked for. Being
    exactly those bytes, quantizing from it gives the same file as convert + quantize."""

    def __init__(self, model_dir: str | os.PathLike, pre: str | None = None):
        self.path = Path(model_dir)
        ckpt = Checkpoint(self.path)
        self.hf_architecture = ckpt.architecture
        _conv, planned, kv, counts, _file_type = prepare(ckpt, self.path, "f16", pre)
        self.n_parameters = counts[0]
        self.metadata: dict[str, MetadataValue] = dict(kv.entries)
        self._planned = {p.tensor.name: p for p in planned}
        self.tensors = [TensorInfo(p.tensor.name, p.tensor.gguf_shape, p.type, 0, TYPE_INFO[p.type])
                        for p in planned]
        header = GGUFWriter(os.devnull, force=True)
        for key, mv in self.metadata.items():
            header.add(key, mv)
        header.add_tensor_infos_from(self.tensors)
        self.file_size = header.total_bytes

    def get(self, key: str, default=None):
        mv = self.metadata.get(key)
        return default if mv is None else mv.to_python()

    def tensor_bytes(self, info: TensorInfo) -> np.ndarray:
        p = self._planned[info.name]
        data = p.tensor.load()
        if tuple(data.shape) != p.tensor.shape:
            raise BadInputError(f"{self.path}: tensor '{info.name}' has shape {list(data.shape)}, "
                                f"expected {list(p.tensor.shape)}")
        return np.ascontiguousarray(encode(data, p.type)).view(np.uint8).reshape(info.n_rows, info.row_bytes)


def convert_quantized(model_dir: str | os.PathLike, output_path: str | os.PathLike | None, type_name: str | None,
                      options: QuantizeOptions | None = None, *, pre: str | None = None, force: bool = False,
                      threads: int | None = None, progress: bool = False, measure: bool = False,
                      max_size: int | None = None):
    """`llmcli convert DIR --outtype Q4_K_M`: one streaming pass, byte-equal to `convert --outtype f16`
    followed by `quantize --type Q4_K_M`; with `max_size` (bytes) instead of a type, the most precise
    mix whose file fits (as `quantize --max-size`). Returns convert's ConvertSummary."""
    started = time.perf_counter()
    options = options or QuantizeOptions()
    mix = None
    if type_name is not None:
        try:
            mix = find_mix(type_name)
        except BadInputError:
            raise BadInputError(f"unknown --outtype '{type_name}': f32, f16, bf16, q8_0, auto, or a quantization "
                                f"type ({', '.join(SUPPORTED_MIXES)})") from None
    elif max_size is None:
        raise BadInputError("convert: give a quantization type or a maximum file size")
    if output_path is not None:
        check_output_path(output_path, force)  # before the checkpoint is read
    source = ConvertedSource(model_dir, pre)
    if mix is None:
        mix, _ = mix_for_size(source, max_size, options)
    out = Path(output_path) if output_path is not None else default_output(Path(model_dir), mix.name.lower())
    if output_path is None:
        check_output_path(out, force)
    threads = set_threads(threads)
    report = run_quantize(source, out, mix, options, threads=threads, force=force,
                          progress=progress, measure=measure)
    counts: dict[str, int] = {}
    for t in report.tensors:
        counts[t.to_type] = counts.get(t.to_type, 0) + 1
    return ConvertSummary(output=str(out), architecture=str(source.get("general.architecture")),
                          hf_architecture=source.hf_architecture, outtype=mix.name, file_type=int(mix.file_type),
                          tensors=len(report.tensors), parameters=source.n_parameters,
                          bytes=out.stat().st_size, seconds=round(time.perf_counter() - started, 3),
                          type_counts=counts)
