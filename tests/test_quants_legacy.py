"""Legacy block formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1) and IQ4_NL/IQ4_XS dequantization
against real ggml output.

References:
- tests/data/kq/types/<T>.json: llama-quantize's per-tensor sha256 for the K-quant test model
  (kq/kq-f16.gguf), from the reference pack.
- tests/data/quants/ggml_refs.npz: ggml's own quantize/dequantize results on edge cases and random
  blocks, made by scripts/make_quant_refs.py through ctypes on libggml-base at the reference commit.
- the `gguf` package's numpy (de)quantizers as an independent implementation (test-only oracle).
"""

from __future__ import annotations

import hashlib
import json

import gguf
import numpy as np
import pytest
from gguf.quants import dequantize as gguf_dequantize
from gguf.quants import quantize as gguf_quantize

from llmcli.errors import UnsupportedError
from llmcli.gguf import GGUFReader
from llmcli.gguf.constants import TYPE_INFO, GGMLType
from llmcli.quants import dequantize, get_codec, quantize

STORAGE_TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"]  # what llama-quantize writes
QUANTIZED_TYPES = STORAGE_TYPES + ["Q8_1"]
DEQUANT_TYPES = STORAGE_TYPES + ["IQ4_NL", "IQ4_XS"]  # those ggml has a dequantizer for


@pytest.fixture(scope="module")
def kq_f16(data_dir):
    return GGUFReader(data_dir / "kq" / "kq-f16.gguf")


@pytest.fixture(scope="module")
def ggml_refs(data_dir):
    with np.load(data_dir / "quants" / "ggml_refs.npz") as refs:
        return {k: refs[k] for k in refs.files}


def as_rows(reader: GGUFReader, name: str) -> np.ndarray:
    values = reader.tensor_array(name).astype(np.float32)
    return values.reshape(-1, values.shape[-1])


def differing_blocks(a: np.ndarray, b: np.ndarray, ggml_type: GGMLType) -> int:
    size = TYPE_INFO[ggml_type].block_bytes
    return int((a.reshape(-1, size) != b.reshape(-1, size)).any(axis=1).sum())


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


@pytest.mark.parametrize("type_name", STORAGE_TYPES)
def test_quantize_matches_llama_quantize(type_name, kq_f16, data_dir):
    ggml_type = GGMLType[type_name]
    record = json.loads((data_dir / "kq" / "types" / f"{type_name}.json").read_text())["tensors"]
    mine = {name: info for name, info in record.items() if info["type"] == type_name}
    assert len(mine) >= 57, f"expected every matrix of the kq model as {type_name}, got {len(mine)}"
    failures = []
    for name, info in mine.items():
        rows = as_rows(kq_f16, name)
        out = quantize(rows, ggml_type)
        assert out.nbytes == info["n_bytes"]
        if hashlib.sha256(out.tobytes()).hexdigest() != info["sha256"]:
            # llama.cpp's bytes are known only by hash; gguf-py's reference port locates blocks
            oracle = gguf_quantize(rows, gguf.GGMLQuantizationType[type_name])
            failures.append(f"{name}: sha256 differs from llama-quantize; "
                            f"{differing_blocks(out, oracle, ggml_type)} of "
                            f"{out.size // TYPE_INFO[ggml_type].block_bytes} blocks differ from gguf-py")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("type_name", QUANTIZED_TYPES)
def test_quantize_edge_cases_match_ggml(type_name, ggml_refs):
    """Zeros of both signs, ties for roundf, +/-max in both orders, fp16 overflow and underflow of
    the scale, float32 subnormals, inf and NaN inputs: every block as ggml writes it."""
    ggml_type = GGMLType[type_name]
    expected = ggml_refs[f"{type_name}/quantized"]
    out = quantize(ggml_refs["rows"], ggml_type)
    assert out.shape == expected.shape
    n_diff = differing_blocks(out, expected, ggml_type)
    assert n_diff == 0, f"{type_name}: {n_diff} of {out.size // TYPE_INFO[ggml_type].block_bytes} blocks differ"


@pytest.mark.parametrize("type_name", DEQUANT_TYPES)
def test_dequantize_matches_ggml(type_name, ggml_refs):
    ggml_type = GGMLType[type_name]
    for blocks_key, floats_key in [(f"{type_name}/quantized", f"{type_name}/dequantized"),
                                   (f"{type_name}/random_blocks", f"{type_name}/random_blocks_dequantized")]:
        out = dequantize(ggml_refs[blocks_key], ggml_type)
        expected = ggml_refs[floats_key]
        assert out.shape == expected.shape
        n_diff = int((out.view(np.uint32) != expected.view(np.uint32)).sum())
        assert n_diff == 0, f"{type_name} {blocks_key}: {n_diff} of {out.size} values differ from ggml"


