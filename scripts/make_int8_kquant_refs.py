#!/usr/bin/env python3
"""Make ggml's own answers for Q4_K/Q5_K/Q6_K rows dotted with 8-bit (Q8_K) activations.

Calls the real ggml (libggml-base.so / libggml-cpu.so from the llama.cpp reference commit, as built
by llama-cpp-python 0.3.36) through ctypes:
  * `quantize_row_q4_K_ref` / `quantize_row_q5_K_ref` / `quantize_row_q6_K_ref` for the weight rows,
  * `quantize_row_q8_K` (the CPU backend's activation quantizer) for the activation blocks,
  * `ggml_vec_dot_q4_K_q8_K` / `_q5_K_q8_K` / `_q6_K_q8_K` (the CPU backend's SIMD dot products, what
    llama.cpp runs for a token) and their `_generic` C versions, one row at a time.

Activations: a 2560-vector with an all-zero super-block, a block 40x larger than the others, a block
whose largest magnitude occurs twice with opposite signs and a block of one repeated value; and a
plain 512-vector. Everything goes into one small npz at tests/data/kernels/int8_kquant_refs.npz;
the tests need neither ggml nor this script.

    /work/refvenv/bin/python scripts/make_int8_kquant_refs.py --libdir \
        /work/refvenv/lib/python3.11/site-packages/llama_cpp/lib
"""

from __future__ import annotations

import argparse
import ctypes
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "data" / "kernels" / "int8_kquant_refs.npz"
SEED = 20261122
QK_K = 256
Q8_K_BYTES = 4 + QK_K + 2 * 16  # float d, int8 qs[256], int16 bsums[16]
WEIGHT_BYTES = {"Q4_K": 144, "Q5_K": 176, "Q6_K": 210}
N_ROWS = 9


def activations(rng) -> dict[str, np.ndarray]:
    x = rng.standard_normal(2560).astype(np.float32)
    x[0:256] *= 40                                   # a block of a very different scale
    x[3 * 256:4 * 256] = 0                           # all zero: d = 0, codes 0
    x[5 * 256 + 7], x[5 * 256 + 100] = 9.0, -9.0     # largest |x| twice: the first one sets the sign
    x[7 * 256:8 * 256] = -1.25                       # one repeated value
    small = rng.standard_normal(512).astype(np.float32) * 0.01
    return {"x2560": x, "x512": small}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--libdir", required=True, help="folder holding libggml-base.so and libggml-cpu.so")
    args = ap.parse_args()
    libdir = Path(args.libdir)
    base = ctypes.CDLL(str(libdir / "libggml-base.so"), mode=ctypes.RTLD_GLOBAL)
    cpu = ctypes.CDLL(str(libdir / "libggml-cpu.so"))
    cpu.ggml_cpu_init()
    row_fn = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    for lib, name in ((base, "quantize_row_q4_K_ref"), (base, "quantize_row_q5_K_ref"), (base, "quantize_row_q6_K_ref"),
                      (cpu, "quantize_row_q8_K")):
        getattr(lib, name).argtypes = row_fn
        getattr(lib, name).restype = None
    dot_args = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t,
                ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    cpu.ggml_cpu_has_avx512_vnni.restype = ctypes.c_int

    rng = np.random.default_rng(SEED)
    out: dict[str, np.ndarray] = {}
    xs = activations(rng)
    for xname, x in xs.items():
        q8 = np.zeros(x.size // QK_K * Q8_K_BYTES, np.uint8)
        cpu.quantize_row_q8_K(x.ctypes.data, q8.ctypes.data, x.size)
        out[f"{xname}"] = x
        out[f"{xname}_q8k"] = q8.reshape(-1, Q8_K_BYTES)
        for tname, block_bytes in WEIGHT_BYTES.items():
            w = rng.standard_normal((N_ROWS, x.size)).astype(np.float32)
            w[1] = 0                                     # an all-zero row
            w[2, :256] *= 100                            # a row with one loud block
            raw = np.zeros((N_ROWS, x.size // QK_K * block_bytes), np.uint8)
            ggml_name = tname.lower().replace("_k", "_K")  # q4_K, q5_K, q6_K
            quant = getattr(base, f"quantize_row_{ggml_name}_ref")
            for r in range(N_ROWS):
                quant(w[r].ctypes.data, raw[r].ctypes.data, x.size)
            for suffix in ("", "_generic"):
                fn = getattr(cpu, f"ggml_vec_dot_{ggml_name}_q8_K{suffix}")
                fn.argtypes, fn.restype = dot_args, None
                dots = np.zeros(N_ROWS, np.float32)
                for r in range(N_ROWS):
                    s = ctypes.c_float()
                    fn(x.size, ctypes.byref(s), 0, raw[r].ctypes.data, 0, q8.ctypes.data, 0, 1)
                    dots[r] = s.value
                out[f"{tname}_{xname}_dot{suffix or '_simd'}"] = dots
            out[f"{tname}_{xname}_weights"] = raw
    out["cpu_has_avx512_vnni"] = np.array(cpu.ggml_cpu_has_avx512_vnni())
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT, **out)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes): {sorted(out)}")


if __name__ == "__main__":
    main()
