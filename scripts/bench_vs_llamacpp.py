#!/usr/bin/env python3
"""llmcli against llama.cpp on one file with the same bench arguments, in interleaved rounds.

    python scripts/bench_vs_llamacpp.py -m MODEL.gguf [--llama-bench PATH] [--rounds 3]
        [--llama-only "-fa 1"] [--json FILE] -- BENCH ARGS

BENCH ARGS go to `llmcli bench` and to `llama-bench` alike (e.g. `-p 512 -n 128 -t 2 -r 1`, or
`-p 0 -n 32 -d 4096 -ctk f16 -ctv f16`); `--llama-only` adds arguments only llama-bench takes (its
`-fa 1`: llmcli's attention is always the flash-attention kind). Each round runs both, one after
the other, the first of the pair alternating from round to round, so that the drifts of a shared
machine hit both alike. Prints every round's tokens/s and llmcli / llama.cpp per test, then per
test the medians of each and the range and median of the per-round ratios (the README's tables
of side-by-side figures come from this). `--json FILE` keeps every figure.

Before and after every run it reads a 512 MiB array with the bench's thread count (`-t`, the
largest if a list; else every CPU) and prints the rate: generation is a stream of the weights, and
on the VMs these figures come from that rate moves between levels for minutes at a time (2 vCPUs:
~34 or ~52 GB/s at 2 threads, a process's generation following it), so a ratio means something
only between runs that read memory alike. `--no-probe` leaves it out.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

from bench_contention import DEFAULT_LLAMA_BENCH, run_one

TOOLS = ("llmcli", "llama.cpp")
PROBE_BYTES = 512 * 2**20
PROBE_PASSES = 3


def probe_threads(bench_args: list[str]) -> int:
    """The bench's thread count: `-t`/`--threads` (the largest of a comma list), else every CPU."""
    for flag, value in zip(bench_args, bench_args[1:]):
        if flag in ("-t", "--threads"):
            return max(int(n) for n in value.split(","))
    return os.cpu_count() or 1


class MemoryProbe:
    """GB/s of a parallel read of PROBE_BYTES (best of PROBE_PASSES): the memory's state now. It
    loads one byte of every 64-byte line, which moves every line from memory, as a stream of weights
    does, without the arithmetic of a full sum. The array exists only while a probe runs: held
    between probes, its 512 MiB would be missing to the benches (llmcli plans its memory by what
    is available)."""

    def __init__(self, threads: int):
        import numba
        import numpy as np

        @numba.njit(parallel=True)
        def read(data, parts):
            step = data.size // parts
            sums = np.zeros(parts, np.int64)
            for part in numba.prange(parts):
                total = 0
                for i in range(part * step, (part + 1) * step, 64):
                    total += data[i]
                sums[part] = total
            return sums.sum()

        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        self._read = read
        self._parts = 64 * threads
        read(np.ones(self._parts * 64, np.uint8), self._parts)  # compile

    def rate(self) -> float:
        import numpy as np

        data = np.ones(PROBE_BYTES, np.uint8)  # written whole: its pages are in before the passes
        best = float("inf")
        for _ in range(PROBE_PASSES):
            start = time.perf_counter()
            self._read(data, self._parts)
            best = min(best, time.perf_counter() - start)
        return PROBE_BYTES / best / 1e9


def command(tool: str, args) -> list[str]:
    if tool == "llmcli":
        cmd = [sys.executable, "-m", "llmcli", "bench", "-m", args.model]
    else:
        cmd = [args.llama_bench, "-m", args.model] + shlex.split(args.llama_only)
    return cmd + args.bench_args + ["-o", "json"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model", required=True, help="GGUF model")
    ap.add_argument("--llama-bench", default=DEFAULT_LLAMA_BENCH, help=f"llama-bench (default {DEFAULT_LLAMA_BENCH})")
    ap.add_argument("--llama-only", default="", help="arguments for llama-bench only, e.g. \"-fa 1\"")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds for one bench run (default 3600)")
    ap.add_argument("--json", type=Path, help="write every figure here")
    ap.add_argument("--no-probe", action="store_true", help="no memory read rate before and after each run")
    ap.add_argument("bench_args", nargs=argparse.REMAINDER, help="-- then the arguments both benches take")
    args = ap.parse_args()
    if args.bench_args[:1] == ["--"]:
        args.bench_args = args.bench_args[1:]
    if not Path(args.model).is_file():
        print(f"error: {args.model}: no such file", file=sys.stderr)
        return 1
    if not Path(args.llama_bench).is_file():
        print(f"error: {args.llama_bench}: no such file (build llama-bench, or give --llama-bench)", file=sys.stderr)
        return 1

    figures: dict[str, dict[str, list[float]]] = {}  # test -> tool -> tokens/s per round
    ratios: dict[str, list[float]] = {}
    probe = None if args.no_probe else MemoryProbe(probe_threads(args.bench_args))
    memory: dict[str, list[list[float]]] = {}  # tool -> [GB/s before, after] per round
    for round_ in range(1, args.rounds + 1):
        order = TOOLS if round_ % 2 else TOOLS[::-1]
        results = {}
        for tool in order:
            before = probe.rate() if probe else None
            result = run_one(command(tool, args), args.timeout)
            if result is None:
                return 1
            if probe:
                memory.setdefault(tool, []).append([before, probe.rate()])
                print(f"round {round_} {tool}: memory read {before:.1f} GB/s before, {memory[tool][-1][1]:.1f} after",
                      flush=True)
            result.pop("threading_layer", None)
            results[tool] = result
        for test in results["llmcli"]:
            mine, theirs = results["llmcli"][test], results["llama.cpp"].get(test)
            for tool, value in (("llmcli", mine), ("llama.cpp", theirs)):
                if value is not None:
                    figures.setdefault(test, {}).setdefault(tool, []).append(value)
            if theirs:
                ratios.setdefault(test, []).append(mine / theirs)
            shown = f"{theirs:.2f}" if theirs is not None else "-"
            ratio = f"{mine / theirs:.2f}x" if theirs else "-"
            print(f"round {round_} {test}: llmcli {mine:.2f}, llama.cpp {shown} ({ratio})", flush=True)

    print("\n| test | llmcli (median) | llama.cpp (median) | per-round ratio | median ratio |")
    print("|---|---:|---:|---|---:|")
    for test, by_tool in figures.items():
        mine, theirs = (statistics.median(by_tool[t]) if by_tool.get(t) else None for t in TOOLS)
        span = f"{min(ratios[test]):.2f}-{max(ratios[test]):.2f}x" if ratios.get(test) else "-"
        med = f"{statistics.median(ratios[test]):.2f}x" if ratios.get(test) else "-"
        print(f"| {test} | {mine:.2f} | {theirs:.2f} | {span} | {med} |" if theirs else
              f"| {test} | {mine:.2f} | - | - | - |")
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "bench_args": args.bench_args,
                                         "llama_only": args.llama_only, "figures": figures, "ratios": ratios,
                                         "memory_read_gbs": memory},
                                        indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
