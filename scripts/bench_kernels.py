"""Benchmark llmcli's quantized mat-vec / mat-mul kernels on the demo model's real matrices.

For every (tensor kind, type, shape) of Gemma 3 270M Q4_K_M it times, at 1 and 2 threads:
  - mat-vec (token generation): one call per matrix, cycling through every matrix of the group so
    the bytes come from memory as they do in a real token, not from cache;
  - mat-mul with a 512-token batch (prompt processing), layer matrices only (llama.cpp computes
    the output matrix for the last prompt token only, which is one mat-vec).
It prints GB/s of GGUF bytes streamed, ms per matrix, and the projection for one token (sum over
the 127 matrices a token multiplies by) and for pp512. Timings are medians over rounds; the machine
may be shared, so compare ratios within one run.

    python scripts/bench_kernels.py [--model PATH] [--rounds N] [--threads 1,2] [--no-pp] [--cpu-time]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

import numpy as np
from numba import njit, prange

from llmcli.engine.matmul import QuantizedMatrix, matmul, matvec, set_threads
from llmcli.gguf import GGUFReader

DEMO = "/work/demo/gemma-3-270m-q4_k_m.gguf"
PP_TOKENS = 512


@njit(parallel=True, fastmath=True, cache=True)
def _row_sums(a, out):
    for r in prange(a.shape[0]):
        s = np.float32(0.0)
        for k in range(a.shape[1]):
            s += a[r, k]
        out[r] = s


def yardsticks(rounds: int) -> tuple[float, float]:
    """This machine's memory read bandwidth (GB/s, a vectorised numba row sum over 128 MB) and
    numpy/OpenBLAS float32 GEMM speed (GFLOP/s, 512x640 @ 640x2048) measured by the same clock."""
    a = np.ones((32768, 1024), np.float32)
    sums = np.empty(32768, np.float32)
    bandwidth = a.nbytes / median_time(lambda: _row_sums(a, sums), rounds) / 1e9
    x = np.ones((PP_TOKENS, 640), np.float32)
    w = np.ones((2048, 640), np.float32)
    gemm = 2 * PP_TOKENS * 640 * 2048 / median_time(lambda: x @ w.T, rounds) / 1e9
    return bandwidth, gemm


def groups_of(reader: GGUFReader) -> dict[tuple, list[QuantizedMatrix]]:
    groups = defaultdict(list)
    for t in reader.tensors:
        if len(t.shape) != 2:
            continue
        kind = t.name.split(".", 2)[-1] if t.name.startswith("blk.") else t.name
        n_cols, n_rows = t.shape
        groups[(kind.removesuffix(".weight"), t.type.name, n_rows, n_cols)].append(
            QuantizedMatrix(reader.tensor_bytes(t.name), t.type, n_cols))
    return dict(groups)


CLOCK = time.perf_counter


def median_time(fn, rounds: int) -> float:
    fn()  # warm up (and compile)
    times = []
    for _ in range(rounds):
        start = CLOCK()
        fn()
        times.append(CLOCK() - start)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=DEMO)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--pp-rounds", type=int, default=3)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--no-pp", action="store_true")
    ap.add_argument("--cpu-time", action="store_true",
                    help="time with the process CPU clock (1 thread only): on a shared, overloaded machine "
                         "this leaves out the time other processes held the core")
    args = ap.parse_args()
    if args.cpu_time:
        global CLOCK
        CLOCK = time.process_time

    reader = GGUFReader(args.model)
    groups = groups_of(reader)
    thread_counts = [int(n) for n in args.threads.split(",")]
    rng = np.random.default_rng(0)
    totals_tg = defaultdict(float)
    totals_pp = defaultdict(float)
    header = f"{'matrix':<18}{'type':<6}{'rows x cols':>14}{'n':>4}{'MB':>7}"
    for n in thread_counts:
        header += f" | {n}T mv ms  GB/s"
        if not args.no_pp:
            header += "  pp ms GFLOP/s"
    for n in thread_counts:
        set_threads(n)
        bandwidth, gemm = yardsticks(args.rounds)
        print(f"yardsticks at {n} thread(s): memory read {bandwidth:.1f} GB/s (numba row sum), "
              f"numpy float32 GEMM {gemm:.0f} GFLOP/s (OpenBLAS, its own threads)")
    print(header)
    for (kind, type_name, n_rows, n_cols), mats in sorted(groups.items(), key=lambda kv: -kv[1][0].raw.nbytes):
        nbytes = mats[0].raw.nbytes
        x = rng.standard_normal(n_cols).astype(np.float32)
        outs = [np.empty(m.n_rows, np.float32) for m in mats]
        is_layer = kind != "token_embd" and kind != "output"
        line = f"{kind:<18}{type_name:<6}{f'{n_rows}x{n_cols}':>14}{len(mats):>4}{nbytes * len(mats) / 1e6:>7.1f}"
        for n in thread_counts:
            set_threads(n)

            def all_matvecs():
                for m, o in zip(mats, outs):
                    matvec(m, x, o)

            per_matrix = median_time(all_matvecs, args.rounds) / len(mats)
            totals_tg[n] += per_matrix * len(mats)
            line += f" | {per_matrix * 1e3:9.3f} {nbytes / per_matrix / 1e9:5.1f}"
            if not args.no_pp:
                if is_layer:
                    X = rng.standard_normal((PP_TOKENS, n_cols)).astype(np.float32)
                    out = np.empty((PP_TOKENS, n_rows), np.float32)
                    pp = median_time(lambda: matmul(mats[0], X, out), args.pp_rounds)
                    totals_pp[n] += pp * len(mats)
                    line += f" {pp * 1e3:6.1f} {2 * PP_TOKENS * n_rows * n_cols / pp / 1e9:7.1f}"
                else:
                    totals_pp[n] += per_matrix  # the last prompt token's logits only
                    line += f" {'-':>6} {'-':>7}"
        print(line, flush=True)
    n_matrices = sum(len(m) for m in groups.values())
    for n in thread_counts:
        tg = totals_tg[n]
        summary = f"{n} thread(s): {n_matrices} mat-vecs per token {tg * 1e3:.2f} ms -> <= {1 / tg:.0f} tokens/s"
        if not args.no_pp:
            pp = totals_pp[n]
            summary += f"; pp{PP_TOKENS} matmuls {pp * 1e3:.0f} ms -> <= {PP_TOKENS / pp:.0f} tokens/s"
        print(summary)


if __name__ == "__main__":
    main()
