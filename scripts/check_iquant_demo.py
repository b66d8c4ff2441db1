#!/usr/bin/env python3
"""`llmcli quantize --imatrix` against tests/data/iquants/quantize-demo.json: per-tensor sha256.

    PYTHONPATH=. python scripts/check_iquant_demo.py DEMO-F16.gguf DEMO.imatrix.gguf
        [--refs tests/data/iquants/quantize-demo.json] [--only IQ1_S,...] [--threads 2]
        [--bin /work/scratch/llama/build/bin] [--json-out FILE] [--cache FILE]

quantize-demo.json (scripts/make_iquant_refs.py --demo) holds what `llama-quantize --imatrix`
wrote for every i-quant / ternary mix and --pure type on an f16 GGUF of the demo model. For each
run llama-quantize completed, this runs

    python -m llmcli quantize MODEL out.gguf --type TYPE --imatrix IMATRIX [--pure]
        [--token-embedding-type T] --threads N

in the imatrix's folder (its name as given goes into quantize.imatrix.file, as in the reference
runs) and compares the tensors' types and data sha256 and the file's sha256 with the record.
When tensors differ and --bin is given, llama-quantize is run again for that entry to count the
differing blocks of each such tensor, and how many of them hold a tie: two equal source values
in one search group of the type (IQ1_S 32, IQ1_M 16 weights; else the whole block). ggml's IQ1
quantizers sort each group with qsort, which leaves equal values in an unspecified order, so a
tie is the one legitimate source of a difference there; a differing block without a tie is a bug.

--cache FILE keeps llmcli's per-tensor digests per command (JSON), so a second run, or one with
--mixes-only before the reference file is complete, does not quantize again.

Prints a table (run, tensors, identical, differing names, blocks); exit 1 when anything differs.
Not run by the tests (it needs the demo model's f16 and, with --bin, the reference build).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from llmcli.gguf import GGUFReader  # noqa: E402
from llmcli.gguf.constants import TYPE_INFO  # noqa: E402
from llmcli.quants import dequantize  # noqa: E402

# the weights ggml's IQ1 quantizers sort together (quantize_row_iq1_*_impl's block_size)
SORT_GROUP = {"IQ1_S": 32, "IQ1_M": 16}


def label(run: dict) -> str:
    if not run["pure"]:
        return run["type"] + ("" if run["imatrix"] else " plain")
    extra = run["options"][run["options"].index("--token-embedding-type") + 1] \
        if "--token-embedding-type" in run["options"] else None
    return f"{run['ggml_type']} pure" + (f" embd {extra}" if extra else "") + ("" if run["imatrix"] else " plain")


def tensor_digests(path: Path) -> list[list[str]]:
    with GGUFReader(path) as r:
        return [[t.name, t.type.name, hashlib.sha256(r.tensor_bytes(t).tobytes()).hexdigest()] for t in r.tensors]


def quantize_ours(model: Path, imatrix: Path, run: dict, out: Path, threads: int) -> None:
    # llama-quantize's options are llmcli's (--imatrix NAME, --pure, --token-embedding-type T)
    cmd = [sys.executable, "-m", "llmcli", "quantize", str(model), str(out), "--type", run["type"],
           *run["options"], "--threads", str(threads), "--force"]
    done = subprocess.run(cmd, cwd=imatrix.parent, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")


def quantize_llama(exe: Path, model: Path, imatrix: Path, run: dict, out: Path, threads: int) -> None:
    cmd = [str(exe), *run["options"], str(model), str(out), run["type"], str(threads)]
    subprocess.run(cmd, cwd=imatrix.parent, check=True, capture_output=True)


def block_differences(model: Path, ours: Path, theirs: Path, name: str) -> dict:
    """Blocks of tensor `name` that differ, and how many of those hold tied source values."""
    with GGUFReader(ours) as a, GGUFReader(theirs) as b, GGUFReader(model) as m:
        ta = next(t for t in a.tensors if t.name == name)
        info = TYPE_INFO[ta.type]
        got = np.asarray(a.tensor_bytes(ta)).reshape(-1, info.block_bytes)
        want = np.asarray(b.tensor_bytes(name)).reshape(-1, info.block_bytes)
        differ = np.flatnonzero((got != want).any(axis=1))
        tm = next(t for t in m.tensors if t.name == name)
        x = dequantize(m.tensor_bytes(name), tm.type).reshape(-1, info.block_size)[differ]
    group = SORT_GROUP.get(ta.type.name, info.block_size)
    groups = np.sort(x.reshape(len(differ), -1, group), axis=2)
    tied = (np.diff(groups, axis=2) == 0).any(axis=(1, 2))
    return {"blocks": int(got.shape[0]), "differ": int(differ.size), "with_ties": int(tied.sum()),
            "first": differ[:8].tolist()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("imatrix", type=Path)
    ap.add_argument("--refs", type=Path, default=ROOT / "tests" / "data" / "iquants" / "quantize-demo.json")
    ap.add_argument("--only", help="comma-separated run labels as printed, e.g. IQ1_S,IQ2_S pure embd Q8_0 "
                                     "(default: every run)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bin", type=Path, help="llama.cpp's bin folder: count the differing blocks")
    ap.add_argument("--json-out", type=Path)
    ap.add_argument("--cache", type=Path, help="llmcli's digests per command, reused and extended")
    ap.add_argument("--mixes-only", action="store_true",
                    help="only fill --cache for every mix of make_iquant_refs.MIXES (no reference needed)")
    args = ap.parse_args()
    model, imatrix = args.model.resolve(), args.imatrix.resolve()
    cache = json.loads(args.cache.read_text()) if args.cache and args.cache.exists() else {}

    def ours_digests(run: dict, out: Path) -> dict:
        """{"tensors": [[name, type, sha256]...], "file_sha256": ...} of llmcli's output for `run`."""
        key = " ".join([run["type"], *run["options"]])
        if key not in cache:
            quantize_ours(model, imatrix, run, out, args.threads)
            cache[key] = {"tensors": tensor_digests(out), "file_sha256": hashlib.sha256(out.read_bytes()).hexdigest()}
            if args.cache:
                args.cache.write_text(json.dumps(cache, indent=1) + "\n")
        return cache[key]

    if args.mixes_only:
        from make_iquant_refs import MIXES

        with tempfile.TemporaryDirectory() as tmp_name:
            for mix in MIXES:
                ours_digests({"type": mix, "options": ["--imatrix", imatrix.name]}, Path(tmp_name) / "ours.gguf")
                print(mix, "done", flush=True)
        return
    record = json.loads(args.refs.read_text())
    if hashlib.sha256(model.read_bytes()).hexdigest() != record["input_sha256"]:
        raise SystemExit(f"{model}: not the file {args.refs} was made from (sha256 differs)")
    if hashlib.sha256(imatrix.read_bytes()).hexdigest() != record["imatrix_sha256"] or \
            imatrix.name != Path(record["imatrix"]).name:
        raise SystemExit(f"{imatrix}: not the importance matrix {args.refs} was made with")
    only = set(args.only.split(",")) if args.only else None
    runs = [r for r in record["runs"] if not r.get("failed")
            and (only is None or label(r) in only)]
    results = []
    print(f"{'run':26} {'tensors':>7} {'identical':>9} {'file':>5}  differing")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for run in runs:
            ours = tmp / "ours.gguf"
            ours.unlink(missing_ok=True)
            digests = ours_digests(run, ours)
            got = digests["tensors"]
            expected = run["tensors"]
            if [g[:2] for g in got] != [e[:2] for e in expected]:
                raise SystemExit(f"{label(run)}: tensor names or types differ from llama-quantize's")
            differing = [g[0] for g, e in zip(got, expected) if g != e]
            file_same = digests["file_sha256"] == run["file_sha256"]
            entry = {"run": label(run), "command": run["command"], "tensors": len(got),
                     "identical": len(got) - len(differing), "file_identical": file_same,
                     "differing": {name: None for name in differing}}
            if differing and args.bin:
                if not ours.exists():   # digests from the cache: make the file for the block counts
                    quantize_ours(model, imatrix, run, ours, args.threads)
                theirs = tmp / "llama.gguf"
                quantize_llama(args.bin / "llama-quantize", model, imatrix, run, theirs, args.threads)
                if tensor_digests(theirs) != expected:
                    print(f"  note: llama-quantize's output for {label(run)} differs from its own record")
                for name in differing:
                    entry["differing"][name] = block_differences(model, ours, theirs, name)
            results.append(entry)
            shown = ", ".join(name + (f" ({d['differ']}/{d['blocks']} blocks, {d['with_ties']} with ties)"
                                      if d else "") for name, d in entry["differing"].items())
            print(f"{entry['run']:26} {entry['tensors']:7} {entry['identical']:9} {'same' if file_same else 'DIFF':>5}  "
                  f"{shown or '-'}", flush=True)
    if args.json_out:
        args.json_out.write_text(json.dumps({"refs": str(args.refs.relative_to(ROOT)) if args.refs.is_relative_to(ROOT)
                                             else str(args.refs), "results": results}, indent=1) + "\n")
    bad = [r["run"] for r in results if r["differing"] or not r["file_identical"]]
    print(f"{len(results) - len(bad)} of {len(results)} runs byte-identical" + (f"; differ: {', '.join(bad)}" if bad else ""))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
