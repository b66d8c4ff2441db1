"""Make tests/data/iquants/: what llama.cpp 0c1e570 makes of the i-quant and ternary types.

Run by hand (not by the tests):

    PYTHONPATH=. python scripts/make_iquant_refs.py [--bin /work/scratch/llama/build/bin]
        [--llama-src .../vendor/llama.cpp] [--llama-build /work/scratch/llama/build]
        [--demo DEMO-F16.gguf --demo-imatrix DEMO.imatrix.gguf]

It writes:

* `quantize.json`: `llama-quantize [--imatrix kq.imatrix.gguf] [--pure] kq-f16.gguf OUT TYPE 2` on
  the kq model (tests/data/kq) for every i-quant / ternary mix (MIXES) and, with --pure, every such
  ggml type (PURE_TYPES), each with and without the imatrix (tests/data/imatrix/kq.imatrix.gguf).
  --pure takes a mix name and gives every tensor its base type, so ggml's IQ2_S comes from the mix
  IQ2_M (the mix IQ2_S is based on IQ2_XS): PURE_TYPES maps type -> mix name. token_embd never has
  importance data (llama-imatrix sees no product with it), so --pure to IQ1_S, IQ2_XXS, IQ2_XS or
  IQ2_S aborts in ggml (GGML_ASSERT(imatrix != NULL), recorded as failed); those are run once more
  with `--token-embedding-type Q8_0` (EMBD_OVERRIDE). Per run: the command, whether llama-quantize
  refused (and its error lines), else the output's sha256 and size and per tensor (file order)
  name, type and data sha256. The quantized files are not kept (2-4 MB each).
* `quantize-demo.json` (with --demo): the same with the imatrix only, on an f16 GGUF of the demo
  model (the files are not in the repository; the tests do not read this one).
* `dequantize.npz`: ggml's `to_float` (the type traits of the static libggml-base, called by
  scripts/iquant_ref_harness.cpp, compiled here) on blocks of every type in PURE_TYPES:
  `<TYPE>.blocks` (uint8, blocks x block bytes) and `<TYPE>.values` (float32, blocks x 256 or 32).
  RANDOM_BLOCKS blocks are random bytes with their fp16 scale(s) replaced by random finite fp16
  values (every other byte pattern is a valid block of these formats: grid indices cover their
  whole bit range, ternary digits decode by integer arithmetic whatever the byte); then up to
  QUANTIZED_BLOCKS blocks taken from the --pure imatrix outputs of the kq model (real blocks).
* `quantize_rows.npz`: `ggml_quantize_chunk` (through the harness) on ROWS x COLS random float32
  values (`rows`, a normal mix with a few outliers and some zero rows) with per-column importance
  weights (`weights`) and without: `<TYPE>.weighted` and `<TYPE>.plain` (uint8, rows x row
  bytes); no `.plain` for the types whose ggml quantizer asserts it has weights (NEEDS_WEIGHTS).
* `vec_dot.npz` (alone with --vec-dot-only, from the two files above): ggml-cpu's mat-vec step for
  every type in PURE_TYPES, as the CPU backend's mul_mat does it for one weight row and one
  activation column: the activation through the `from_float` of the type's `vec_dot_type` (Q8_K,
  or Q8_0 for IQ4_NL), then the type's `vec_dot` (`ggml_get_type_traits_cpu`, the static
  libggml-cpu of the build: AVX-512 code). Keys per type: `<TYPE>.blocks` (uint8, rows x row bytes
  of COLS values: the ROWS `.weighted` rows of quantize_rows.npz, then VEC_DOT_REAL_ROWS rows of
  real kq blocks from dequantize.npz, then VEC_DOT_RANDOM_ROWS rows of random blocks with scales
  of moderate size), `<TYPE>.x` (float32, vectors x COLS: normal, outliers, zero blocks, one sign,
  large, all zero), `<TYPE>.dot` (float32, vectors x rows) and `<TYPE>.xq` (uint8, vectors x the
  vec_dot_type's row bytes: the quantized activations vec_dot read); `vec_dot_type` (a string
  array, the ggml name of each type's activation type, in the order of `types`) and `types`.
* `tests/data/kernels/int8_vec_dot.npz` (alone with --int8-only, from quantize_rows.npz): the same
  record for the legacy and K-quant types whose 8-bit-activation kernels are not checked elsewhere
  against ggml (INT8_TYPES: Q4_1 and Q5_1 with Q8_1 activations, Q2_K and Q3_K with Q8_K), same
  keys; the rows are quantize_rows.npz's `rows` through ggml_quantize_chunk with its `weights`, then
  without, then VEC_DOT_RANDOM_ROWS rows of random blocks with scales of moderate size.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
OUT = ROOT / "tests" / "data" / "iquants"
INT8_OUT = ROOT / "tests" / "data" / "kernels" / "int8_vec_dot.npz"
KQ = ROOT / "tests" / "data" / "kq" / "kq-f16.gguf"
KQ_IMATRIX = ROOT / "tests" / "data" / "imatrix" / "kq.imatrix.gguf"

MIXES = ["IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ3_XXS", "IQ3_XS", "IQ3_S", "IQ3_M",
         "IQ4_NL", "IQ4_XS", "TQ1_0", "TQ2_0"]
# ggml type -> the llama-quantize type name whose --pure run gives every tensor that type
PURE_TYPES = {"IQ1_S": "IQ1_S", "IQ1_M": "IQ1_M", "IQ2_XXS": "IQ2_XXS", "IQ2_XS": "IQ2_XS", "IQ2_S": "IQ2_M",
              "IQ3_XXS": "IQ3_XXS", "IQ3_S": "IQ3_S", "IQ4_NL": "IQ4_NL", "IQ4_XS": "IQ4_XS", "TQ1_0": "TQ1_0",
              "TQ2_0": "TQ2_0"}
# ggml refuses these types without importance weights, which token_embd never has
EMBD_OVERRIDE = {"IQ1_S", "IQ2_XXS", "IQ2_XS", "IQ2_S"}
NEEDS_WEIGHTS = {"IQ1_S", "IQ2_XXS", "IQ2_XS"}   # GGML_ASSERT(quant_weights) in their quantize_row_*_impl
# Not i-quants: their 8-bit-activation kernels against ggml's vec_dot (int8_vec_dot.npz)
INT8_TYPES = ["Q4_1", "Q5_1", "Q2_K", "Q3_K"]

# Byte offsets of the fp16 scales of each block (IQ1_M has none: its scale is spread over the top
# nibbles of its four u16 `scales`, handled in finite_scales).
FP16_AT = {"IQ1_S": [0], "IQ2_XXS": [0], "IQ2_XS": [0], "IQ2_S": [0], "IQ3_XXS": [0], "IQ3_S": [0],
           "IQ4_NL": [0], "IQ4_XS": [0], "TQ1_0": [52], "TQ2_0": [64], "IQ1_M": [],
           "Q4_1": [0, 2], "Q5_1": [0, 2], "Q2_K": [80, 82], "Q3_K": [108]}
IQ1_M_SCALES_AT = 48
RANDOM_BLOCKS = 256
QUANTIZED_BLOCKS = 256
ROWS, COLS = 16, 512
VEC_DOT_REAL_ROWS = 8
VEC_DOT_RANDOM_ROWS = 8
THREADS = "2"


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    print("$", " ".join(cmd), file=sys.stderr)
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)


def describe_quantized(path: Path) -> dict:
    from llmcli.gguf import GGUFReader

    with GGUFReader(path) as r:
        tensors = [[t.name, t.type.name, hashlib.sha256(r.tensor_bytes(t).tobytes()).hexdigest()]
                   for t in r.tensors]
    return {"file_sha256": sha256_file(path), "file_bytes": path.stat().st_size, "tensors": tensors}


def quantize_runs(exe: Path, model: Path, imatrix: Path, with_plain: bool, keep: dict[str, Path] | None,
                  tmp: Path) -> list[dict]:
    """Every mix and every --pure type, with the imatrix and (with_plain) without one. `keep`: for
    --pure imatrix runs, where to leave the output (ggml type name -> path) for block sampling."""
    jobs = [(t, t, []) for t in MIXES]
    for ggml_type, mix in PURE_TYPES.items():
        jobs.append((ggml_type, mix, ["--pure"]))
        if ggml_type in EMBD_OVERRIDE:
            jobs.append((ggml_type, mix, ["--pure", "--token-embedding-type", "Q8_0"]))
    runs = []
    for ggml_type, mix, extra in jobs:
        pure = "--pure" in extra
        for use_imatrix in ((True, False) if with_plain else (True,)):
            options = (["--imatrix", imatrix.name] if use_imatrix else []) + extra
            out = tmp / "out.gguf"
            out.unlink(missing_ok=True)
            cmd = [str(exe), *options, str(model), str(out), mix, THREADS]
            res = run(cmd, cwd=imatrix.parent)   # the file name as given goes into quantize.imatrix.file
            entry = {"type": mix, "pure": pure, "imatrix": use_imatrix, "options": options,
                     "command": " ".join(["llama-quantize", *options, model.name, "out.gguf", mix, THREADS])}
            if pure:
                entry["ggml_type"] = ggml_type
            if res.returncode or not out.exists():
                entry["failed"] = True
                entry["error"] = [line.strip().replace(str(model), model.name)
                                  for line in (res.stdout + res.stderr).splitlines()
                                  if re.search(r"error|ERROR|failed|offending|target type", line)][-6:]
            else:
                entry.update(describe_quantized(out))
                if keep is not None and pure and use_imatrix:
                    keep[ggml_type] = out.rename(tmp / f"{ggml_type}-pure.gguf")
            runs.append(entry)
    return runs


def compile_harness(src: Path, build: Path, out: Path) -> None:
    libs = [str(build / "ggml" / "src" / lib) for lib in ("libggml-cpu.a", "libggml-base.a")]
    cmd = ["g++", "-std=c++17", "-O1", f"-I{src / 'ggml' / 'include'}", str(ROOT / "scripts" / "iquant_ref_harness.cpp"),
           "-o", str(out), *libs, "-lpthread", "-lm", "-fopenmp"]
    print("$", " ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, check=True)


def finite_scales(type_name: str, blocks: np.ndarray, rng: np.random.Generator,
                  scales: np.ndarray | None = None) -> None:
    """Replace the fp16 scale(s) of random blocks by random finite fp16 values (no inf/nan), or
    by the given `scales` (one float16 per block)."""
    n = blocks.shape[0]
    if scales is None:
        scales = rng.integers(0, 1 << 16, n, dtype=np.uint16)
        scales[(scales & 0x7C00) == 0x7C00] &= np.uint16(0xBFFF)   # exponent 31 (inf/nan) -> 15
    else:
        scales = np.ascontiguousarray(scales, dtype=np.float16).view(np.uint16)
    for at in FP16_AT[type_name]:
        blocks[:, at:at + 2] = scales.view(np.uint8).reshape(n, 2)
    if type_name == "IQ1_M":
        sc = blocks[:, IQ1_M_SCALES_AT:IQ1_M_SCALES_AT + 8].copy().view("<u2")
        for i in range(4):
            sc[:, i] = (sc[:, i] & 0x0FFF) | (((scales >> (4 * i)) & 0xF) << 12)
        blocks[:, IQ1_M_SCALES_AT:IQ1_M_SCALES_AT + 8] = sc.view(np.uint8)


def dequantize_refs(harness: Path, quantized: dict[str, Path], tmp: Path) -> dict[str, np.ndarray]:
    from llmcli.gguf import GGUFReader
    from llmcli.gguf.constants import TYPE_BY_NAME, TYPE_INFO

    rng = np.random.default_rng(17)
    arrays = {}
    for type_name in PURE_TYPES:
        info = TYPE_INFO[TYPE_BY_NAME[type_name]]
        random_blocks = rng.integers(0, 256, (RANDOM_BLOCKS, info.block_bytes), dtype=np.uint8)
        finite_scales(type_name, random_blocks, rng)
        real = []
        with GGUFReader(quantized[type_name]) as r:
            for t in r.tensors:
                if t.type.name == type_name:
                    real.append(np.asarray(r.tensor_bytes(t)).reshape(-1, info.block_bytes))
        real = np.concatenate(real)
        real = real[rng.choice(len(real), min(QUANTIZED_BLOCKS, len(real)), replace=False)]
        blocks = np.ascontiguousarray(np.concatenate([random_blocks, real]))
        (tmp / "blocks.bin").write_bytes(blocks.tobytes())
        subprocess.run([str(harness), "dequantize", type_name, str(len(blocks)), str(tmp / "blocks.bin"),
                        str(tmp / "values.f32")], check=True)
        values = np.fromfile(tmp / "values.f32", dtype=np.float32).reshape(len(blocks), info.block_size)
        arrays[f"{type_name}.blocks"] = blocks
        arrays[f"{type_name}.values"] = values
    return arrays


def quantize_row_refs(harness: Path, tmp: Path) -> dict[str, np.ndarray]:
    from llmcli.gguf.constants import TYPE_BY_NAME, TYPE_INFO

    rng = np.random.default_rng(1717)
    rows = rng.standard_normal((ROWS, COLS)).astype(np.float32) * np.float32(0.02)
    rows[1] *= np.float32(40.0)                                   # large values
    rows[2, ::37] *= np.float32(30.0)                             # outliers
    rows[3] = 0.0                                                  # all zero
    rows[4, :256] = 0.0                                            # a zero super-block
    rows[5] = np.abs(rows[5])                                      # one sign only
    rows[6, 100:300] = 0.0                                         # zero runs across sub-blocks
    weights = (rng.random(COLS).astype(np.float32) ** 3 * np.float32(5.0)).astype(np.float32)
    weights[::50] = 0.0
    (tmp / "rows.f32").write_bytes(rows.tobytes())
    (tmp / "weights.f32").write_bytes(weights.tobytes())
    arrays = {"rows": rows, "weights": weights}
    for type_name in PURE_TYPES:
        row_bytes = TYPE_INFO[TYPE_BY_NAME[type_name]].row_bytes(COLS)
        for label, weight_arg in (("weighted", str(tmp / "weights.f32")), ("plain", "-")):
            if label == "plain" and type_name in NEEDS_WEIGHTS:
                continue
            subprocess.run([str(harness), "quantize", type_name, str(ROWS), str(COLS), str(tmp / "rows.f32"),
                            weight_arg, str(tmp / "out.bin")], check=True)
            arrays[f"{type_name}.{label}"] = np.fromfile(tmp / "out.bin", dtype=np.uint8).reshape(ROWS, row_bytes)
    return arrays


def activation_vectors(rng: np.random.Generator) -> np.ndarray:
    """The activation columns of vec_dot.npz, one per row."""
    x = rng.standard_normal((6, COLS)).astype(np.float32)
    x[1, ::37] *= np.float32(30.0)                                 # outliers
    x[2, :256] = 0.0                                               # a zero super-block
    x[2, 288:320] = 0.0                                            # a zero 32-block
    x[3] = np.abs(x[3])                                            # one sign only
    x[4] *= np.float32(100.0)                                      # large values
    x[5] = 0.0                                                     # all zero
    return x


def vec_dot_refs(harness: Path, dequantized: dict[str, np.ndarray], quantized_rows: dict[str, np.ndarray],
                 tmp: Path) -> dict[str, np.ndarray]:
    from llmcli.gguf.constants import TYPE_BY_NAME, TYPE_INFO

    rng = np.random.default_rng(1718)
    x = activation_vectors(rng)
    arrays: dict[str, np.ndarray] = {}
    act_types = []
    for type_name in PURE_TYPES:
        info = TYPE_INFO[TYPE_BY_NAME[type_name]]
        row_bytes = info.row_bytes(COLS)
        per_row = COLS // info.block_size
        real = dequantized[f"{type_name}.blocks"][RANDOM_BLOCKS:]
        real = real[rng.choice(len(real), VEC_DOT_REAL_ROWS * per_row, replace=False)]
        random_blocks = rng.integers(0, 256, (VEC_DOT_RANDOM_ROWS * per_row, info.block_bytes), dtype=np.uint8)
        magnitudes = np.exp(rng.uniform(np.log(1e-4), np.log(0.05), len(random_blocks)))
        finite_scales(type_name, random_blocks, rng, magnitudes * rng.choice([-1.0, 1.0], len(random_blocks)))
        rows = np.ascontiguousarray(np.concatenate([quantized_rows[f"{type_name}.weighted"],
                                                    real.reshape(-1, row_bytes), random_blocks.reshape(-1, row_bytes)]))
        act_types.append(record_vec_dot(harness, type_name, rows, x, tmp, arrays))
    arrays["types"] = np.array(list(PURE_TYPES))
    arrays["vec_dot_type"] = np.array(act_types)
    return arrays


def record_vec_dot(harness: Path, type_name: str, rows: np.ndarray, x: np.ndarray, tmp: Path,
                   arrays: dict[str, np.ndarray]) -> str:
    """ggml's from_float + vec_dot of every row of `rows` (uint8, rows x row bytes) with every vector
    of `x` into arrays[`<TYPE>.blocks|.x|.dot|.xq`]; returns the vec_dot_type's name."""
    (tmp / "rows.bin").write_bytes(rows.tobytes())
    (tmp / "x.f32").write_bytes(x.tobytes())
    res = subprocess.run([str(harness), "vec_dot", type_name, str(len(rows)), str(x.shape[1]), str(tmp / "rows.bin"),
                          str(len(x)), str(tmp / "x.f32"), str(tmp / "dot.f32"), str(tmp / "xq.bin")],
                         check=True, capture_output=True, text=True)
    arrays[f"{type_name}.blocks"] = rows
    arrays[f"{type_name}.x"] = x
    arrays[f"{type_name}.dot"] = np.fromfile(tmp / "dot.f32", dtype=np.float32).reshape(len(x), len(rows))
    arrays[f"{type_name}.xq"] = np.fromfile(tmp / "xq.bin", dtype=np.uint8).reshape(len(x), -1)
    return res.stdout.strip().upper()


