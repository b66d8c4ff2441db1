#!/usr/bin/env python3
"""Time the runtime tokenizer on the 100 KB test text (tests/data/tokenizer/text100k.txt).

Prints, per model: load time, then tokenize time with a cold and a warm per-word cache (median of
--repeat runs, wall and CPU seconds; CPU time is the steadier figure on a shared machine).

    python scripts/bench_tokenizer.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from llmcli.demo import demo_model_path
from llmcli.gguf import GGUFReader
from llmcli.vocab import Tokenizer

DATA = Path(__file__).resolve().parents[1] / "tests" / "data"


def timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    with open(DATA / "tokenizer" / "text100k.txt", encoding="utf-8", newline="") as f:
        text = f.read()

    def tiny(name: str):
        record = json.loads((DATA / "gguf_ref" / f"{name}-f16.json").read_text())
        return lambda: Tokenizer.from_metadata({k: v["value"] for k, v in record["metadata"].items()})

    def demo():
        with GGUFReader(demo_model_path()) as reader:
            return Tokenizer.from_gguf(reader)

    loaders = {"llama (SPM)": tiny("llama"), "qwen2 (BPE)": tiny("qwen2"),
               "llama_bf16 (BPE llama3)": tiny("llama_bf16"), "gemma3-270m demo (SPM 262k)": demo}
    print(f"text: {len(text)} characters, {len(text.encode())} bytes")
    for name, load in loaders.items():
        tok, load_wall, load_cpu = timed(load)
        for parse_special in (False, True):
            cold, warm = [], []
            for _ in range(args.repeat):
                tok._encoder.cache.clear()
                ids, w, c = timed(lambda: tok.tokenize(text, parse_special=parse_special))
                cold.append((w, c))
                _, w, c = timed(lambda: tok.tokenize(text, parse_special=parse_special))
                warm.append((w, c))
            med = lambda xs, i: statistics.median(x[i] for x in xs)  # noqa: E731
            print(f"{name:30s} parse_special={parse_special!s:5s} {len(ids):6d} ids | load "
                  f"{load_wall:.2f}s | cold {med(cold, 0):.3f}s wall {med(cold, 1):.3f}s cpu | warm "
                  f"{med(warm, 0):.3f}s wall {med(warm, 1):.3f}s cpu")


if __name__ == "__main__":
    main()
