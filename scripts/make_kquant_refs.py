#!/usr/bin/env python3
"""Make ggml's own answers for the k-quant block formats (Q2_K..Q6_K, Q8_K).

Calls the real ggml (libggml-base.so from the llama.cpp reference commit 0c1e570, as built by
llama-cpp-python 0.3.36 - the library llama-quantize links) through ctypes:
  * `ggml_quantize_chunk` without an importance matrix (what llama-quantize runs) for Q2_K..Q6_K,
    `quantize_row_q8_K_ref` for Q8_K (an activation format, never in files);
  * `dequantize_row_q*_K` on those blocks and on random blocks.

What it writes to tests/data/kq/kquant_refs.npz (the tests need neither ggml nor this script):
  * kq/<TYPE>/<tensor>: one 16-bit digest (crc32 & 0xffff) per block of every tensor of
    tests/data/kq/kq-f16.gguf quantized to TYPE, so a failing test can count differing blocks.
    Before anything is written, each tensor's sha256 is checked against the llama-quantize record
    in tests/data/kq/types/*.json (and, with --reference, block by block against the
    llama.cpp-written kq-*.gguf files there);
  * kq_dequant/<TYPE>/<tensor>: sha256 of ggml's dequantization of those blocks;
  * edge/rows, edge/<TYPE>/quantized, edge/<TYPE>/dequantized: 256-wide rows built to hit every
    branch of the scale searches (zeros, signed zeros, constants, a lone value, tiny groups below
    GROUP_MAX_EPS, fp16 over/underflow of the scales, inf, NaN) plus random heavy-tailed rows;
  * random/<TYPE>/raw, random/<TYPE>/dequantized: arbitrary block bytes with finite scales.

    /work/venv/bin/python scripts/make_kquant_refs.py --libggml /path/to/libggml-base.so \\
        [--reference /work/shared/reference/kq]
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import zlib
from pathlib import Path

import numpy as np

from llmcli.gguf import GGUFReader

ROOT = Path(__file__).resolve().parents[1]
KQ = ROOT / "tests" / "data" / "kq"
OUT = KQ / "kquant_refs.npz"
SEED = 20261122

# name: (ggml type id, bytes per 256-block, byte offsets of fp16 scale fields)
TYPES = {
    "Q2_K": (10, 84, (80, 82)),
    "Q3_K": (11, 110, (108,)),
    "Q4_K": (12, 144, (0, 2)),
    "Q5_K": (13, 176, (0, 2)),
    "Q6_K": (14, 210, (208,)),
    "Q8_K": (15, 292, ()),
}
FILE_TYPES = ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]
ROW_FN = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)


class Ggml:
    def __init__(self, path: str):
        self.lib = ctypes.CDLL(path)
        self.lib.ggml_quantize_chunk.restype = ctypes.c_size_t
        self.lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
                                                 ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                                                 ctypes.c_void_p]

    def _row_fn(self, name: str) -> ROW_FN:
        return ROW_FN(ctypes.cast(getattr(self.lib, name), ctypes.c_void_p).value)

    def quantize(self, name: str, rows: np.ndarray) -> np.ndarray:
        type_id, nbytes, _ = TYPES[name]
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        n, k = rows.shape
        out = np.zeros((n, k // 256 * nbytes), dtype=np.uint8)
        if name == "Q8_K":
            self._row_fn("quantize_row_q8_K_ref")(rows.ctypes.data, out.ctypes.data, rows.size)
        else:
            written = self.lib.ggml_quantize_chunk(type_id, rows.ctypes.data, out.ctypes.data,
                                                   0, n, k, None)
            assert written == out.nbytes, (name, written, out.nbytes)
        return out

    def dequantize(self, name: str, raw: np.ndarray) -> np.ndarray:
        _, nbytes, _ = TYPES[name]
        raw = np.ascontiguousarray(raw, dtype=np.uint8)
        out = np.zeros((raw.shape[0], raw.shape[1] // nbytes * 256), dtype=np.float32)
        self._row_fn(f"dequantize_row_{name[:2].lower()}_K")(raw.ctypes.data, out.ctypes.data,
                                                              out.size)
        return out


def block_digests(raw: np.ndarray, nbytes: int) -> np.ndarray:
    blocks = raw.reshape(raw.shape[0], -1, nbytes)
    return np.array([[zlib.crc32(b.tobytes()) & 0xFFFF for b in row] for row in blocks],
                    dtype=np.uint16)


def bits(u32) -> np.ndarray:
    return np.asarray(u32, dtype=np.uint32).view(np.float32)


def edge_rows(rng: np.random.Generator) -> np.ndarray:
    """256-wide rows (one super-block each), each a trap for some branch of the k-quant searches."""
    rows = []

    def add(values):
        v = np.zeros(256, dtype=np.float32)
        values = np.asarray(values, dtype=np.float32).ravel()
        v[:len(values)] = values
        rows.append(v)

    def normal(n, scale=1.0):
        return rng.standard_normal(n) * scale

    add(np.zeros(256))
    add(np.full(256, -0.0))
    add(np.full(256, 0.01))
    add(np.full(256, -0.01))
    add(np.full(256, 3.0))
    lone = np.zeros(256); lone[3] = 0.5; add(lone)
    lone = np.zeros(256); lone[200] = -0.5; add(lone)
    add(np.r_[np.zeros(16), normal(16), np.zeros(224)])        # one live 16-group
    add(np.r_[np.zeros(32), normal(32), np.zeros(192)])        # one live 32-group
    add(np.abs(normal(256)))                                   # all positive: mins 0
    add(-np.abs(normal(256)))                                  # all negative
    add(np.r_[normal(128), np.full(128, 0.25)])                # constant half
    add(np.tile(np.r_[2.0, -2.0, np.linspace(-1.5, 1.5, 14)], 16))   # +/- max ties
    add(np.tile(np.r_[-2.0, 2.0, np.linspace(-1.5, 1.5, 14)], 16))
    add(np.arange(256) - 127.5)                                # evenly spaced levels
    add(np.r_[np.arange(-8, 8, 0.5), normal(224, 4.0)])
    add(normal(256, 1e-16))                                    # below GROUP_MAX_EPS
    add(np.r_[normal(128, 1e-16), normal(128)])
    add(np.r_[normal(16, 1e-12), normal(240, 1e-3)])
    add(normal(256, 1e-5))                                     # fp16 subnormal scales
    add(normal(256, 1e-8))                                     # scales underflow fp16
    add(normal(256, 1e-30))
    add(normal(256, 1e-40))                                    # float32 subnormal inputs
    add(np.r_[bits(1), np.zeros(255)])                         # smallest subnormal alone
    add(normal(256, 1e4))
    add(normal(256, 1e6))                                      # scales overflow fp16
    add(np.r_[3.0e38, -3.0e38, normal(254)])                   # max - min overflows float32
    add(np.r_[np.inf, normal(255)])
    add(np.r_[-np.inf, normal(255)])
    add(np.r_[normal(100), np.nan, normal(155)])
    add(np.r_[np.nan, normal(255)])
    add(np.r_[np.inf, -np.inf, np.zeros(254)])
    add(np.full(256, 65504.0))
    add(np.linspace(-1, 1, 256))
    # Q8_K: amax 127 gives iscale -1 and exact halves to round
    add(np.r_[-127.0, np.arange(-127.5, 127.5, 1.0)[:255]])
    add(np.r_[127.0, np.arange(0.5, 255.5, 1.0)[:255] - 128])
    return np.stack(rows)


def random_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    """Heavy-tailed rows at varied scales, like real weights with outliers."""
    z = rng.standard_normal((n, 256))
    outliers = rng.random((n, 256)) < 0.03
    z[outliers] = 2 * rng.standard_t(3, outliers.sum())
    scale = np.exp(rng.normal(-3, 1.5, (n, 1)))
    return (z * scale).astype(np.float32)


def recorded_hashes() -> dict[tuple[str, str], str]:
    """(tensor, type) -> sha256 of llama-quantize's bytes, across all types/*.json."""
    want: dict[tuple[str, str], str] = {}
    for path in sorted((KQ / "types").glob("*.json")):
        rec = json.loads(path.read_text())
        for name, t in rec.get("tensors", {}).items():
            if t["type"] in FILE_TYPES:
                assert want.setdefault((name, t["type"]), t["sha256"]) == t["sha256"], (path, name)
    return want


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--libggml", required=True, help="path to libggml-base.so")
    ap.add_argument("--reference", type=Path, help="directory with llama.cpp's kq-*.gguf files")
    args = ap.parse_args()
    ggml = Ggml(args.libggml)
    rng = np.random.default_rng(SEED)
    out: dict[str, np.ndarray] = {}

    want = recorded_hashes()
    llama_files = sorted(args.reference.glob("kq-*.gguf")) if args.reference else []
    with GGUFReader(KQ / "kq-f16.gguf") as f16:
        for name_type in sorted({t for _, t in want}):
            n_checked_blocks = 0
            for (tensor, t), sha in sorted(want.items()):
                if t != name_type:
                    continue
                info = next(ti for ti in f16.tensors if ti.name == tensor)
                x = np.asarray(f16.tensor_array(tensor), dtype=np.float32)
                q = ggml.quantize(t, x.reshape(info.n_rows, info.row_length))
                assert hashlib.sha256(q.tobytes()).hexdigest() == sha, (tensor, t)
                for path in llama_files:
                    with GGUFReader(path) as r:
                        other = next((ti for ti in r.tensors if ti.name == tensor), None)
                        if other is not None and other.type.name == t:
                            assert np.array_equal(r.tensor_bytes(other), q), (path, tensor)
                            n_checked_blocks += q.size // TYPES[t][1]
                out[f"kq/{t}/{tensor}"] = block_digests(q, TYPES[t][1])
                dq = ggml.dequantize(t, q)
                out[f"kq_dequant/{t}/{tensor}"] = np.frombuffer(
                    hashlib.sha256(dq.tobytes()).digest(), dtype=np.uint8)
            print(f"{name_type}: all tensors equal llama-quantize's sha256; "
                  f"{n_checked_blocks} blocks also compared with llama.cpp-written files")

    rows = np.concatenate([edge_rows(rng), random_rows(rng, 24)])
    out["edge/rows"] = rows
    for name, (_, nbytes, fp16_fields) in TYPES.items():
        q = ggml.quantize(name, rows)
        out[f"edge/{name}/quantized"] = q
        out[f"edge/{name}/dequantized"] = ggml.dequantize(name, q)
        raw = rng.integers(0, 256, (16, 2 * nbytes), dtype=np.uint8)
        blocks = raw.reshape(-1, nbytes)
        for pos in fp16_fields:
            scales = (rng.standard_normal(blocks.shape[0]) * 0.05).astype(np.float16)
            blocks[:, pos:pos + 2] = scales.view(np.uint8).reshape(-1, 2)
        if name == "Q8_K":
            d = (rng.standard_normal(blocks.shape[0]) * 0.05).astype(np.float32)
            blocks[:, 0:4] = d.view(np.uint8).reshape(-1, 4)
        out[f"random/{name}/raw"] = raw
        out[f"random/{name}/dequantized"] = ggml.dequantize(name, raw)

    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT, **out)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes, {len(out)} arrays)")


if __name__ == "__main__":
    main()