def int8_vec_dot_refs(harness: Path, quantized_rows: dict[str, np.ndarray], tmp: Path) -> dict[str, np.ndarray]:
    """int8_vec_dot.npz's arrays (module docstring)."""
    from llmcli.gguf.constants import TYPE_BY_NAME, TYPE_INFO

    rng = np.random.default_rng(1719)
    x = activation_vectors(rng)
    rows_f32 = quantized_rows["rows"]
    (tmp / "rows.f32").write_bytes(rows_f32.tobytes())
    (tmp / "weights.f32").write_bytes(quantized_rows["weights"].tobytes())
    arrays: dict[str, np.ndarray] = {}
    act_types = []
    for type_name in INT8_TYPES:
        info = TYPE_INFO[TYPE_BY_NAME[type_name]]
        row_bytes = info.row_bytes(COLS)
        quantized = []
        for weight_arg in (str(tmp / "weights.f32"), "-"):
            subprocess.run([str(harness), "quantize", type_name, str(len(rows_f32)), str(COLS), str(tmp / "rows.f32"),
                            weight_arg, str(tmp / "out.bin")], check=True)
            quantized.append(np.fromfile(tmp / "out.bin", dtype=np.uint8).reshape(len(rows_f32), row_bytes))
        per_row = COLS // info.block_size
        random_blocks = rng.integers(0, 256, (VEC_DOT_RANDOM_ROWS * per_row, info.block_bytes), dtype=np.uint8)
        magnitudes = np.exp(rng.uniform(np.log(1e-4), np.log(0.05), len(random_blocks)))
        finite_scales(type_name, random_blocks, rng, magnitudes * rng.choice([-1.0, 1.0], len(random_blocks)))
        rows = np.ascontiguousarray(np.concatenate(quantized + [random_blocks.reshape(-1, row_bytes)]))
        act_types.append(record_vec_dot(harness, type_name, rows, x, tmp, arrays))
    arrays["types"] = np.array(INT8_TYPES)
    arrays["vec_dot_type"] = np.array(act_types)
    return arrays


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", type=Path, default=Path("/work/scratch/llama/build/bin"))
    ap.add_argument("--llama-src", type=Path,
                    default=Path("/work/scratch/llama/sdist/llama_cpp_python-0.3.36/vendor/llama.cpp"))
    ap.add_argument("--llama-build", type=Path, default=Path("/work/scratch/llama/build"))
    ap.add_argument("--demo", type=Path, help="an f16 GGUF of the demo model")
    ap.add_argument("--demo-imatrix", type=Path, help="llama-imatrix's file for it")
    ap.add_argument("--demo-only", action="store_true", help="only (re)make quantize-demo.json")
    ap.add_argument("--vec-dot-only", action="store_true",
                    help="only (re)make vec_dot.npz, from the recorded dequantize.npz and quantize_rows.npz")
    ap.add_argument("--int8-only", action="store_true",
                    help="only (re)make tests/data/kernels/int8_vec_dot.npz, from the recorded quantize_rows.npz")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    exe = args.bin / "llama-quantize"
    llama = "0c1e570 (llama-cpp-python 0.3.36)"
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if args.int8_only:
            harness = tmp / "harness"
            compile_harness(args.llama_src, args.llama_build, harness)
            with np.load(OUT / "quantize_rows.npz") as qr:
                arrays = int8_vec_dot_refs(harness, dict(qr), tmp)
            np.savez_compressed(INT8_OUT, **arrays)
            print(f"wrote {INT8_OUT}", file=sys.stderr)
        elif args.vec_dot_only:
            harness = tmp / "harness"
            compile_harness(args.llama_src, args.llama_build, harness)
            with np.load(OUT / "dequantize.npz") as dq, np.load(OUT / "quantize_rows.npz") as qr:
                arrays = vec_dot_refs(harness, dict(dq), dict(qr), tmp)
            np.savez_compressed(OUT / "vec_dot.npz", **arrays)
        elif not args.demo_only:
            kept: dict[str, Path] = {}
            record = {"llama_cpp": llama, "input": "tests/data/kq/kq-f16.gguf", "input_sha256": sha256_file(KQ),
                      "imatrix": "tests/data/imatrix/kq.imatrix.gguf", "imatrix_sha256": sha256_file(KQ_IMATRIX),
                      "runs": quantize_runs(exe, KQ, KQ_IMATRIX, True, kept, tmp)}
            (OUT / "quantize.json").write_text(json.dumps(record, indent=1) + "\n")
            harness = tmp / "harness"
            compile_harness(args.llama_src, args.llama_build, harness)
            dequantized = dequantize_refs(harness, kept, tmp)
            quantized_rows = quantize_row_refs(harness, tmp)
            np.savez_compressed(OUT / "dequantize.npz", **dequantized)
            np.savez_compressed(OUT / "quantize_rows.npz", **quantized_rows)
            np.savez_compressed(OUT / "vec_dot.npz", **vec_dot_refs(harness, dequantized, quantized_rows, tmp))
        if args.demo:
            record = {"llama_cpp": llama, "input": args.demo.name, "input_sha256": sha256_file(args.demo),
                      "imatrix": args.demo_imatrix.name, "imatrix_sha256": sha256_file(args.demo_imatrix),
                      "runs": quantize_runs(exe, args.demo, args.demo_imatrix, False, None, tmp)}
            (OUT / "quantize-demo.json").write_text(json.dumps(record, indent=1) + "\n")
    if not args.int8_only:
        print(f"wrote {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
