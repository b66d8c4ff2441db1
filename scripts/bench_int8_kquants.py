#!/usr/bin/env python3
"""GB/s of the Q4_K/Q6_K mat-vecs with 8-bit activations (kernels/int8_kquants.py) against the
float-activation kernels (kernels/kquants.py) on the demo model's real matrices.

Matrices: blk.*.attn_output (Q4_K, 640 x 1024) and blk.*.ffn_down (Q4_K or Q6_K, 640 x 2048) of
the Gemma 3 270M Q4_K_M GGUF. Two regimes per kind:
  memory: every call takes the next matrix of the kind (all of them cycled; 6.6-9.7 MB in all, so
          on a large-L3 CPU this is L3 rather than DRAM),
  L2:     one matrix called over and over.
1 thread runs the kernels' serial twins (no thread pool, as the engine does), 2 threads the
parallel kernels. GB/s = GGUF bytes read per second; median of --repeat runs of --calls calls
(the machine is shared: compare within one run). Also counts the VNNI instructions in the
kernels' asm (Q4_K: vpdpbusd; Q6_K: vpmaddubsw + vpdpwssd, which LLVM turns into vpmaddwd +
vpaddd; see int8_kquants.dot_scaled).

    python scripts/bench_int8_kquants.py [--gguf /work/demo/gemma-3-270m-q4_k_m.gguf] [--repeat 9]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numba
import numpy as np

from llmcli.engine.kernels import int8_kquants, kquants
from llmcli.engine.kernels.common import serial_twin
from llmcli.gguf import GGUFReader
from llmcli.gguf.constants import GGMLType

KERNELS = {  # type -> (x group, {name: (parallel kernel, serial twin)})
    GGMLType.Q4_K: ((8, 32), {"float": kquants.matvec_q4_k, "int8": int8_kquants.matvec_q4_k_int8}),
    GGMLType.Q6_K: ((16, 16), {"float": kquants.matvec_q6_k, "int8": int8_kquants.matvec_q6_k_int8}),
}
SERIAL = {kernel: serial_twin(kernel) for _, kernels in KERNELS.values() for kernel in kernels.values()}


def matrices(path: str) -> dict[tuple[str, GGMLType], list[np.ndarray]]:
    reader = GGUFReader(path)
    kinds: dict[tuple[str, GGMLType], list[np.ndarray]] = {}
    for t in reader.tensors:
        kind = t.name.split(".", 2)[-1].removesuffix(".weight")
        if kind in ("attn_output", "ffn_down") and t.type in KERNELS:
            n_rows, n_blocks = t.shape[1], t.shape[0] // 256
            kinds.setdefault((kind, t.type), []).append(reader.tensor_bytes(t.name).reshape(n_rows, n_blocks, -1))
    return kinds


def gbps(kernel, mats: list[np.ndarray], x: np.ndarray, out: np.ndarray, calls: int, repeat: int) -> float:
    n = len(mats)
    total = sum(mats[i % n].nbytes for i in range(calls))
    kernel(mats[0], x, out)
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for i in range(calls):
            kernel(mats[i % n], x, out)
        runs.append(total / (time.perf_counter() - t0) / 1e9)
    return statistics.median(runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gguf", default="/work/demo/gemma-3-270m-q4_k_m.gguf")
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--calls", type=int, default=400)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    print(f"median GB/s of GGUF bytes over {args.repeat} runs of {args.calls} calls")
    print(f"{'matrices':34} {'regime':7} {'thr':>3} {'float':>7} {'int8':>7} {'ratio':>6}")
    for (kind, ggml_type), mats in matrices(args.gguf).items():
        group, kernels = KERNELS[ggml_type]
        n_blocks = mats[0].shape[1]
        x = rng.standard_normal((n_blocks, *group)).astype(np.float32)
        out = np.empty(mats[0].shape[0], np.float32)
        label = f"{kind} {ggml_type.name} x{len(mats)} ({sum(m.nbytes for m in mats) / 1e6:.1f} MB)"
        for regime, pool in (("memory", mats), ("L2", mats[:1])):
            for threads in (1, 2):
                numba.set_num_threads(threads)
                speed = {}
                for name, kernel in kernels.items():
                    run = SERIAL[kernel] if threads == 1 else kernel
                    speed[name] = gbps(run, pool, x, out, args.calls, args.repeat)
                print(f"{label:34} {regime:7} {threads:>3} {speed['float']:7.1f} {speed['int8']:7.1f} "
                      f"{speed['int8'] / speed['float']:6.2f}", flush=True)
    for _, kernels in KERNELS.values():
        # the cached kernels' asm cannot be inspected: compile an uncached copy for the same signature
        kernel = kernels["int8"]
        fresh = numba.njit(parallel=True)(kernel.py_func)
        fresh.compile(kernel.signatures[0])
        asm = fresh.inspect_asm(kernel.signatures[0])
        found = {op: asm.count(op) for op in ("vpdpbusd", "vpmaddubsw", "vpdpwssd", "vpmaddwd", "vpmulld")}
        print(f"{kernel.__name__}: VNNI instructions in asm: {found}")

if __name__ == "__main__":
    main()
