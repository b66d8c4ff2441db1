"""Benchmark B-column mat-vecs (`matvecs`, batched decoding) on the demo model's matrices.

    python scripts/bench_matvecs.py [--model PATH] [--threads 1,2] [--mode int8|float]
                                    [--columns 1,2,4,8,16] [--tokens 2,4,...] [--rounds N]
                                    [--no-columns] [--no-crossover] [--panels] [--gemm-kinds [--gemm-tokens 512]]

Part 1, columns: per (tensor kind, type) group of the demo model, the time of one `matvecs` call
with B rows against B `matvec` calls, and a whole "decode step" (every 2-D matrix of the model in
order, output matrix included: ~250 MB, more than the L3 cache) for B sequences against one.

Part 2, crossover: per weight type, `matmul`'s two paths on n tokens, B-row mat-vec (`matvecs`)
against the GEMM (--mode float: the float32 GEMM, decode + pack + micro-kernel; int8: the integer
GEMM where the type has one, kernels/gemm_int8.py, activations quantized + decode + micro-kernel),
over every matrix of that type in the demo model; prints the first n at which the GEMM is faster:
what `GEMM_MIN_TOKENS` in
llmcli/engine/matmul.py is set from. Types the demo lacks (Q4_0, F16) are quantized from random
data with llmcli.quants at the demo's ffn shapes (18 x 2048x640 and 18 x 640x2048).

Part 3, --gemm-kinds: per weight type, the float32 GEMM against the integer GEMM on --gemm-tokens
tokens (prompt processing's chunk, 512 by default), summed over the type's matrices: which the
default prompt path (engine/prompt_activations.py) should use for that type.

--panels: Q8_0 matrices the size of an output matrix (from models.memory.OUTPUT_COPY_MIN_BYTES:
the demo's 262144 x 640 one) are packed into panels first, as the model packs its output
(engine/panels.py), so `matvecs` on them is the panel kernel and the crossover is panels vs GEMM.

Times are the minimum over --rounds (the machine may be shared); every round cycles through the
whole group, so the weights come from memory or L3 as they do in a real token.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import numpy as np

from llmcli.demo import demo_model_path
from llmcli.engine import matmul as mm
from llmcli.engine.kernels import gemm_int8
from llmcli.engine.matmul import QuantizedMatrix, Workspace, matvec, matvecs, set_activations, set_threads
from llmcli.gguf import GGUFReader
from llmcli.engine.panels import pack_panels, packs_panels
from llmcli.gguf.constants import GGMLType
from llmcli.models.memory import OUTPUT_COPY_MIN_BYTES
from llmcli.quants import quantize


def demo_matrices(path) -> list[tuple[str, QuantizedMatrix]]:
    reader = GGUFReader(path)
    found = []
    for t in reader.tensors:
        if len(t.shape) != 2:
            continue
        kind = t.name.split(".", 2)[-1] if t.name.startswith("blk.") else t.name
        found.append((kind.removesuffix(".weight"), QuantizedMatrix(reader.tensor_bytes(t.name), t.type, t.shape[0])))
    return found


def synthetic(ggml_type: GGMLType, rng) -> list[QuantizedMatrix]:
    """18 ffn_up-shaped and 18 ffn_down-shaped matrices of `ggml_type` from random data."""
    out = []
    for n_rows, n_cols in ((2048, 640), (640, 2048)):
        rows = rng.standard_normal((n_rows, n_cols)).astype(np.float32)
        raw = quantize(rows, ggml_type)
        out += [QuantizedMatrix(raw.copy(), ggml_type, n_cols) for _ in range(18)]
    return out


def best_time(fn, rounds: int) -> float:
    fn()  # warm up (and compile)
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def columns_table(matrices, counts, rounds, rng) -> None:
    groups = defaultdict(list)
    for kind, W in matrices:
        groups[(kind, W.ggml_type.name, W.n_rows, W.n_cols)].append(W)
    print(f"{'group':34} {'B':>3} {'matvecs ms':>11} {'x B=1':>6} {'B matvec ms':>12} {'gain':>5}")
    for key, Ws in sorted(groups.items(), key=lambda kv: -kv[1][0].raw.nbytes):
        base = None
        for n in counts:
            X = rng.standard_normal((n, Ws[0].n_cols)).astype(np.float32)
            out = np.empty((n, Ws[0].n_rows), np.float32)
            r = rounds if Ws[0].raw.nbytes < 10 << 20 else max(1, rounds // 3)
            together = best_time(lambda: [matvecs(W, X, out) for W in Ws], r) / len(Ws)
            apart = best_time(lambda: [matvec(W, X[t], out[t]) for W in Ws for t in range(n)], r) / len(Ws)
            base = base or together
            name = f"{key[0]} {key[1]} {key[2]}x{key[3]}"
            print(f"{name:34} {n:3d} {together * 1e3:11.3f} {together / base:6.2f} {apart * 1e3:12.3f} "
                  f"{apart / together:5.2f}")
    # a whole decode step: every matrix once, in model order
    base = None
    for n in counts:
        xs = {}
        for _, W in matrices:
            xs.setdefault(W.n_cols, rng.standard_normal((n, W.n_cols)).astype(np.float32))
        outs = [np.empty((n, W.n_rows), np.float32) for _, W in matrices]
        step = best_time(lambda: [matvecs(W, xs[W.n_cols], o) for (_, W), o in zip(matrices, outs)],
                         max(1, rounds // 3))
        base = base or step
        print(f"{'decode step (all matrices)':34} {n:3d} {step * 1e3:11.3f} {step / base:6.2f}   "
              f"tokens/s x{n * base / step:.2f} of B=1")


def crossover(by_type, token_counts, rounds, rng, mode) -> None:
    print(f"{'type':6} {'n':>3} {'matvecs ms':>11} {'gemm ms':>9}  (summed over the type's matrices)")
    for ggml_type, Ws in by_type.items():
        workspace = Workspace()
        gemm_path = mm._gemm_int8 if mode == "int8" and ggml_type in gemm_int8.SPECS else mm._gemm
        first = None
        for n in token_counts:
            xs = {W.n_cols: rng.standard_normal((n, W.n_cols)).astype(np.float32) for W in Ws}
            outs = [np.empty((n, W.n_rows), np.float32) for W in Ws]
            r = rounds if sum(W.raw.nbytes for W in Ws) < 50 << 20 else max(1, rounds // 3)
            cols = best_time(lambda: [matvecs(W, xs[W.n_cols], o) for W, o in zip(Ws, outs)], r)
            gemm = best_time(lambda: [gemm_path(W, xs[W.n_cols], o, workspace, [(0, n)]) for W, o in zip(Ws, outs)],
                             r)
            mark = ""
            if first is None and gemm < cols:
                first, mark = n, "  <- GEMM faster"
            print(f"{ggml_type.name:6} {n:3d} {cols * 1e3:11.2f} {gemm * 1e3:9.2f}{mark}")
        print(f"{ggml_type.name}: GEMM from {first if first is not None else '>' + str(token_counts[-1])} tokens")


def gemm_kinds(by_type, n, rounds, rng) -> None:
    print(f"{'type':6} {'n':>4} {'float32 GEMM ms':>16} {'integer GEMM ms':>16} {'speed-up':>9}")
    for ggml_type, Ws in by_type.items():
        if ggml_type not in gemm_int8.SPECS:
            print(f"{ggml_type.name:6} {n:4d}  (no integer GEMM)")
            continue
        workspace = Workspace()
        xs = {W.n_cols: rng.standard_normal((n, W.n_cols)).astype(np.float32) for W in Ws}
        outs = [np.empty((n, W.n_rows), np.float32) for W in Ws]
        r = rounds if sum(W.raw.nbytes for W in Ws) < 50 << 20 else max(1, rounds // 3)
        runs = [lambda path=path: [path(W, xs[W.n_cols], o, workspace, [(0, n)]) for W, o in zip(Ws, outs)]
                for path in (mm._gemm, mm._gemm_int8)]
        # rounds alternate between the two kinds, so a busy spell of the machine hits both alike
        times = [min(ts) for ts in zip(*[[best_time(run, 1) for run in runs] for _ in range(r)])]
        print(f"{ggml_type.name:6} {n:4d} {times[0] * 1e3:16.1f} {times[1] * 1e3:16.1f} {times[0] / times[1]:8.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="GGUF (default: the demo model)")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--mode", default="int8", choices=["int8", "float"])
    ap.add_argument("--columns", default="1,2,4,8,16")
    ap.add_argument("--tokens", default="2,4,6,8,10,12,16,20,24,32,48")
    ap.add_argument("--types", default="Q4_K,Q6_K,Q5_0,Q8_0,Q4_0,F16")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--no-columns", action="store_true")
    ap.add_argument("--no-crossover", action="store_true")
    ap.add_argument("--gemm-kinds", action="store_true", help="part 3: float32 vs integer GEMM per type")
    ap.add_argument("--gemm-tokens", type=int, default=512)
    ap.add_argument("--panels", action="store_true", help="pack output-sized Q8_0 matrices into panels")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    set_activations(args.mode)
    matrices = demo_matrices(args.model or demo_model_path())
    if args.panels:
        for _, W in matrices:
            if packs_panels(W.ggml_type) and W.raw.nbytes >= OUTPUT_COPY_MIN_BYTES:
                pack_panels(W)
    by_type = defaultdict(list)
    for _, W in matrices:
        by_type[W.ggml_type].append(W)
    for name in args.types.split(","):
        if GGMLType[name] not in by_type:
            by_type[GGMLType[name]] = synthetic(GGMLType[name], rng)
    by_type = {GGMLType[name]: by_type[GGMLType[name]] for name in args.types.split(",")}
    for threads in map(int, args.threads.split(",")):
        set_threads(threads)
        print(f"\n== {threads} thread(s), {args.mode} activations ==")
        if not args.no_columns:
            columns_table(matrices, [int(c) for c in args.columns.split(",")], args.rounds, rng)
        if not args.no_crossover:
            crossover(by_type, [int(c) for c in args.tokens.split(",")], args.rounds, rng, args.mode)
        if args.gemm_kinds:
            gemm_kinds(by_type, args.gemm_tokens, args.rounds, rng)


if __name__ == "__main__":
    main()
