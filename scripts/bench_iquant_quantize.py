#!/usr/bin/env python3
"""Quantize time of the i-quant codecs against `llama-quantize --imatrix --pure`, per type.

    PYTHONPATH=. python scripts/bench_iquant_quantize.py [--model tests/data/kq/kq-f16.gguf]
        [--imatrix tests/data/imatrix/kq.imatrix.gguf] [--types IQ3_XXS,IQ3_S,IQ1_S,IQ1_M]
        [--rounds 3] [--bin /work/scratch/llama/build/bin]
    PYTHONPATH=. python scripts/bench_iquant_quantize.py --mixes IQ1_S,IQ4_XS,... --model F16.gguf
        --imatrix IMATRIX [--rounds 2] [--json-out FILE]

Per type and round (llama.cpp and llmcli interleaved; best of the rounds printed):

* llama: `llama-quantize --imatrix IMATRIX --pure --token-embedding-type q8_0 MODEL out TYPE N`
  (token_embd has no importance data, and IQ1_S/IQ2_XXS/IQ2_XS cannot go without), wall and CPU
  seconds of the whole run: reading, ggml's grid init (ggml_quantize_init), quantizing, writing.
* llmcli: in a fresh process, the same tensors (every matrix but token_embd whose rows hold whole
  256-blocks; the others take fallback types in llama-quantize) quantized with the codec and the
  imatrix's weights: the first-use grid init (`iq_search.search_tables`), then the quantize
  itself, wall and CPU seconds; numba's compile/cache load is done before timing.

With --mixes, whole commands instead, per mix and round (interleaved; each round's figures and
the 1-minute load average before each run are printed, and the best of the rounds):

* llama: `llama-quantize --imatrix IMATRIX MODEL out.gguf MIX N`
* llmcli: `python -m llmcli quantize MODEL out.gguf --type MIX --imatrix IMATRIX --threads N`
  (a fresh process: Python and numba's cache load, the grid init, the per-tensor error report
  llmcli prints and llama-quantize does not, writing)

Both at --threads N (numba's thread count and llama-quantize's nthread). Not run by the tests; a
shared machine makes wall times noisy, the CPU seconds less so.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, sys, time
import numba, numpy as np
from llmcli.gguf import GGUFReader
from llmcli.gguf.constants import GGMLType
from llmcli.quantize import load_importance
from llmcli.quants import dequantize, quantize
from llmcli.quants import iq1, iq3
from llmcli.quants.iq_search import search_tables
model, imatrix, type_name, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
numba.set_num_threads(threads)
ggml_type = GGMLType[type_name]
grid = {"IQ3_XXS": ("iq3xxs_grid", iq3.NWANT_XXS, iq3.KMAP_SIZE), "IQ3_S": ("iq3s_grid", iq3.NWANT_S, iq3.KMAP_SIZE),
        "IQ1_S": ("iq1s_grid", iq1.NWANT, iq1.KMAP_SIZE), "IQ1_M": ("iq1s_grid", iq1.NWANT, iq1.KMAP_SIZE)}[type_name]
importance = load_importance(imatrix)
with GGUFReader(model) as reader:
    mats = [(t.name, dequantize(reader.tensor_bytes(t.name), t.type)) for t in reader.tensors
            if len(t.shape) >= 2 and t.row_length % 256 == 0 and t.name != "token_embd.weight"]
name, x = mats[0]
quantize(x[:1], ggml_type, np.ones(x.shape[1], np.float32))   # compile / load numba's cache (tiny grid cost)
search_tables.cache_clear()
t, c = time.perf_counter(), time.process_time()
search_tables(*grid)
init = (time.perf_counter() - t, time.process_time() - c)
t, c = time.perf_counter(), time.process_time()
for name, x in mats:
    quantize(x, ggml_type, importance.weights.get(name))
run = (time.perf_counter() - t, time.process_time() - c)
print(json.dumps({"init": init, "quantize": run, "weights": int(sum(x.size for _, x in mats))}))
"""