@pytest.mark.parametrize("type_name", DEQUANT_TYPES)
def test_dequantize_matches_gguf_py(type_name, ggml_refs, kq_f16):
    """An independent implementation on llama.cpp-written blocks: the kq model's tensors as our
    (byte-identical to llama-quantize) quantizer writes them, and ggml's own blocks from the npz."""
    ggml_type = GGMLType[type_name]
    oracle_type = gguf.GGMLQuantizationType[type_name]
    cases = [ggml_refs[f"{type_name}/random_blocks"]]
    finite = np.isfinite(ggml_refs[f"{type_name}/dequantized"]).all(axis=1)
    cases.append(ggml_refs[f"{type_name}/quantized"][finite])
    if type_name in STORAGE_TYPES:
        for name in ("blk.1.ffn_up.weight", "blk.1.attn_q.weight", "token_embd.weight"):
            cases.append(quantize(as_rows(kq_f16, name), ggml_type))
    for raw in cases:
        assert same_bits(dequantize(raw, ggml_type), gguf_dequantize(raw, oracle_type))


@pytest.mark.parametrize("type_name", STORAGE_TYPES)
def test_quantize_matches_gguf_py_on_random_rows(type_name):
    rng = np.random.default_rng(7)
    scales = np.exp(rng.normal(-3, 2, (48, 1)))
    rows = (rng.standard_t(4, (48, 512)) * scales).astype(np.float32)
    rows[3] = 0.0
    rows[5, ::7] = -rows[5, ::7]
    ours = quantize(rows, GGMLType[type_name])
    theirs = gguf_quantize(rows, gguf.GGMLQuantizationType[type_name])
    assert differing_blocks(ours, theirs, GGMLType[type_name]) == 0


@pytest.mark.parametrize("type_name", QUANTIZED_TYPES)
def test_round_trip_error_is_within_half_a_step(type_name):
    """Dequantize(quantize(x)) lands within half a quantization step (plus fp16 scale rounding);
    Q4_0/Q5_0 put the largest magnitude on q = 0, so the other side clips one step short."""
    ggml_type = GGMLType[type_name]
    rng = np.random.default_rng(3)
    rows = rng.standard_normal((16, 256)).astype(np.float32)
    back = dequantize(quantize(rows, ggml_type), ggml_type)
    blocks, back_blocks = rows.reshape(-1, 32), back.reshape(-1, 32)
    levels = {"Q4_0": 16, "Q4_1": 15, "Q5_0": 32, "Q5_1": 31, "Q8_0": 254, "Q8_1": 254}[type_name]
    span = blocks.max(axis=1) - blocks.min(axis=1)
    if type_name in ("Q4_0", "Q5_0", "Q8_0", "Q8_1"):
        span = 2 * np.abs(blocks).max(axis=1)
    step = span / levels
    allowed = {"Q4_0": 1.0, "Q5_0": 1.0}.get(type_name, 0.5) * step
    err = np.abs(back_blocks - blocks).max(axis=1)
    assert (err <= allowed * 1.01 + 1e-3 * span).all()


def test_rows_and_shapes():
    rng = np.random.default_rng(1)
    rows = rng.standard_normal((3, 96)).astype(np.float32)
    for type_name in QUANTIZED_TYPES + ["F32", "F16", "BF16"]:
        ggml_type = GGMLType[type_name]
        out = quantize(rows, ggml_type)
        assert out.dtype == np.uint8 and out.shape == (3, TYPE_INFO[ggml_type].row_bytes(96))
        assert dequantize(out, ggml_type).shape == (3, 96)
        # each row is quantized independently of the others
        assert np.array_equal(quantize(rows[1:2], ggml_type), out[1:2])
        # a non-contiguous or float64 input is accepted and gives the same bytes
        assert np.array_equal(get_codec(ggml_type).quantize(rows.astype(np.float64)), out)
        assert np.array_equal(get_codec(ggml_type).quantize(np.asfortranarray(rows)), out)
    with pytest.raises(UnsupportedError, match="multiple of 32"):
        quantize(rows[:, :40], GGMLType.Q4_0)


def test_dequantize_demo_model_blocks_matches_gguf_py():
    """Blocks written by llama.cpp for a real model (Gemma 3 270M Q4_K_M: Q5_0 and Q8_0 tensors)."""
    from llmcli.demo import demo_model_path

    reader = GGUFReader(demo_model_path())
    cases = {"blk.0.attn_k.weight": "Q5_0", "blk.0.ffn_up.weight": "Q5_0",
             "blk.0.attn_v.weight": "Q8_0", "token_embd.weight": "Q8_0"}
    for name, type_name in cases.items():
        info = next(t for t in reader.tensors if t.name == name)
        assert info.type.name == type_name, name
        raw = reader.tensor_bytes(name)[:4096]
        ours = dequantize(raw, GGMLType[type_name])
        assert same_bits(ours, gguf_dequantize(np.asarray(raw), gguf.GGMLQuantizationType[type_name])), name


def test_same_bytes_with_one_or_two_threads(ggml_refs):
    import numba

    rows = np.concatenate([ggml_refs["rows"]] * 4)
    before = numba.get_num_threads()
    try:
        results = []
        for threads in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
            numba.set_num_threads(threads)
            results.append([quantize(rows, GGMLType[t]) for t in QUANTIZED_TYPES + ["F16", "BF16"]])
    finally:
        numba.set_num_threads(before)
    for one, two in zip(*results):
        assert np.array_equal(one, two)
