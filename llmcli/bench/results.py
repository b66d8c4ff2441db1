"""A measured test and its statistics, named as llama-bench names them where the meaning is the same."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from .spec import BenchTest

# llama-bench's fields we fill (same names, same meaning), then ours.
LLAMA_BENCH_FIELDS = [
    "build_commit", "build_number", "cpu_info", "gpu_info", "backends", "model_filename", "model_type",
    "model_size", "model_n_params", "n_batch", "n_ubatch", "n_threads", "type_k", "type_v",
    "n_gpu_layers", "use_mmap", "embeddings", "n_prompt", "n_gen", "n_depth", "test_time",
    "avg_ns", "stddev_ns", "avg_ts", "stddev_ts",
]
LLMCLI_FIELDS = [
    "test", "n_ctx", "model_arch", "model_file_type", "model_type_mix", "peak_rss_bytes",
    "kv_cache_bytes", "kv_cache_bytes_k", "kv_cache_bytes_v", "compile_s", "warmup", "llmcli_version", "python_version", "numpy_version",
    "numba_version", "cpu_flags", "threads_auto", "threading_layer", "prompt_activations",
]
ARRAY_FIELDS = ["samples_ns", "samples_ts"]
ALL_FIELDS = LLAMA_BENCH_FIELDS + LLMCLI_FIELDS + ARRAY_FIELDS


@dataclass
class ModelInfo:
    filename: str
    arch: str
    type_desc: str  # llama-bench's model_type, e.g. "gemma3 270M Q4_K - Medium"
    size: int  # bytes of tensor data
    n_params: int
    file_type: str
    type_mix: dict[str, int]


@dataclass
class BenchResult:
    test: BenchTest
    model: ModelInfo
    samples_ns: list[int]
    test_time: str
    peak_rss_bytes: int
    kv_cache: dict  # Transformer.kv_memory(): one sequence's keys and values, of the test's types
    compile_s: float
    warmup: bool
    environment: dict[str, Any] = field(default_factory=dict)
    threading_layer: str = ""  # numba's, after the test ran (engine.threads.threading_layer)
    prompt_activations: str = ""  # how prompts were computed (engine.prompt_activations: int8-gemm, float, int8)

    @property
    def n_tokens(self) -> int:
        return self.test.n_prompt + self.test.n_gen

    @property
    def samples_ts(self) -> list[float]:
        return [self.n_tokens * 1e9 / ns for ns in self.samples_ns]

    @property
    def avg_ts(self) -> float:
        return statistics.fmean(self.samples_ts)

    @property
    def stddev_ts(self) -> float:
        ts = self.samples_ts
        return statistics.stdev(ts) if len(ts) > 1 else 0.0

    def to_dict(self) -> dict[str, Any]:
        env = self.environment
        ns = self.samples_ns
        t = self.test
        row = {
            "build_commit": env.get("git_commit", ""),
            "build_number": 0,
            "cpu_info": env.get("cpu_info", ""),
            "gpu_info": "",
            "backends": "CPU (numba)",
            "model_filename": self.model.filename,
            "model_type": self.model.type_desc,
            "model_size": self.model.size,
            "model_n_params": self.model.n_params,
            "n_batch": t.n_batch,
            "n_ubatch": t.n_batch,
            "n_threads": t.n_threads,
            "type_k": t.type_k,
            "type_v": t.type_v,
            "n_gpu_layers": 0,
            "use_mmap": True,
            "embeddings": False,
            "n_prompt": t.n_prompt,
            "n_gen": t.n_gen,
            "n_depth": t.n_depth,
            "test_time": self.test_time,
            "avg_ns": int(statistics.fmean(ns)),
            "stddev_ns": int(statistics.stdev(ns)) if len(ns) > 1 else 0,
            "avg_ts": self.avg_ts,
            "stddev_ts": self.stddev_ts,
            "test": t.name,
            "n_ctx": t.n_ctx,
            "model_arch": self.model.arch,
            "model_file_type": self.model.file_type,
            "model_type_mix": dict(self.model.type_mix),
            "peak_rss_bytes": self.peak_rss_bytes,
            "kv_cache_bytes": self.kv_cache["bytes_per_sequence"],
            "kv_cache_bytes_k": self.kv_cache["bytes_k"],
            "kv_cache_bytes_v": self.kv_cache["bytes_v"],
            "compile_s": round(self.compile_s, 3),
            "warmup": self.warmup,
            "llmcli_version": env.get("llmcli_version", ""),
            "python_version": env.get("python_version", ""),
            "numpy_version": env.get("numpy_version", ""),
            "numba_version": env.get("numba_version", ""),
            "cpu_flags": env.get("cpu_flags", ""),
            "threads_auto": t.auto_threads,
            "threading_layer": self.threading_layer,
            "prompt_activations": self.prompt_activations,
            "samples_ns": list(ns),
            "samples_ts": self.samples_ts,
        }
        return row
