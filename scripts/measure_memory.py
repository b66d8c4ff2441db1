#!/usr/bin/env python3
"""Peak memory of a generation against the issue's bound: peak RSS minus the RSS of a process that
has imported llmcli and loaded its kernels <= file size + KV cache + 100 MB.

    python scripts/measure_memory.py [MODEL.gguf] [--prompt 512] [--gen 32] [--ctx 4096] [--threads 1]

One process: import llmcli, load the model and run a short prompt and a token (every kernel the
run needs is now loaded), drop the model (its map and buffers go) and read the RSS: the baseline.
Then reset the peak (Linux /proc/self/clear_refs), load the model again, run --prompt tokens and
--gen more, and read the peak (VmHWM). Linux only.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def run(path: str, args, n_prompt: int, n_gen: int) -> int:
    from llmcli.models import load_model

    model = load_model(path, threads=args.threads, ctx_size=args.ctx)
    ids = np.random.default_rng(0).integers(10, model.hp.n_vocab - 10, n_prompt).tolist()
    seq = model.new_sequence()
    token = int(np.argmax(model.forward(seq, ids)))
    for _ in range(n_gen):
        token = int(np.argmax(model.forward(seq, [token])))
    kv = seq.cache.n_bytes
    reader = model.reader
    del model
    gc.collect()
    reader.close()  # unmaps the file now that no array views into it are left
    return kv


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?")
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--gen", type=int, default=32)
    ap.add_argument("--ctx", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    path = args.model
    if path is None:
        from llmcli.demo import demo_model_path

        path = str(demo_model_path())
    run(path, args, 16, 1)  # load every kernel (a 16-token batch takes the GEMM path)
    run(path, args, 4, 1)   # and the mat-vec path of short batches
    baseline = status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    kv = run(path, args, args.prompt, args.gen)
    peak = status_kib("VmHWM")
    size = os.path.getsize(path)
    bound = size + kv + 100 * 2**20
    mib = 2**20
    print(f"{Path(path).name}: baseline (llmcli + kernels) {baseline / 1024:.1f} MiB, peak {peak / 1024:.1f} MiB, "
          f"peak - baseline {(peak - baseline) / 1024:.1f} MiB <= file {size / mib:.1f} + KV {kv / mib:.1f} + 100 "
          f"= {bound / mib:.1f} MiB: {'yes' if (peak - baseline) * 1024 <= bound else 'NO'}")


if __name__ == "__main__":
    main()
