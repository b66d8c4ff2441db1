#!/usr/bin/env python3
"""`llmcli perplexity` against llama.cpp's `llama-perplexity`: tokens/s on the same model, text,
context, chunks and threads, runs interleaved (the machine's speed drifts).

    python scripts/bench_perplexity.py [-m MODEL.gguf] [-f TEXT] [-c 512] [--chunks N] [-t 1] [-r 3]
                                       [--bin /work/scratch/llama/build/bin] [--activations int8]

Two rates per run:
* eval: tokens evaluated (chunks x n_ctx) per second of evaluation and scoring, from the first
  chunk's start to the final estimate, model loading left out: llmcli's `seconds` (--json; kernel
  compilation left out too), llama.cpp's time between its log lines "calculating perplexity over"
  and "Final estimate" (its log timestamps);
* wall: the same tokens per second of the whole process (loading, tokenizing, exiting included).
Defaults: the demo model, tests/data/perplexity/kjv-genesis-1-3.txt, -c 512 (all 4 chunks, one
pass at llama.cpp's default -b 2048), 1 thread.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STAMP = re.compile(r"^(\d+)\.(\d+)\.(\d+)\.(\d+) ")  # llama.cpp log time: minutes.seconds.ms.us


def _stamp_seconds(line: str) -> float:
    m, s, ms, us = (int(x) for x in STAMP.match(line).groups())
    return 60 * m + s + ms / 1e3 + us / 1e6


def llama_cpp(binary: Path, args: list[str], attempts: int = 30) -> dict:
    for _ in range(attempts):
        began = time.perf_counter()
        out = subprocess.run([str(binary)] + args, capture_output=True, text=True)
        wall = time.perf_counter() - began
        if out.returncode:
            raise SystemExit(out.stderr[-2000:])
        start = next((l for l in out.stderr.splitlines() if "calculating perplexity over" in l), None)
        final = next((l for l in out.stderr.splitlines() if "Final estimate" in l), None)
        if start and final:  # its asynchronous log sometimes loses the last lines at exit: run again
            # the final estimate may share a line with the ETA: its own time stamp is the last one
            final_stamp = re.findall(r"(\d+\.\d+\.\d+\.\d+) I Final estimate", final)[-1]
            n_chunk, n_ctx = (int(x) for x in re.search(r"over (\d+) chunks, n_ctx=(\d+)", start).groups())
            ppl = float(re.search(r"PPL = ([\d.]+)", final).group(1))
            return {"eval_s": _stamp_seconds(final_stamp + " ") - _stamp_seconds(start), "wall_s": wall,
                    "tokens": n_chunk * n_ctx, "ppl": ppl}
    raise SystemExit("llama-perplexity printed no final estimate")


def llmcli(args: list[str]) -> dict:
    began = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "llmcli", "perplexity"] + args + ["--json"], capture_output=True,
                         text=True, cwd=ROOT)
    wall = time.perf_counter() - began
    if out.returncode:
        raise SystemExit(out.stderr[-2000:])
    result = json.loads(out.stdout)
    return {"eval_s": result["seconds"], "wall_s": wall, "tokens": result["n_chunk"] * result["n_ctx"],
            "ppl": result["ppl"], "compile_s": result["compile_seconds"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", type=Path)
    ap.add_argument("-f", "--file", type=Path, default=ROOT / "tests" / "data" / "perplexity" / "kjv-genesis-1-3.txt")
    ap.add_argument("-c", "--ctx-size", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=-1)
    ap.add_argument("-b", "--batch-size", type=int, default=2048)
    ap.add_argument("-t", "--threads", type=int, default=1)
    ap.add_argument("-r", "--repetitions", type=int, default=3)
    ap.add_argument("--activations", default="int8")
    ap.add_argument("--bin", type=Path, default=Path("/work/scratch/llama/build/bin"))
    args = ap.parse_args()
    if args.model is None:
        from llmcli.demo import demo_model_path

        args.model = demo_model_path()
    common = ["-m", str(args.model), "-f", str(args.file), "-c", str(args.ctx_size), "--chunks", str(args.chunks),
              "-b", str(args.batch_size), "-t", str(args.threads)]
    llmcli(common + ["--activations", args.activations])  # compile or load every kernel first
    runs: dict[str, list[dict]] = {"llmcli": [], "llama.cpp": []}
    for rep in range(args.repetitions):
        runs["llama.cpp"].append(llama_cpp(args.bin / "llama-perplexity", common))
        runs["llmcli"].append(llmcli(common + ["--activations", args.activations]))
        for name in runs:
            r = runs[name][-1]
            print(f"run {rep + 1} {name:9s}: PPL {r['ppl']:.4f}, {r['tokens']} tokens, eval {r['eval_s']:.2f} s "
                  f"({r['tokens'] / r['eval_s']:.1f} t/s), wall {r['wall_s']:.2f} s "
                  f"({r['tokens'] / r['wall_s']:.1f} t/s)", flush=True)
    print(f"\n{args.model.name}, {args.file.name}, -c {args.ctx_size} --chunks {args.chunks} -b {args.batch_size} "
          f"-t {args.threads}, llmcli --activations {args.activations}; median of {args.repetitions} (min-max)")
    print("| | eval tokens/s | wall tokens/s | PPL |\n|---|---:|---:|---:|")
    rates = {}
    for name, rs in runs.items():
        ev = [r["tokens"] / r["eval_s"] for r in rs]
        wa = [r["tokens"] / r["wall_s"] for r in rs]
        rates[name] = (statistics.median(ev), statistics.median(wa))
        print(f"| {name} | {statistics.median(ev):.1f} ({min(ev):.1f}-{max(ev):.1f}) | {statistics.median(wa):.1f} "
              f"({min(wa):.1f}-{max(wa):.1f}) | {rs[-1]['ppl']:.4f} |")
    print(f"| llmcli / llama.cpp | {rates['llmcli'][0] / rates['llama.cpp'][0]:.2f}x | "
          f"{rates['llmcli'][1] / rates['llama.cpp'][1]:.2f}x | |")


if __name__ == "__main__":
    main()
