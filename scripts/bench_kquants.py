#!/usr/bin/env python3
"""Throughput of the k-quant codecs: MB/s of float32 input (quantize) and output (dequantize).

Rows are heavy-tailed random weights, 768 wide (the K-quant test model's ffn_down). With --libggml,
ggml's reference quantizer (what llama-quantize runs per thread, no imatrix) is timed on the same
data, single-threaded, for comparison. The machine is shared: take the best of --repeat runs and
compare within one run.

    python scripts/bench_kquants.py [--threads 1,2] [--rows 2048] [--libggml libggml-base.so]
"""

from __future__ import annotations

import argparse
import ctypes
import time

import numba
import numpy as np

from llmcli.gguf.constants import GGMLType
from llmcli.quants import dequantize, quantize

TYPES = ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K"]


def best_time(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def ggml_quantizer(path: str):
    lib = ctypes.CDLL(path)
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                                        ctypes.c_void_p]
    row_fn = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)
    q8k = row_fn(ctypes.cast(lib.quantize_row_q8_K_ref, ctypes.c_void_p).value)

    def run(x: np.ndarray, like: np.ndarray, ggml_type: GGMLType) -> None:
        out = np.empty_like(like)
        if ggml_type == GGMLType.Q8_K:
            q8k(x.ctypes.data, out.ctypes.data, x.size)
        else:
            lib.ggml_quantize_chunk(int(ggml_type), x.ctypes.data, out.ctypes.data, 0,
                                    x.shape[0], x.shape[1], None)
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rows", type=int, default=2048)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--libggml", help="libggml-base.so to time ggml's reference quantizers")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    z = rng.standard_normal((args.rows, 768))
    outliers = rng.random(z.shape) < 0.03
    z[outliers] = 2 * rng.standard_t(3, outliers.sum())
    x = (0.02 * np.exp(rng.normal(0, 0.25, (args.rows, 1))) * z).astype(np.float32)
    mb = x.nbytes / 1e6
    ggml = ggml_quantizer(args.libggml) if args.libggml else None

    print(f"{args.rows} x 768 float32 ({mb:.1f} MB), best of {args.repeat}")
    for type_name in TYPES:
        t = GGMLType[type_name]
        q = quantize(x[:2], t)                              # compile / load the kernels
        dequantize(q, t)
        q = quantize(x, t)
        cols = []
        for n in [int(v) for v in args.threads.split(",")]:
            numba.set_num_threads(n)
            tq = best_time(lambda: quantize(x, t), args.repeat)
            td = best_time(lambda: dequantize(q, t), args.repeat)
            cols.append(f"{n} thr: quantize {mb / tq:7.1f}  dequantize {mb / td:7.0f}")
        if ggml:
            tc = best_time(lambda: ggml(x, q, t), args.repeat)
            cols.append(f"ggml ref 1 thr: quantize {mb / tc:7.1f}")
        print(f"{type_name}: " + " | ".join(cols) + "  (MB/s)")


if __name__ == "__main__":
    main()
