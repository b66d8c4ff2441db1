"""Make tests/data/iquants/logits/: llama.cpp's logits on the kq model in every i-quant / ternary type.

Run by hand (not by the tests), after scripts/make_iquant_refs.py (whose quantize.json it follows):

    PYTHONPATH=. python scripts/make_iquant_logits_refs.py [--bin /work/scratch/llama/build/bin]
        [--llama-src .../vendor/llama.cpp] [--llama-build /work/scratch/llama/build] [TYPE ...]

For each ggml type of make_iquant_refs.PURE_TYPES (or the TYPEs given) it quantizes the kq model
(tests/data/kq/kq-f16.gguf) with `llama-quantize --imatrix kq.imatrix.gguf --pure` to that type, with
the options of the first --pure imatrix run of quantize.json that did not fail (ggml asserts on
token_embd, which has no importance data, for IQ1_S, IQ2_XXS and IQ2_XS: those carry
`--token-embedding-type Q8_0`), checks the file's sha256 against that run, and evaluates the
reference prompt ids (tests/data/kq/llamacpp/f16.json) as one batch with
scripts/kv_logits_harness.cpp, twice, as the shared K-quant references (kq/llamacpp/<TAG>.json) were
made:

* `native`: the quantized file, f16 KV cache, flash attention off, n_ctx 512, 2 threads (the
  llama-cpp-python settings of the shared references; the harness reproduces their Q4_0 logits
  bit for bit);
* `dequant_f32`: a copy with every tensor dequantized to F32 by ggml (`llama-quantize
  --allow-requantize --pure COPY F32`), F32 KV cache, flash attention off (reproduces the shared
  Q4_0 dequant_f32 logits bit for bit too): llama.cpp's float32 math on exactly the dequantized
  weights.

Writes `<TYPE>.logits.npy`, `<TYPE>.dequant_f32.logits.npy` (float32, prompt ids x vocabulary) and
`<TYPE>.json`: the commands, the quantized file's sha256, the settings, argmax per position and the
`dequant_f32.native_vs_dequant_f32` max/mean |native - dequant_f32| and argmax agreement (the key
names of the shared kq references), llama.cpp's own spread between its 8-bit-activation and float
paths, which is the tests' yardstick.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from make_iquant_refs import KQ, KQ_IMATRIX, OUT, PURE_TYPES, THREADS, run, sha256_file  # noqa: E402
from make_kv_cache_refs import compile_harness  # noqa: E402

LOGITS = OUT / "logits"
PROMPT = ROOT / "tests" / "data" / "kq" / "llamacpp" / "f16.json"
SETTINGS = {"n_threads": 2, "n_ctx": 512, "n_batch": 512, "flash_attn": "off", "logits_all": True}


def pure_imatrix_run(ggml_type: str) -> dict:
    """quantize.json's first --pure imatrix run to `ggml_type` that llama-quantize did not refuse."""
    runs = json.loads((OUT / "quantize.json").read_text())["runs"]
    return next(r for r in runs if r.get("ggml_type") == ggml_type and r["pure"] and r["imatrix"]
                and not r.get("failed"))


def checked(cmd: list[str], cwd: Path | None = None) -> None:
    res = run(cmd, cwd=cwd)
    if res.returncode:
        raise SystemExit(f"{cmd[0]} failed:\n{res.stdout[-2000:]}{res.stderr[-2000:]}")


def logits(harness: Path, gguf: Path, cache_type: str, ids: list[int], out: Path) -> np.ndarray:
    checked([str(harness), str(gguf), cache_type, cache_type, SETTINGS["flash_attn"], ",".join(map(str, ids)), str(out)])
    return np.fromfile(out, dtype=np.float32).reshape(len(ids), -1)


def distance(a: np.ndarray, b: np.ndarray) -> dict:
    return {"max_abs_diff": float(np.abs(a - b).max()), "mean_abs_diff": float(np.abs(a - b).mean()),
            "argmax_agree_fraction": float((a.argmax(1) == b.argmax(1)).mean())}


