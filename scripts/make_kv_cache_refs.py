"""Record llama.cpp's logits with each KV cache type into tests/data/kv_cache/ (not run by the tests).

    python scripts/make_kv_cache_refs.py --llama-src .../llama.cpp --llama-build .../build

It compiles scripts/kv_logits_harness.cpp (our own small program) against the build's static
libraries (llama.cpp commit 0c1e570) and evaluates each model's reference prompt ids as one batch
with -ctk/-ctv f32, f16, q8_0 and q4_0 (both K and V of the type), 2 threads: f16, q8_0 and q4_0
with flash attention on (llama.cpp needs it for a quantized V cache), f32 with it off (with it on,
llama.cpp casts an f32 cache to f16 before its flash attention: that run is the f16 one), so the
f32 run is float32 throughout, the arithmetic llmcli's f32 cache has. Models: the K-quant test model (tests/data/kq/kq-f16.gguf, head size 64) and
the tiny checkpoints whose head size (32) divides the 32-value blocks - gemma and qwen3 -
converted to f32 with llmcli's converter, whose files are checked byte-identical to
convert_hf_to_gguf.py's (tests/data/gguf_ref/<name>-f32.json). The other tiny models have heads of
16 values: llama.cpp refuses a q8_0/q4_0 cache for them ("block size 32 does not divide
n_embd_head_k"), as llmcli does.

Writes tests/data/kv_cache/<model>.<type>.logits.npy (float32, prompt rows x vocabulary) and
index.json: per model the GGUF's sha256, the prompt ids, and per type the max/mean absolute
distance of its logits to the f32 run's (llama.cpp's own distance, the tests' tolerance).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT / "tests" / "data"
OUT = DATA / "kv_cache"
# KV cache type -> llama.cpp's -fa for its run (see the module doc)
TYPES = {"f32": "off", "f16": "on", "q8_0": "on", "q4_0": "on"}
# tiny model -> --pre (qwen3: a byte-level BPE vocabulary llama.cpp's hash table does not know,
# converted with the pre-tokenizer forced to qwen2 as for its reference GGUF)
TINY = {"gemma": None, "qwen3": "qwen2"}
LIBS = ["src/libllama.a", "ggml/src/libggml.a", "ggml/src/libggml-cpu.a", "ggml/src/libggml-base.a"]


def compile_harness(src: Path, build: Path, out: Path) -> None:
    includes = [f"-I{src / d}" for d in ("include", "ggml/include")]
    cmd = ["g++", "-std=c++17", "-O1", *includes, str(ROOT / "scripts" / "kv_logits_harness.cpp"), "-o", str(out),
           *[str(build / lib) for lib in LIBS], "-lpthread", "-fopenmp", "-ldl"]
    subprocess.run(cmd, check=True)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def models(work: Path) -> dict[str, tuple[Path, list[int]]]:
    """name -> (GGUF, prompt ids)."""
    from llmcli.convert.pipeline import convert

    found = {"kq": (DATA / "kq" / "kq-f16.gguf",
                    json.loads((DATA / "kq" / "hf" / "reference" / "prompt.json").read_text())["input_ids"])}
    for name, pre in TINY.items():
        gguf = work / name / f"{name}-f32.gguf"
        gguf.parent.mkdir()
        convert(DATA / "hf" / name, gguf, outtype="f32", pre=pre)
        expected = json.loads((DATA / "gguf_ref" / f"{name}-f32.json").read_text())["file_sha256"]
        if sha256(gguf) != expected:
            raise SystemExit(f"{gguf}: not the file convert_hf_to_gguf.py writes (sha256 differs)")
        ids = json.loads((DATA / "hf" / name / "reference" / "prompt.json").read_text())["input_ids"]
        found[name] = (gguf, ids)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--llama-src", type=Path, required=True, help="llama.cpp source tree (commit 0c1e570)")
    parser.add_argument("--llama-build", type=Path, required=True, help="its CMake build directory (static libs)")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    index = {"llama_cpp": "0c1e570", "flash_attn": TYPES, "threads": 2, "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        harness = work / "harness"
        compile_harness(args.llama_src, args.llama_build, harness)
        for name, (gguf, ids) in models(work).items():
            runs = {}
            for kind, flash_attn in TYPES.items():
                raw = work / f"{name}.{kind}.bin"
                subprocess.run([str(harness), str(gguf), kind, kind, flash_attn, ",".join(map(str, ids)), str(raw)],
                               check=True, capture_output=True)
                runs[kind] = np.fromfile(raw, np.float32).reshape(len(ids), -1)
                np.save(OUT / f"{name}.{kind}.logits.npy", runs[kind])
            index["models"][name] = {
                "gguf": str(gguf.relative_to(ROOT)) if gguf.is_relative_to(ROOT) else f"tests/data/hf/{name} -> f32",
                "gguf_sha256": sha256(gguf), "prompt_ids": ids,
                "vs_f32": {kind: {"max_abs": float(np.abs(runs[kind] - runs["f32"]).max()),
                                  "mean_abs": float(np.abs(runs[kind] - runs["f32"]).mean())} for kind in TYPES if kind != "f32"},
            }
            print(name, {k: round(v["max_abs"], 5) for k, v in index["models"][name]["vs_f32"].items()})
    (OUT / "index.json").write_text(json.dumps(index, indent=1) + "\n")


if __name__ == "__main__":
    main()
