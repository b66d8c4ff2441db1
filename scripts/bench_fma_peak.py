#!/usr/bin/env python3
"""This machine's float32 FMA ceiling for the prompt GEMM, at 1 and 2 threads.

Runs the prompt GEMM's micro-kernel (`simd.gemm_micro`, 6 tokens x 32 rows, 12 zmm accumulators)
on operands that fit in L1, on every thread at once, many times, and prints the best aggregate
GFLOP/s seen per thread count (best of --rounds, so a moment with idle cores counts).

If 2 threads never get past ~1x the 1-thread figure while 1 thread reaches its peak, the two CPUs
share one core's FMA units (hyper-threads; a cloud "2 vCPU" instance is often one core), and no
prompt-processing change can scale past that: prompt processing is FMA-bound.

    /work/venv/bin/python scripts/bench_fma_peak.py [--rounds 300] [--int8]

`--int8`: the integer prompt GEMM's micro-kernel instead (`gemm_int8.gemm_int8_micro`, 6 tokens x
32 rows, K = 256 of 8-bit codes, `vpdpbusd`), in GMAC/s (multiply-adds): the ceiling the integer
GEMM's tiles run against.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numba
import numpy as np
from numba import njit, prange

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llmcli.engine.kernels.gemm_int8 import gemm_int8_micro  # noqa: E402
from llmcli.engine.kernels.simd import gemm_micro  # noqa: E402

K = 64  # 6x64 activations + a 64x32 panel: 9.5 KB, L1-resident


@njit(parallel=True, cache=True)
def _fma_loop(x, panel, out, reps):
    for thread in prange(out.shape[0]):
        for _ in range(reps):
            gemm_micro(x, 0, 6, panel, 0, out[thread], 0, K)


INT8_K = 256  # 6x256 activation bytes + two 16-row panels of 256 codes: 9.5 KB, L1-resident


@njit(parallel=True, cache=True)
def _int8_loop(xq, xscale, xinit, codes, scales, out, reps):
    for thread in prange(out.shape[0]):
        for _ in range(reps):
            gemm_int8_micro(xq, xscale, xinit, xscale, 0, 6, codes, scales, scales, 0, out[thread], 0,
                            0, INT8_K // 32, 32, False, False)


def int8_peak(rounds: int, reps: int) -> None:
    rng = np.random.default_rng(0)
    xq = rng.integers(-127, 128, (6, INT8_K)).astype(np.int8)
    xscale = rng.random((6, INT8_K // 32), dtype=np.float32)
    xinit = np.zeros((6, INT8_K // 32), np.int32)
    codes = rng.integers(0, 256, (2, INT8_K * 16)).astype(np.uint8)
    scales = rng.random((2, INT8_K // 32 * 16), dtype=np.float32)
    macs = reps * 6 * 32 * INT8_K
    counts = [n for n in (1, 2) if n <= numba.config.NUMBA_NUM_THREADS]
    best = dict.fromkeys(counts, 0.0)
    for _ in range(rounds):
        for n in counts:
            numba.set_num_threads(n)
            out = np.zeros((n, 6, 32), np.float32)
            _int8_loop(xq, xscale, xinit, codes, scales, out, 10)
            start = time.perf_counter()
            _int8_loop(xq, xscale, xinit, codes, scales, out, reps)
            best[n] = max(best[n], n * macs / (time.perf_counter() - start) / 1e9)
    for n in counts:
        print(f"{n} thread(s): best {best[n]:.0f} GMAC/s aggregate ({best[n] / best[1]:.2f}x one thread), "
              "integer GEMM micro-kernel")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=300)
    ap.add_argument("--reps", type=int, default=100_000, help="micro-kernel calls per thread per round")
    ap.add_argument("--int8", action="store_true", help="the integer GEMM's micro-kernel (GMAC/s)")
    args = ap.parse_args()
    if args.int8:
        int8_peak(args.rounds, args.reps)
        return
    rng = np.random.default_rng(0)
    x = rng.random((6, K), dtype=np.float32)
    panel = rng.random((K, 32), dtype=np.float32)
    flops = args.reps * 2 * 6 * 32 * K
    counts = [n for n in (1, 2) if n <= numba.config.NUMBA_NUM_THREADS]
    best = dict.fromkeys(counts, 0.0)
    for _ in range(args.rounds):
        for n in counts:
            numba.set_num_threads(n)
            out = np.zeros((n, 6, 32), np.float32)
            _fma_loop(x, panel, out, 10)
            start = time.perf_counter()
            _fma_loop(x, panel, out, args.reps)
            best[n] = max(best[n], n * flops / (time.perf_counter() - start) / 1e9)
    for n in counts:
        print(f"{n} thread(s): best {best[n]:.0f} GFLOP/s aggregate ({best[n] / best[1]:.2f}x one thread)")


if __name__ == "__main__":
    main()
