#!/usr/bin/env python3
"""`llmcli batch` against running the same prompts one by one with `llmcli run`: generated tokens/s.

    python scripts/bench_batch.py [-m MODEL.gguf] [--prompts 200] [-n 32] [-np 16] [--sample 20] [-t 1]

Both greedy (--temp 0), so both produce the same tokens. The one-by-one rate is measured on
`--sample` evenly spaced prompts of the set (running all of them takes long): each `llmcli run -p
PROMPT --json` is a process of its own, as a user or a shell loop would run it. Two rates each:
* wall: generated tokens / seconds of the whole processes (loading the model included; for the
  sample, its tokens / its processes' seconds),
* gen: generated tokens / seconds of generating (batch: its --json summary; run: prompt_ms +
  predicted_ms of each, the model's load left out).
The batch runs first and last (best of two) with the sample's one-by-one runs in between.
Defaults: the demo model, 200 prompts (20 topics x 10 openings), 32 tokens, -np 16, 1 thread.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOPICS = ["the sea", "a lighthouse", "winter", "the city at night", "a small robot", "bread", "the moon",
          "an old library", "rain", "a mountain village", "trains", "the desert", "a garden", "music",
          "a clockmaker", "the forest", "a river", "snow", "a market", "the stars"]
OPENINGS = ["Write a short story about {}.", "Describe {} in three sentences.", "Once upon a time, {}",
            "Here is a poem about {}:", "Five facts about {}:", "A letter to a friend about {}:",
            "The history of {} begins", "Why do people love {}?", "A child asks about {}. The answer:",
            "An advertisement for {}:"]


def prompts(n: int) -> list[str]:
    every = [o.format(t) for o in OPENINGS for t in TOPICS]
    return [every[i % len(every)] for i in range(n)]


def llmcli(*args: str) -> tuple[float, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    began = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "llmcli", *args], capture_output=True, text=True, env=env, check=True)
    return time.perf_counter() - began, out.stdout


def run_batch(texts: list[str], common: list[str], parallel: int, work: Path) -> dict:
    src, out = work / "in.jsonl", work / "out.jsonl"
    src.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in texts), encoding="utf-8")
    out.unlink(missing_ok=True)
    wall, stdout = llmcli("batch", str(src), str(out), *common, "-np", str(parallel), "--json")
    summary = json.loads(stdout)
    return {"wall_s": wall, "gen_s": summary["seconds"], "tokens": summary["generated_tokens"],
            "records": [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model", default=None)
    ap.add_argument("--prompts", type=int, default=200)
    ap.add_argument("-n", "--max-tokens", type=int, default=32)
    ap.add_argument("-np", "--parallel", type=int, default=16)
    ap.add_argument("--sample", type=int, default=20)
    ap.add_argument("-t", "--threads", type=int, default=1)
    args = ap.parse_args()
    texts = prompts(args.prompts)
    common = ["--temp", "0", "-t", str(args.threads)] + (["-m", args.model] if args.model else [])
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        first = run_batch(texts, common + ["-n", str(args.max_tokens)], args.parallel, work)
        step = max(1, len(texts) // args.sample)
        picked = list(range(0, len(texts), step))[:args.sample]
        one = {"wall_s": 0.0, "gen_s": 0.0, "tokens": 0}
        same = 0
        for i in picked:
            wall, stdout = llmcli("run", "-p", texts[i], "-n", str(args.max_tokens), "--json", *common)
            result = json.loads(stdout)
            one["wall_s"] += wall
            one["gen_s"] += (result["timings"]["prompt_ms"] + result["timings"]["predicted_ms"]) / 1000
            one["tokens"] += len(result["tokens"])
            same += result["tokens"] == first["records"][i]["tokens"]
        second = run_batch(texts, common + ["-n", str(args.max_tokens)], args.parallel, work)
    best = min(first, second, key=lambda r: r["wall_s"])
    rate = {k: best["tokens"] / best[k] for k in ("wall_s", "gen_s")}
    one_rate = {k: one["tokens"] / one[k] for k in ("wall_s", "gen_s")}
    print(f"prompts {len(texts)}, max tokens {args.max_tokens}, -np {args.parallel}, -t {args.threads}, greedy")
    print(f"llmcli batch : {best['tokens']} tokens, wall {best['wall_s']:.1f} s ({rate['wall_s']:.1f} t/s), "
          f"generating {best['gen_s']:.1f} s ({rate['gen_s']:.1f} t/s)  [batch runs: "
          f"{first['wall_s']:.1f} s, {second['wall_s']:.1f} s]")
    print(f"llmcli run x{len(picked)} (sample): {one['tokens']} tokens, wall {one['wall_s']:.1f} s "
          f"({one_rate['wall_s']:.1f} t/s), generating {one['gen_s']:.1f} s ({one_rate['gen_s']:.1f} t/s); "
          f"same tokens as the batch's record: {same}/{len(picked)}")
    print(f"speed-up: wall {rate['wall_s'] / one_rate['wall_s']:.1f}x, generating "
          f"{rate['gen_s'] / one_rate['gen_s']:.1f}x; all {len(texts)} one by one would take about "
          f"{one['wall_s'] / len(picked) * len(texts):.0f} s")


if __name__ == "__main__":
    main()