def llama_run(exe: Path, model: Path, imatrix: Path, type_name: str, threads: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        subprocess.run([str(exe), "--imatrix", str(imatrix), "--pure", "--token-embedding-type", "q8_0",
                        str(model), str(Path(tmp) / "out.gguf"), type_name, str(threads)],
                       check=True, capture_output=True)
        wall = time.perf_counter() - t
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def llmcli_run(model: Path, imatrix: Path, type_name: str, threads: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(model), str(imatrix), type_name, str(threads)],
                         check=True, capture_output=True, text=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def timed(cmd: list[str], cwd: Path | None = None) -> tuple[float, float]:
    """Wall and CPU (user + system) seconds of one command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, cwd=cwd, env={**os.environ, "PYTHONPATH": str(ROOT)})
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def bench_mixes(args: argparse.Namespace) -> None:
    model, imatrix = args.model.resolve(), args.imatrix.resolve()
    rows = []
    print(f"{'mix':8} {'round':>5} {'load':>5} {'llama wall/cpu s':>17} {'load':>5} {'llmcli wall/cpu s':>18} "
          f"{'wall ratio':>10} {'cpu ratio':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.gguf"
        for mix in args.mixes.split(","):
            for round_ in range(args.rounds):
                load_llama = os.getloadavg()[0]
                llama = timed([str(args.bin / "llama-quantize"), "--imatrix", str(imatrix), str(model), str(out),
                               mix, str(args.threads)])
                out.unlink()
                load_ours = os.getloadavg()[0]
                ours = timed([sys.executable, "-m", "llmcli", "quantize", str(model), str(out), "--type", mix,
                              "--imatrix", str(imatrix), "--threads", str(args.threads)])
                out.unlink()
                rows.append({"mix": mix, "round": round_, "load_llama": load_llama, "llama": llama,
                             "load_llmcli": load_ours, "llmcli": ours})
                print(f"{mix:8} {round_:5} {load_llama:5.1f} {llama[0]:8.2f}/{llama[1]:<8.2f} {load_ours:5.1f} "
                      f"{ours[0]:9.2f}/{ours[1]:<8.2f} {ours[0] / llama[0]:10.2f} {ours[1] / llama[1]:9.2f}",
                      flush=True)
    print(f"\nbest of {args.rounds} rounds, --threads {args.threads}:")
    print(f"{'mix':8} {'llama wall/cpu s':>17} {'llmcli wall/cpu s':>18} {'wall ratio':>10} {'cpu ratio':>9}")
    for mix in args.mixes.split(","):
        mine = [r for r in rows if r["mix"] == mix]
        lw, lc = min(r["llama"][0] for r in mine), min(r["llama"][1] for r in mine)
        ow, oc = min(r["llmcli"][0] for r in mine), min(r["llmcli"][1] for r in mine)
        print(f"{mix:8} {lw:8.2f}/{lc:<8.2f} {ow:9.2f}/{oc:<8.2f} {ow / lw:10.2f} {oc / lc:9.2f}")
    if args.json_out:
        args.json_out.write_text(json.dumps({"threads": args.threads, "model": str(model), "imatrix": str(imatrix),
                                             "runs": rows}, indent=1) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=ROOT / "tests/data/kq/kq-f16.gguf")
    ap.add_argument("--imatrix", type=Path, default=ROOT / "tests/data/imatrix/kq.imatrix.gguf")
    ap.add_argument("--types", default="IQ3_XXS,IQ3_S,IQ1_S,IQ1_M")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bin", type=Path, default=Path("/work/scratch/llama/build/bin"))
    ap.add_argument("--mixes", help="time whole llama-quantize / llmcli quantize commands for these mixes")
    ap.add_argument("--json-out", type=Path, help="with --mixes: every round's figures")
    args = ap.parse_args()
    if args.mixes:
        bench_mixes(args)
        return
    print(f"{'type':8} {'llama wall/cpu s':>17} {'llmcli init wall/cpu s':>23} {'quantize wall/cpu s':>20} "
          f"{'total wall':>10} {'ratio':>6}")
    for type_name in args.types.split(","):
        llama, ours = [], []
        for _ in range(args.rounds):
            llama.append(llama_run(args.bin / "llama-quantize", args.model, args.imatrix, type_name, args.threads))
            ours.append(llmcli_run(args.model, args.imatrix, type_name, args.threads))
        lw, lc = min(w for w, _ in llama), min(c for _, c in llama)
        iw, ic = min(r["init"][0] for r in ours), min(r["init"][1] for r in ours)
        qw, qc = min(r["quantize"][0] for r in ours), min(r["quantize"][1] for r in ours)
        total = min(r["init"][0] + r["quantize"][0] for r in ours)
        print(f"{type_name:8} {lw:8.2f}/{lc:<8.2f} {iw:11.2f}/{ic:<11.2f} {qw:9.2f}/{qc:<10.2f} "
              f"{total:10.2f} {total / lw:6.2f}", flush=True)


if __name__ == "__main__":
    main()
