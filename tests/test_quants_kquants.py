"""k-quants (Q2_K..Q6_K, Q8_K) against llama.cpp: quantized bytes equal llama-quantize's, dequantized
floats equal ggml's (and the gguf package's numpy dequantizers, used here as an oracle only).

References: tests/data/kq/types/*.json (sha256 of every tensor llama-quantize wrote) and
tests/data/kq/kquant_refs.npz (per-block digests, edge cases, ggml dequantizations; made by
scripts/make_kquant_refs.py with the real libggml of the reference commit).
"""

from __future__ import annotations

import functools
import hashlib
import json
import zlib
from pathlib import Path

import gguf
import numba
import numpy as np
import pytest

from llmcli.errors import UnsupportedError
from llmcli.gguf import GGUFReader
from llmcli.gguf.constants import TYPE_INFO, GGMLType
from llmcli.quants import dequantize, quantize

KQ = Path(__file__).parent / "data" / "kq"
FILE_TYPES = ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]
ALL_TYPES = FILE_TYPES + ["Q8_K"]


@functools.cache
def refs() -> dict[str, np.ndarray]:
    with np.load(KQ / "kquant_refs.npz") as npz:
        return {key: npz[key] for key in npz.files}


@functools.cache
def recorded() -> dict[str, dict[str, str]]:
    """type -> {tensor: sha256 of llama-quantize's bytes}, merged over every types/*.json."""
    out: dict[str, dict[str, str]] = {t: {} for t in FILE_TYPES}
    for path in sorted((KQ / "types").glob("*.json")):
        for name, t in json.loads(path.read_text()).get("tensors", {}).items():
            if t["type"] in out:
                assert out[t["type"]].setdefault(name, t["sha256"]) == t["sha256"], (path, name)
    return out


@functools.cache
def f16_rows(tensor: str) -> np.ndarray:
    with GGUFReader(KQ / "kq-f16.gguf") as r:
        info = next(t for t in r.tensors if t.name == tensor)
        x = np.asarray(r.tensor_array(tensor), dtype=np.float32)
        return x.reshape(info.n_rows, info.row_length)


@functools.cache
def quantized_kq(type_name: str) -> dict[str, np.ndarray]:
    """Every tensor llama-quantize stored as type_name, quantized by llmcli."""
    return {name: quantize(f16_rows(name), GGMLType[type_name]) for name in recorded()[type_name]}


def block_digests(raw: np.ndarray, type_name: str) -> np.ndarray:
    blocks = raw.reshape(raw.shape[0], -1, TYPE_INFO[GGMLType[type_name]].block_bytes)
    return np.array([[zlib.crc32(b.tobytes()) & 0xFFFF for b in row] for row in blocks],
                    dtype=np.uint16)


