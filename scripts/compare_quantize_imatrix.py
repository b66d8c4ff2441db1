#!/usr/bin/env python3
"""`llmcli quantize --imatrix` against `llama-quantize --imatrix`: byte for byte, every type and mix.

    python scripts/compare_quantize_imatrix.py MODEL.gguf IMATRIX [--bin /work/scratch/llama/build/bin]
        [--types Q4_0,...] [--threads 2] [--json-out FILE]

For each TYPE (default: every one llmcli produces with an importance matrix, Q2_K_S included), runs

    llama-quantize --imatrix IMATRIX MODEL llama.gguf TYPE THREADS
    python -m llmcli quantize MODEL llmcli.gguf --type TYPE --imatrix IMATRIX --threads THREADS

in a temporary directory and compares the two files byte for byte (`cmp`); when they differ, it
lists the tensors whose data differ. Prints one line per type and a summary; exit 1 on any
difference. Not run by the tests (it needs the reference llama.cpp build and minutes per type).

Used on the F16 of the demo model (`llmcli quantize --allow-requantize gemma-3-270m-q4_k_m.gguf
demo-f16.gguf --type F16`, byte-identical to `llama-quantize --allow-requantize ... F16`) with the
importance matrix llama-imatrix itself wrote for it
(`llama-imatrix -m demo-f16.gguf -f tests/data/perplexity/kjv-genesis-1-3.txt -c 512 --chunks 4`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from llmcli.quants.mixes import IMATRIX_ONLY_MIXES, MIXES, SUPPORTED_MIXES, is_quantized  # noqa: E402

# Every quantized TYPE llmcli produces (aliases such as Q4_K left out), and those that need an imatrix.
TYPES = [m for m in SUPPORTED_MIXES if is_quantized(MIXES[m].base) and not MIXES[m].note] + list(IMATRIX_ONLY_MIXES)


def differing_tensors(a: Path, b: Path) -> list[str]:
    from llmcli.gguf import GGUFReader

    def digests(path: Path) -> dict[str, tuple[str, str]]:
        with GGUFReader(path) as r:
            return {t.name: (t.type.name, hashlib.sha256(r.tensor_bytes(t).tobytes()).hexdigest()) for t in r.tensors}

    da, db = digests(a), digests(b)
    return [f"{name} ({da.get(name, ('-',))[0]} vs {db.get(name, ('-',))[0]})"
            for name in sorted(set(da) | set(db)) if da.get(name) != db.get(name)]


def run(cmd: list[str]) -> tuple[int, float, str]:
    began = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return done.returncode, time.monotonic() - began, (done.stdout + done.stderr)[-2000:]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("imatrix", type=Path)
    ap.add_argument("--bin", type=Path, default=Path("/work/scratch/llama/build/bin"))
    ap.add_argument("--types", default=",".join(TYPES))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json-out", type=Path, default=None)
    a = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="quantize-imatrix-") as tmp:
        for i, type_name in enumerate(a.types.split(","), 1):
            ours, theirs = Path(tmp) / "llmcli.gguf", Path(tmp) / "llama.gguf"
            for f in (ours, theirs):
                f.unlink(missing_ok=True)
            rc_l, s_l, log_l = run([str(a.bin / "llama-quantize"), "--imatrix", str(a.imatrix), str(a.model),
                                    str(theirs), type_name, str(a.threads)])
            rc_m, s_m, log_m = run([sys.executable, "-m", "llmcli", "quantize", str(a.model), str(ours), "--type",
                                    type_name, "--imatrix", str(a.imatrix), "--threads", str(a.threads)])
            entry = {"type": type_name, "llama_quantize_s": round(s_l, 1), "llmcli_s": round(s_m, 1)}
            if rc_l or rc_m:
                entry.update(identical=False, error={"llama-quantize": log_l if rc_l else None,
                                                     "llmcli": log_m if rc_m else None})
            else:
                same = subprocess.run(["cmp", "-s", str(ours), str(theirs)]).returncode == 0
                entry.update(identical=same, bytes=ours.stat().st_size,
                             sha256=hashlib.sha256(ours.read_bytes()).hexdigest())
                if not same:
                    entry["differing_tensors"] = differing_tensors(ours, theirs)
            results.append(entry)
            verdict = "identical" if entry["identical"] else "DIFFERENT"
            detail = f"{entry.get('bytes', 0):,} bytes, sha256 {entry.get('sha256', '-')[:16]}" if entry["identical"] \
                else "; ".join(entry.get("differing_tensors", [])[:5]) or "a command failed"
            print(f"[{i}/{len(a.types.split(','))}] {type_name:7s} {verdict}: {detail} "
                  f"(llama-quantize {s_l:.0f} s, llmcli {s_m:.0f} s)", flush=True)
    n_same = sum(r["identical"] for r in results)
    print(f"{n_same}/{len(results)} byte-identical")
    if a.json_out:
        a.json_out.write_text(json.dumps({"model": str(a.model), "imatrix": str(a.imatrix), "results": results},
                                         indent=1))
    return 0 if n_same == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
