#!/usr/bin/env python3
"""Quantize/dequantize throughput of the float and legacy codecs (MB/s of float32), 1 and 2 threads.

    /work/venv/bin/python scripts/bench_quants.py [--rows 4096 --cols 4096 --repeat 5]

A quick measurement on a shared machine: medians of a few runs, compare ratios within one run.
"""

from __future__ import annotations

import argparse
import time

import numba
import numpy as np

from llmcli.gguf.constants import GGMLType
from llmcli.quants import dequantize, quantize, quantizable_types

TYPES = ["F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q8_1"]


def median_seconds(fn, repeat: int) -> float:
    fn()  # compile / warm caches
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--types", nargs="*", default=TYPES)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.rows, args.cols)).astype(np.float32)
    mb = x.nbytes / 1e6
    print(f"input {args.rows}x{args.cols} float32 = {mb:.0f} MB; MB/s of float32 (quantize in, dequantize out)")
    print(f"context: numpy x.copy() {mb / median_seconds(lambda: x.copy(), args.repeat):.0f} MB/s "
          f"(a loaded machine shows here first)")
    print(f"{'type':8} {'quant 1t':>9} {'quant 2t':>9} {'deq 1t':>9} {'deq 2t':>9}")
    for name in args.types:
        t = GGMLType[name]
        assert t in quantizable_types()
        q = quantize(x, t)
        row = [name]
        for fn in (lambda: quantize(x, t), lambda: dequantize(q, t)):
            for threads in (1, 2):
                numba.set_num_threads(threads)
                row.append(f"{mb / median_seconds(fn, args.repeat):9.0f}")
        print(f"{row[0]:8} {row[1]} {row[2]} {row[3]} {row[4]}")


if __name__ == "__main__":
    main()
