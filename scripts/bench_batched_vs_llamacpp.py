"""Batched decoding side by side: `llmcli bench -npl ...` and `llama-batched-bench` on one file.

    python scripts/bench_batched_vs_llamacpp.py --llama-batched-bench /path/to/llama-batched-bench \
        -m gemma-3-270m-q4_k_m.gguf -npp 128 -ntg 128 -npl 1,2,4,8,16 -t 1 --rounds 2

Runs the two tools alternately (`--rounds` times each; the machine's speed drifts, so interleaving
keeps the comparison fair), both with jsonl output, and prints per B the best S_PP and S_TG of each,
their ratio, and S_TG relative to B = 1 (the batching gain). llama-batched-bench gets
`-c B_max * (PP + TG)`, the cache llmcli allocates for B_max sequences of PP + TG, and `-b/-ub` as
llmcli's batch size. Not run by the tests.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys


def _jsonl(lines: str) -> list[dict]:
    return [json.loads(line) for line in lines.splitlines() if line.startswith("{")]


def run_llmcli(args) -> list[dict]:
    cmd = [sys.executable, "-m", "llmcli", "bench", "-m", args.model, "-npp", args.npp, "-ntg", args.ntg,
           "-npl", args.npl, "-t", str(args.threads), "-b", str(args.batch), "-o", "jsonl"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return _jsonl(out.stdout)


def run_llamacpp(args) -> list[dict]:
    pls = [int(x) for x in args.npl.split(",")]
    need = max(pls) * (max(int(x) for x in args.npp.split(",")) + max(int(x) for x in args.ntg.split(",")))
    cmd = [args.llama_batched_bench, "-m", args.model, "-c", str(need), "-b", str(args.batch), "-ub", str(args.batch),
           "-npp", args.npp, "-ntg", args.ntg, "-npl", args.npl, "-t", str(args.threads), "-tb", str(args.threads),
           "--output-format", "jsonl"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return _jsonl(out.stdout + out.stderr)


def best(rows: list[dict]) -> dict[tuple, dict]:
    """Per (pp, tg, pl): the round with the highest S_TG."""
    out: dict[tuple, dict] = {}
    for r in rows:
        key = (r["pp"], r["tg"], r["pl"])
        if key not in out or r["speed_tg"] > out[key]["speed_tg"]:
            out[key] = r
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--llama-batched-bench", required=True)
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("-npp", default="128")
    ap.add_argument("-ntg", default="128")
    ap.add_argument("-npl", default="1,2,4,8,16")
    ap.add_argument("-t", "--threads", type=int, default=1)
    ap.add_argument("-b", "--batch", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json", action="store_true", help="print the raw rows of both tools as JSON")
    args = ap.parse_args()
    ours, theirs = [], []
    for i in range(args.rounds):
        print(f"round {i + 1}/{args.rounds}: llmcli", file=sys.stderr, flush=True)
        ours += run_llmcli(args)
        print(f"round {i + 1}/{args.rounds}: llama-batched-bench", file=sys.stderr, flush=True)
        theirs += run_llamacpp(args)
    if args.json:
        print(json.dumps({"llmcli": ours, "llama.cpp": theirs}, indent=2))
        return
    ours_best, theirs_best = best(ours), best(theirs)
    print(f"{'PP':>5} {'TG':>5} {'B':>3} | {'S_PP llmcli':>11} {'llama.cpp':>9} {'ratio':>5} | "
          f"{'S_TG llmcli':>11} {'llama.cpp':>9} {'ratio':>5} | {'xB=1 llmcli':>11} {'llama.cpp':>9}")
    for key in sorted(ours_best):
        o, t = ours_best[key], theirs_best.get(key)
        base_o = ours_best.get((key[0], key[1], 1))
        base_t = theirs_best.get((key[0], key[1], 1))
        gain_o = o["speed_tg"] / base_o["speed_tg"] if base_o else float("nan")
        gain_t = t["speed_tg"] / base_t["speed_tg"] if t and base_t else float("nan")
        print(f"{key[0]:>5} {key[1]:>5} {key[2]:>3} | {o['speed_pp']:>11.2f} {t['speed_pp'] if t else float('nan'):>9.2f} "
              f"{o['speed_pp'] / t['speed_pp'] if t else float('nan'):>5.2f} | {o['speed_tg']:>11.2f} "
              f"{t['speed_tg'] if t else float('nan'):>9.2f} {o['speed_tg'] / t['speed_tg'] if t else float('nan'):>5.2f} | "
              f"{gain_o:>11.2f} {gain_t:>9.2f}")


if __name__ == "__main__":
    main()
