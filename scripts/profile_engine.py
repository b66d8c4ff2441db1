#!/usr/bin/env python3
"""Where a forward pass spends its time: prompt processing and token generation, per kernel.

    /work/venv/bin/python scripts/profile_engine.py [MODEL.gguf] [--threads 1] [--prompt 512] [--gen 32]

Default model: the demo (Gemma 3 270M Q4_K_M). Prints tokens/s for a random prompt of --prompt ids
and for --gen single-token steps after it, then the functions taking most of each phase's time
(cProfile; numba kernels show up as single calls). The machine is shared: compare ratios within one
run, and repeat.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llmcli.models import load_model  # noqa: E402


def top_functions(profile: cProfile.Profile, n: int = 12) -> str:
    out = io.StringIO()
    pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(n)
    lines = out.getvalue().splitlines()
    start = next(i for i, line in enumerate(lines) if "ncalls" in line)
    return "\n".join(lines[start:start + n + 1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", help="GGUF file (default: the demo model)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--prompt", type=int, default=512, help="prompt length in tokens")
    ap.add_argument("--gen", type=int, default=32, help="single-token steps after the prompt")
    ap.add_argument("--batch-size", type=int, default=512)
    args = ap.parse_args()
    path = args.model
    if path is None:
        from llmcli.demo import demo_model_path

        path = demo_model_path()
    model = load_model(path, threads=args.threads, ctx_size=args.prompt + args.gen + 8,
                       batch_size=args.batch_size)
    ids = np.random.default_rng(0).integers(10, model.hp.n_vocab - 10, args.prompt).tolist()
    seq = model.new_sequence()
    model.forward(seq, ids[:8])  # compile / load every kernel once
    model.forward(seq, [ids[0]])
    seq = model.new_sequence()

    prof = cProfile.Profile()
    start = time.perf_counter()
    prof.enable()
    model.forward(seq, ids)
    prof.disable()
    pp = time.perf_counter() - start
    print(f"{path}: {model.threads} thread(s), KV cache {seq.cache.n_bytes / 2**20:.1f} MiB")
    print(f"prompt {args.prompt} tokens: {pp:.2f} s, {args.prompt / pp:.1f} tokens/s")
    print(top_functions(prof))

    prof = cProfile.Profile()
    token = int(ids[-1])
    start = time.perf_counter()
    prof.enable()
    for _ in range(args.gen):
        token = int(np.argmax(model.forward(seq, [token])))
    prof.disable()
    tg = time.perf_counter() - start
    print(f"\ngeneration {args.gen} tokens: {tg:.2f} s, {args.gen / tg:.1f} tokens/s")
    print(top_functions(prof))


if __name__ == "__main__":
    main()
