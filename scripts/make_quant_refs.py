#!/usr/bin/env python3
"""Make ggml's own answers for the float/legacy/IQ4 block formats on edge cases.

Calls the real ggml (libggml-base.so from the llama.cpp reference commit, as built by
llama-cpp-python 0.3.36 — the library llama-quantize links) through ctypes:
  * `ggml_quantize_chunk` (the function llama-quantize calls, no imatrix) for F16, BF16, Q4_0, Q4_1,
    Q5_0, Q5_1, Q8_0, IQ4_NL, IQ4_XS; the type's `from_float_ref` for Q8_1 (not a storage type);
  * the type's `to_float` (dequantize_row_*) on those blocks and on random blocks.

Inputs are edge-case rows (zeros and signed zeros, constants, ties for roundf and for fp16/bf16
rounding, a lone value, +/-max in both orders, subnormal and huge magnitudes, inf, NaN) plus random
heavy-tailed rows. Everything goes into one small npz at tests/data/quants/ggml_refs.npz; the tests
need neither ggml nor this script.

    /work/refvenv/bin/python scripts/make_quant_refs.py --libggml /path/to/libggml-base.so
    (llama-cpp-python installs it as site-packages/llama_cpp/lib/libggml-base.so)
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "data" / "quants" / "ggml_refs.npz"

# ggml type ids (ggml.h) and (block size, bytes per block)
TYPES = {
    "F16": (1, 1, 2), "BF16": (30, 1, 2),
    "Q4_0": (2, 32, 18), "Q4_1": (3, 32, 20), "Q5_0": (6, 32, 22), "Q5_1": (7, 32, 24),
    "Q8_0": (8, 32, 34), "Q8_1": (9, 32, 36), "IQ4_NL": (20, 32, 18), "IQ4_XS": (23, 256, 136),
}
NOT_IN_QUANTIZE_CHUNK = {"Q8_1"}
NO_TO_FLOAT = {"Q8_1"}
FP16_FIELDS = {"Q4_1": (0, 2), "Q5_1": (0, 2)}  # byte offsets of fp16 fields (default: d at 0)
ROW = 256  # one IQ4_XS super-block, eight 32-blocks
SEED = 20261122


class TypeTraits(ctypes.Structure):
    _fields_ = [("type_name", ctypes.c_char_p), ("blck_size", ctypes.c_int64),
                ("blck_size_interleave", ctypes.c_int64), ("type_size", ctypes.c_size_t),
                ("is_quantized", ctypes.c_bool), ("to_float", ctypes.c_void_p),
                ("from_float_ref", ctypes.c_void_p)]


ROW_FN = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)


class Ggml:
    def __init__(self, path: str):
        self.lib = ctypes.CDLL(path)
        self.lib.ggml_get_type_traits.restype = ctypes.POINTER(TypeTraits)
        self.lib.ggml_get_type_traits.argtypes = [ctypes.c_int]
        self.lib.ggml_quantize_chunk.restype = ctypes.c_size_t
        self.lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
                                                 ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                                                 ctypes.c_void_p]

    def quantize(self, name: str, rows: np.ndarray) -> np.ndarray:
        type_id, block, nbytes = TYPES[name]
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        n, k = rows.shape
        out = np.zeros((n, k // block * nbytes), dtype=np.uint8)
        if name in NOT_IN_QUANTIZE_CHUNK:
            fn = ROW_FN(self.lib.ggml_get_type_traits(type_id).contents.from_float_ref)
            fn(rows.ctypes.data, out.ctypes.data, rows.size)
        else:
            written = self.lib.ggml_quantize_chunk(type_id, rows.ctypes.data, out.ctypes.data,
                                                   0, n, k, None)
            assert written == out.nbytes, (name, written, out.nbytes)
        return out

    def dequantize(self, name: str, raw: np.ndarray) -> np.ndarray:
        type_id, block, nbytes = TYPES[name]
        raw = np.ascontiguousarray(raw, dtype=np.uint8)
        n, row_bytes = raw.shape
        out = np.zeros((n, row_bytes // nbytes * block), dtype=np.float32)
        fn = ROW_FN(self.lib.ggml_get_type_traits(type_id).contents.to_float)
        fn(raw.ctypes.data, out.ctypes.data, out.size)
        return out


def bits(u32) -> np.ndarray:
    return np.asarray(u32, dtype=np.uint32).view(np.float32)


def edge_rows(rng: np.random.Generator) -> np.ndarray:
    """Rows of 256 floats, each 32-block a different trap for one of the block formats."""
    blocks = []

    def add(values):
        v = np.zeros(32, dtype=np.float32)
        values = np.asarray(values, dtype=np.float32).ravel()
        v[:len(values)] = values
        blocks.append(v)

    add(np.zeros(32))
    add(np.full(32, -0.0))
    add(np.where(np.arange(32) % 2, 0.0, -0.0))
    add(np.full(32, 0.01))
    add(np.full(32, -3.0))
    add(np.full(32, 1e-3))
    lone = np.zeros(32); lone[3] = 0.5; add(lone)
    lone = np.zeros(32); lone[20] = -0.5; add(lone)
    # equal magnitudes of both signs: the first one sets the sign of d (Q4_0, Q5_0)
    add(np.r_[2.0, -2.0, np.linspace(-1.5, 1.5, 30)])
    add(np.r_[-2.0, 2.0, np.linspace(-1.5, 1.5, 30)])
    # roundf ties for Q8_0/Q8_1 (amax 127 -> d 1, id 1): halves must round away from zero
    add(np.r_[127.0, -127.0, np.arange(-14.5, 15.5, 1.0)[:30]])
    add(np.r_[-127.0, np.arange(0.5, 31.5, 1.0)])
    # Q4_0 with max -8 (d = 1): x + 8.5 lands on integers and halves
    add(np.r_[-8.0, np.arange(-7.5, 7.5, 0.5)[:31]])
    add(np.r_[-16.0, np.arange(-15.5, 15.5, 1.0)])  # Q5_0 likewise
    # Q4_1/Q5_1: min 0, max 15 / 31 -> d 1, values on halves
    add(np.r_[0.0, 15.0, np.arange(0.5, 15.0, 0.5)[:30]])
    add(np.r_[0.0, 31.0, np.arange(0.5, 31.0, 1.0)[:30]])
    # scales at the edges of fp16: subnormal, underflow, overflow
    add(rng.standard_normal(32) * 1e-5)
    add(rng.standard_normal(32) * 1e-7)
    add(rng.standard_normal(32) * 1e-30)
    add(rng.standard_normal(32) * 1e-40)   # float32 subnormal inputs: 1/d overflows to inf
    add(np.r_[bits(1), np.zeros(31)])       # smallest subnormal alone
    add(rng.standard_normal(32) * 1e4)
    add(rng.standard_normal(32) * 1e6)      # d beyond fp16 range
    add(np.r_[3.0e38, -3.0e38, rng.standard_normal(30)])  # max - min overflows float32
    add(np.r_[np.inf, rng.standard_normal(31)])
    add(np.r_[-np.inf, rng.standard_normal(31)])
    add(np.r_[np.nan, rng.standard_normal(31)])
    add(np.r_[rng.standard_normal(31), np.nan])
    add(np.r_[np.inf, -np.inf, np.zeros(30)])
    add(np.full(32, 65504.0))
    add(np.full(32, 65520.0))               # rounds to fp16 inf
    add(np.linspace(-1, 1, 32))
    data = np.stack(blocks)
    pad = (-len(data)) % (ROW // 32)
    if pad:
        data = np.concatenate([data, rng.standard_normal((pad, 32)).astype(np.float32)])
    return data.reshape(-1, ROW)


def random_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    """Heavy-tailed rows at varied scales, like real weights with outliers."""
    z = rng.standard_normal((n, ROW))
    outliers = rng.random((n, ROW)) < 0.03
    z[outliers] = 2 * rng.standard_t(3, outliers.sum())
    scale = np.exp(rng.normal(-3, 1.5, (n, 1)))
    return (z * scale).astype(np.float32)


def float_conversion_inputs(rng: np.random.Generator) -> np.ndarray:
    """float32 values at fp16 and bf16 rounding decisions (exact ties and one ulp either side),
    every finite fp16 value, specials (NaN payloads, inf, extremes, subnormals) and random bits."""
    f16_values = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32)
    f16_values = np.unique(f16_values[np.isfinite(f16_values)].astype(np.float64))
    ties16 = ((f16_values[:-1] + f16_values[1:]) / 2).astype(np.float32)[::8]
    ties_bf = bits((rng.integers(0, 1 << 16, 4096, dtype=np.uint32) << 16) | 0x8000)
    specials = bits(np.array([
        0x00000000, 0x80000000, 0x7F800000, 0xFF800000, 0x7FC00000, 0xFFC00000, 0x7F800001,
        0xFF800001, 0x7FA00000, 0x7FFFFFFF, 0xFFFFFFFF, 0x7FC02000, 0x7F7FFFFF, 0xFF7FFFFF,
        0x7F7F8000, 0x7F7F7FFF, 0x00000001, 0x80000001, 0x007FFFFF, 0x00800000, 0x00008000,
        0x00018000, 0x477FE000, 0x477FF000, 0x477FEFFF, 0x33000000, 0x33000001, 0x32FFFFFF,
        0x387FC000, 0x38800000, 0x3F808000, 0x3F818000, 0x3F808001, 0x3F807FFF, 0xBF808000,
        0xBF818000], dtype=np.uint32))
    random_bits = bits(rng.integers(0, 1 << 32, 1 << 14, dtype=np.uint64).astype(np.uint32))
    up, down = np.float32(np.inf), np.float32(-np.inf)
    with np.errstate(invalid="ignore"):  # some bf16 ties are NaN patterns; nextafter keeps NaN
        parts = [f16_values.astype(np.float32)[::4], ties16, np.nextafter(ties16, up),
                 np.nextafter(ties16, down), ties_bf, np.nextafter(ties_bf, up),
                 np.nextafter(ties_bf, down), specials, random_bits]
    return np.concatenate([np.asarray(p, dtype=np.float32).ravel() for p in parts])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--libggml", required=True, help="path to libggml-base.so")
    args = ap.parse_args()
    ggml = Ggml(args.libggml)
    rng = np.random.default_rng(SEED)

    rows = np.concatenate([edge_rows(rng), random_rows(rng, 24)])
    out = {"rows": rows}
    for name in TYPES:
        if name in ("F16", "BF16"):
            continue
        q = ggml.quantize(name, rows)
        out[f"{name}/quantized"] = q
        if name not in NO_TO_FLOAT:
            out[f"{name}/dequantized"] = ggml.dequantize(name, q)
            # arbitrary block contents with finite fp16 scales: every nibble/bit pattern
            _, block, nbytes = TYPES[name]
            raw = rng.integers(0, 256, (16, ROW // block * nbytes), dtype=np.uint8)
            blocks = raw.reshape(-1, nbytes)
            for pos in FP16_FIELDS.get(name, (0,)):
                scales = (rng.standard_normal(blocks.shape[0]) * 0.05).astype(np.float16)
                blocks[:, pos:pos + 2] = scales.view(np.uint8).reshape(-1, 2)
            out[f"{name}/random_blocks"] = raw
            out[f"{name}/random_blocks_dequantized"] = ggml.dequantize(name, raw)

    conv = float_conversion_inputs(rng).reshape(1, -1)
    out["float_inputs"] = conv
    for name in ("F16", "BF16"):
        q = ggml.quantize(name, conv)
        out[f"{name}/quantized"] = q
        all_patterns = np.arange(1 << 16, dtype=np.uint16).view(np.uint8).reshape(1, -1)
        back = ggml.dequantize(name, all_patterns)
        out[f"{name}/all_patterns_dequantized_sha256"] = np.array(hashlib.sha256(back.tobytes()).hexdigest())

    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT, **out)
    digest = hashlib.sha256(OUT.read_bytes()).hexdigest()[:16]
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes, sha256 {digest}...): "
          f"{rows.shape[0]} rows, {conv.size} float-conversion inputs")


if __name__ == "__main__":
    main()
