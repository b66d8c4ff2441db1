"""Throughput of `llmcli quantize` per TYPE on a synthetic f16 model (default ~250M parameters).

    /work/venv/bin/python scripts/bench_quantize.py [--params 250e6] [--types Q4_0,Q4_K_M] [--threads 2]
                                                   [--model PATH] [--json OUT.json]

The model is a Llama-shaped f16 GGUF with random N(0, 0.02) weights (hidden 1024, FFN 4096, GQA 4,
vocab 32000, as many layers as the parameter budget allows), written once to --model (default: a
temporary file). Every TYPE is first run on a tiny model of the same layout, so numba's compile /
cache loading is not timed. Figures: wall time of the whole quantize (read, convert, write), input
MB/s (f16 bytes read per second) and millions of parameters per second. Without the per-tensor error
measurement (`measure=False`), which `llmcli quantize` does by default and which costs one extra
dequantization per tensor.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from llmcli.gguf import GGUFWriter
from llmcli.gguf.constants import GGMLType
from llmcli.quantize import quantize_file
from llmcli.quants.mixes import SUPPORTED_MIXES

ALIASES = {"Q3_K", "Q4_K", "Q5_K"}


def layout(n_layer: int, hidden: int = 1024, ffn: int = 4096, n_head: int = 16, n_head_kv: int = 4,
           vocab: int = 32000) -> list[tuple[str, tuple[int, ...], GGMLType]]:
    kv_dim = hidden // n_head * n_head_kv
    tensors = [("token_embd.weight", (hidden, vocab), GGMLType.F16),
               ("output_norm.weight", (hidden,), GGMLType.F32),
               ("output.weight", (hidden, vocab), GGMLType.F16)]
    for i in range(n_layer):
        tensors += [(f"blk.{i}.attn_norm.weight", (hidden,), GGMLType.F32),
                    (f"blk.{i}.attn_q.weight", (hidden, hidden), GGMLType.F16),
                    (f"blk.{i}.attn_k.weight", (hidden, kv_dim), GGMLType.F16),
                    (f"blk.{i}.attn_v.weight", (hidden, kv_dim), GGMLType.F16),
                    (f"blk.{i}.attn_output.weight", (hidden, hidden), GGMLType.F16),
                    (f"blk.{i}.ffn_norm.weight", (hidden,), GGMLType.F32),
                    (f"blk.{i}.ffn_gate.weight", (hidden, ffn), GGMLType.F16),
                    (f"blk.{i}.ffn_up.weight", (hidden, ffn), GGMLType.F16),
                    (f"blk.{i}.ffn_down.weight", (ffn, hidden), GGMLType.F16)]
    return tensors


def n_params(tensors) -> int:
    return sum(int(np.prod(shape)) for _, shape, _ in tensors)


def write_model(path: Path, tensors, n_layer: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    w = GGUFWriter(path, force=True)
    w.add_string("general.architecture", "llama")
    w.add_string("general.name", "bench")
    for key, value in [("block_count", n_layer), ("context_length", 2048), ("embedding_length", 1024),
                       ("feed_forward_length", 4096), ("attention.head_count", 16),
                       ("attention.head_count_kv", 4)]:
        w.add_uint32(f"llama.{key}", value)
    w.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    w.add_uint32("general.file_type", 1)
    for name, shape, t in tensors:
        w.add_tensor_info(name, shape, t)
    with w.open():
        for name, shape, t in tensors:
            numpy_shape = tuple(reversed(shape))
            if t == GGMLType.F32:
                data = np.ones(numpy_shape, np.float32)
            else:
                data = (rng.standard_normal(numpy_shape, dtype=np.float32) * 0.02).astype(np.float16)
            w.write_tensor_data(name, data)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--params", type=float, default=250e6)
    ap.add_argument("--types", default=",".join(t for t in SUPPORTED_MIXES if t not in ALIASES))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", type=Path, help="where to keep the synthetic f16 model (reused if present)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()

    per_layer = n_params(layout(1)) - n_params(layout(0))
    n_layer = max(1, round((args.params - n_params(layout(0))) / per_layer))
    tensors = layout(n_layer)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = args.model or tmp / "bench-f16.gguf"
        if not model.exists():
            t0 = time.perf_counter()
            write_model(model, tensors, n_layer)
            print(f"wrote {model}: {n_params(tensors) / 1e6:.0f}M parameters, {n_layer} layers, "
                  f"{model.stat().st_size / 1e6:.0f} MB in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        tiny = tmp / "tiny-f16.gguf"
        write_model(tiny, layout(1, hidden=256, ffn=512, vocab=512), 1)
        results = []
        print(f"{'type':8} {'seconds':>8} {'input MB/s':>11} {'Mparam/s':>9} {'out MB':>8}")
        for type_name in args.types.split(","):
            quantize_file(tiny, tmp / "tiny-out.gguf", type_name, threads=args.threads, force=True, measure=False)
            out = tmp / "out.gguf"
            t0 = time.perf_counter()
            report = quantize_file(model, out, type_name, threads=args.threads, force=True, measure=False)
            seconds = time.perf_counter() - t0
            row = {"type": type_name, "threads": args.threads, "parameters": report.n_parameters,
                   "seconds": round(seconds, 2), "input_mb": round(report.bytes_in / 1e6, 1),
                   "input_mb_per_s": round(report.bytes_in / 1e6 / seconds, 1),
                   "mparams_per_s": round(report.n_parameters / 1e6 / seconds, 1),
                   "output_mb": round(out.stat().st_size / 1e6, 1)}
            results.append(row)
            print(f"{type_name:8} {row['seconds']:8.1f} {row['input_mb_per_s']:11.1f} {row['mparams_per_s']:9.1f} "
                  f"{row['output_mb']:8.1f}", flush=True)
            out.unlink()
    if args.json:
        args.json.write_text(json.dumps({"cpu_count": os.cpu_count(), "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