def record_type(ggml_type: str, exe: Path, harness: Path, ids: list[int], tmp: Path) -> dict:
    quantized_run = pure_imatrix_run(ggml_type)
    options, mix = quantized_run["options"], quantized_run["type"]
    quantized = tmp / f"kq-{ggml_type}.gguf"
    checked([str(exe), *options, str(KQ), str(quantized), mix, THREADS], cwd=KQ_IMATRIX.parent)
    if sha256_file(quantized) != quantized_run["file_sha256"]:
        raise SystemExit(f"{quantized}: not the file quantize.json recorded for {quantized_run['command']}")
    dequantized = tmp / f"kq-{ggml_type}-f32.gguf"
    checked([str(exe), "--allow-requantize", "--pure", str(quantized), str(dequantized), "F32", THREADS])
    native = logits(harness, quantized, "f16", ids, tmp / "native.f32")
    dequant = logits(harness, dequantized, "f32", ids, tmp / "dequant.f32")
    np.save(LOGITS / f"{ggml_type}.logits.npy", native)
    np.save(LOGITS / f"{ggml_type}.dequant_f32.logits.npy", dequant)
    return {
        "ggml_type": ggml_type, "gguf": quantized.name, "gguf_sha256": quantized_run["file_sha256"],
        "command": quantized_run["command"].replace("out.gguf", quantized.name),
        "options": options, "type_arg": mix, "prompt_ids": ids,
        "settings": {**SETTINGS, "kv_cache": "f16"},
        "logits_file": f"logits/{ggml_type}.logits.npy", "logits_shape": list(native.shape),
        "argmax_per_position": native.argmax(1).tolist(),
        "dequant_f32": {
            "logits_file": f"logits/{ggml_type}.dequant_f32.logits.npy",
            "how": "llama.cpp on a copy with every tensor dequantized to F32 by ggml, F32 KV cache, flash attention off",
            "command": f"llama-quantize --allow-requantize --pure {quantized.name} {dequantized.name} F32 {THREADS}",
            "argmax_per_position": dequant.argmax(1).tolist(),
            "native_vs_dequant_f32": distance(native, dequant),
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", type=Path, default=Path("/work/scratch/llama/build/bin"))
    ap.add_argument("--llama-src", type=Path,
                    default=Path("/work/scratch/llama/sdist/llama_cpp_python-0.3.36/vendor/llama.cpp"))
    ap.add_argument("--llama-build", type=Path, default=Path("/work/scratch/llama/build"))
    ap.add_argument("types", nargs="*", metavar="TYPE", help=f"some of {' '.join(PURE_TYPES)} (default: all)")
    args = ap.parse_args()
    unknown = sorted(set(args.types) - set(PURE_TYPES))
    if unknown:
        ap.error(f"unknown type {unknown[0]} (known: {' '.join(PURE_TYPES)})")
    LOGITS.mkdir(parents=True, exist_ok=True)
    ids = json.loads(PROMPT.read_text())["prompt_ids"]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        harness = tmp / "harness"
        compile_harness(args.llama_src, args.llama_build, harness)
        for ggml_type in args.types or PURE_TYPES:
            record = {"llama_cpp": "0c1e570 (llama-cpp-python 0.3.36)", "input": "tests/data/kq/kq-f16.gguf",
                      "input_sha256": sha256_file(KQ), "imatrix": "tests/data/imatrix/kq.imatrix.gguf",
                      "imatrix_sha256": sha256_file(KQ_IMATRIX),
                      **record_type(ggml_type, args.bin / "llama-quantize", harness, ids, tmp)}
            (LOGITS / f"{ggml_type}.json").write_text(json.dumps(record, indent=1) + "\n")
            own = record["dequant_f32"]["native_vs_dequant_f32"]
            print(f"{ggml_type}: native vs dequant_f32 max {own['max_abs_diff']:.4f} mean {own['mean_abs_diff']:.4f} "
                  f"argmax {own['argmax_agree_fraction']:.3f}", file=sys.stderr)


if __name__ == "__main__":
    main()