def sha256(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def bits_equal(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


def test_every_kquant_matrix_of_the_model_is_covered():
    # the --pure records put every matrix in every k-quant type, so each type checks all of them
    with GGUFReader(KQ / "kq-f16.gguf") as r:
        matrices = {t.name for t in r.tensors if len(t.shape) == 2}
    assert len(matrices) == 58
    for type_name in FILE_TYPES:
        assert set(recorded()[type_name]) == matrices, type_name


@pytest.mark.parametrize("type_name", FILE_TYPES)
def test_quantize_equals_llama_quantize(type_name):
    failures = []
    for name, raw in quantized_kq(type_name).items():
        if sha256(raw) != recorded()[type_name][name]:
            want = refs()[f"kq/{type_name}/{name}"]
            n_diff = int((block_digests(raw, type_name) != want).sum())
            failures.append(f"{name}: {n_diff} of {want.size} blocks differ")
    assert not failures, f"{type_name} differs from llama-quantize:\n" + "\n".join(failures)


@pytest.mark.parametrize("type_name", FILE_TYPES)
def test_planted_rows_equal_llama_quantize(type_name):
    """Layer 1's planted rows: ffn_up row 5 all zeros, row 6 constant 0.01, one attn_q row with a
    single non-zero 0.5 (rows of attn_q are permuted by the converter, so it is found by content)."""
    up = f16_rows("blk.1.ffn_up.weight")
    assert not up[5].any() and np.all(up[6] == np.float32(np.float16(0.01)))
    q = f16_rows("blk.1.attn_q.weight")
    lone = [i for i in range(q.shape[0]) if np.count_nonzero(q[i]) == 1]
    assert len(lone) == 1 and q[lone[0]].max() == 0.5
    for tensor, rows in [("blk.1.ffn_up.weight", [5, 6]), ("blk.1.attn_q.weight", lone)]:
        got = quantize(f16_rows(tensor)[rows], GGMLType[type_name])
        want = refs()[f"kq/{type_name}/{tensor}"][rows]
        assert np.array_equal(block_digests(got, type_name), want), (tensor, rows)


@pytest.mark.parametrize("type_name", FILE_TYPES)
def test_dequantize_equals_ggml_on_llama_quantize_blocks(type_name):
    # quantized_kq's blocks are llama-quantize's (test_quantize_equals_llama_quantize pins them)
    failures = []
    for name, raw in quantized_kq(type_name).items():
        floats = dequantize(raw, GGMLType[type_name])
        assert floats.shape == f16_rows(name).shape
        want = bytes(refs()[f"kq_dequant/{type_name}/{name}"]).hex()
        if sha256(floats) != want:
            failures.append(f"{name}: differs from ggml's dequantize_row_{type_name}")
        oracle = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[type_name])
        if not np.array_equal(floats, oracle):
            failures.append(f"{name}: differs from gguf-py (max |diff| "
                            f"{np.abs(floats - oracle).max():.3g})")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("type_name", ALL_TYPES)
def test_edge_rows_equal_ggml(type_name):
    """Zeros, signed zeros, constants, tiny/huge/subnormal scales, inf and NaN: same bytes as ggml."""
    rows = refs()["edge/rows"]
    got = quantize(rows, GGMLType[type_name])
    want = refs()[f"edge/{type_name}/quantized"]
    bad = [i for i in range(rows.shape[0]) if not np.array_equal(got[i], want[i])]
    assert not bad, f"{type_name}: rows {bad} of {rows.shape[0]} differ from ggml"
    floats = dequantize(want, GGMLType[type_name])
    assert bits_equal(floats, refs()[f"edge/{type_name}/dequantized"])


@pytest.mark.parametrize("type_name", ALL_TYPES)
def test_dequantize_arbitrary_blocks_equals_ggml(type_name):
    raw = refs()[f"random/{type_name}/raw"]
    floats = dequantize(raw, GGMLType[type_name])
    assert bits_equal(floats, refs()[f"random/{type_name}/dequantized"])
    if type_name != "Q8_K":  # gguf-py has no Q8_K
        oracle = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[type_name])
        assert np.array_equal(floats, oracle)


@pytest.mark.parametrize("type_name", ALL_TYPES)
def test_odd_block_counts_equal_ggml(type_name):
    """Q4_K/Q5_K search blocks in pairs across rows: a lone last block must come out the same."""
    rows = refs()["edge/rows"]
    want = refs()[f"edge/{type_name}/quantized"]
    for n in (1, 3, 7):
        assert np.array_equal(quantize(rows[:n], GGMLType[type_name]), want[:n]), n
    pairs = rows[:6].reshape(2, 768)        # 3 blocks per row: the pairs straddle rows
    assert np.array_equal(quantize(pairs, GGMLType[type_name]), want[:6].reshape(2, -1))


def test_thread_count_does_not_change_bytes():
    rows = f16_rows("blk.0.ffn_down.weight")[:64]
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = {t: quantize(rows, GGMLType[t]) for t in ALL_TYPES}
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        for t in ALL_TYPES:
            assert np.array_equal(quantize(rows, GGMLType[t]), one[t]), t
    finally:
        numba.set_num_threads(before)


@pytest.mark.parametrize("type_name", ALL_TYPES)
def test_rows_not_a_multiple_of_256_are_refused(type_name):
    with pytest.raises(UnsupportedError, match="multiple of 256"):
        quantize(np.zeros((2, 640), np.float32), GGMLType[type_name])
    with pytest.raises(UnsupportedError, match="whole number"):
        dequantize(np.zeros((1, TYPE_INFO[GGMLType[type_name]].block_bytes + 1), np.uint8),
                   GGMLType[type_name])


def test_one_dimensional_input_is_one_row():
    x = refs()["edge/rows"][-1]
    assert np.array_equal(quantize(x, GGMLType.Q4_K), refs()["edge/Q4_K/quantized"][-1:])
