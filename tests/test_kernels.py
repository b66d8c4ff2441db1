"""Quantized mat-vec / mat-mul kernels against "dequantize with gguf-py, then multiply in float64".

Blocks come from real quantizers (gguf-py's, and llama-quantize's slices in tests/data/kernels,
see scripts/extract_kernel_blocks.py) and from random bytes with finite fp16 scales (every byte
pattern is a valid block, so random blocks reach every code path). gguf-py's `dequantize` is the
oracle for the block layouts; our dequantize must equal it bit for bit.

These are the float32-activation kernels (`set_activations("float")` for the whole module); the
8-bit-activation mat-vecs are checked in test_kernels_int8*.py.
"""

from __future__ import annotations

import json

import gguf
import numpy as np
import pytest
from gguf.quants import dequantize as oracle_dequantize
from gguf.quants import quantize as oracle_quantize

from llmcli.engine.matmul import (QuantizedMatrix, dequantize_rows, get_threads, matmul, matvec, set_threads,
                                  supported_types)
from llmcli.errors import BadInputError, UnsupportedError
from llmcli.gguf import GGUFReader
from llmcli.gguf.constants import TYPE_INFO, GGMLType

ALL_TYPES = ["F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K",
             "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ1_S", "IQ1_M",
             "TQ1_0", "TQ2_0"]
# byte offsets of each format's fp16 scales inside a block (random bytes there could be inf/NaN)
FP16_SCALE_OFFSETS = {"Q8_0": [0], "Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2],
                      "IQ4_NL": [0], "Q2_K": [80, 82], "Q3_K": [108], "Q4_K": [0, 2], "Q5_K": [0, 2],
                      "Q6_K": [208], "IQ4_XS": [0], "IQ2_XXS": [0], "IQ2_XS": [0], "IQ2_S": [0],
                      "IQ3_XXS": [0], "IQ3_S": [0], "IQ1_S": [0], "IQ1_M": [], "TQ1_0": [52], "TQ2_0": [64]}
# IQ1_M's d is an fp16 spread over the top nibbles of the 4 little-endian scale words at byte 48
IQ1_M_SCALE_BYTES = [49, 51, 53, 55]
N_ROWS = 37  # not a multiple of the 16-row mat-vec tiles nor of the 4-row GEMM blocks
TOKEN_COUNTS = [1, 3, 17]


@pytest.fixture(autouse=True)
def float_activations(activation_mode):
    activation_mode("float")


def random_rows(type_name: str, n_rows: int, n_cols: int, rng) -> np.ndarray:
    """uint8 (n_rows, row_bytes) of a valid `type_name` matrix."""
    values = rng.standard_normal((n_rows, n_cols)).astype(np.float32)
    if type_name == "F32":
        return values.view(np.uint8)
    if type_name == "F16":
        return values.astype(np.float16).view(np.uint8)
    if type_name == "BF16":
        return (values.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
    info = TYPE_INFO[GGMLType[type_name]]
    n_blocks = n_cols // info.block_size
    raw = rng.integers(0, 256, (n_rows, n_blocks, info.block_bytes), dtype=np.uint8)
    for off in FP16_SCALE_OFFSETS[type_name]:
        scales = (rng.uniform(0.5, 1.5, (n_rows, n_blocks)) * 0.01).astype(np.float16)
        raw[:, :, off:off + 2] = scales.view(np.uint8).reshape(n_rows, n_blocks, 2)
    if type_name == "IQ1_M":
        bits = (rng.uniform(0.5, 1.5, (n_rows, n_blocks)) * 0.01).astype(np.float16).view(np.uint16)
        for i, at in enumerate(IQ1_M_SCALE_BYTES):
            raw[:, :, at] = (raw[:, :, at] & 0x0F) | (((bits >> (4 * i)) & 0x0F) << 4).astype(np.uint8)
    return raw.reshape(n_rows, -1)


def reference_weights(raw: np.ndarray, type_name: str) -> np.ndarray:
    return oracle_dequantize(raw, gguf.GGMLQuantizationType[type_name]).astype(np.float32)


def assert_products_match(W: QuantizedMatrix, weights: np.ndarray, rng) -> None:
    """matvec and matmul (several token counts) equal float64 products with the reference weights."""
    w64 = weights.astype(np.float64)
    row_norms = np.linalg.norm(w64, axis=1)
    for n_tokens in TOKEN_COUNTS:
        X = rng.standard_normal((n_tokens, W.n_cols)).astype(np.float32)
        expected = X.astype(np.float64) @ w64.T
        # float32 rounding bound: |error| <= ~sqrt(n) eps |w_r| |x|; a wrong weight is ~|w_r||x|/sqrt(n)
        bound = 2e-5 * np.outer(np.linalg.norm(X, axis=1), row_norms) + 1e-30
        got = matmul(W, X)
        assert got.shape == (n_tokens, W.n_rows) and got.dtype == np.float32
        assert np.all(np.abs(got - expected) <= bound), (W, n_tokens, np.max(np.abs(got - expected) / bound))
        y = matvec(W, X[0])
        assert np.all(np.abs(y - expected[0]) <= bound[0]), (W, np.max(np.abs(y - expected[0]) / bound[0]))


@pytest.mark.parametrize("type_name", ALL_TYPES)
def test_random_blocks(type_name):
    rng = np.random.default_rng(sum(map(ord, type_name)))
    n_cols = 512 if TYPE_INFO[GGMLType[type_name]].block_size == 256 else 96
    raw = random_rows(type_name, N_ROWS, n_cols, rng)
    weights = reference_weights(raw, type_name)
    W = QuantizedMatrix(raw, GGMLType[type_name], n_cols)
    assert W.shape == (N_ROWS, n_cols)
    np.testing.assert_array_equal(dequantize_rows(W, 0, N_ROWS), weights)
    np.testing.assert_array_equal(dequantize_rows(W, 5, 9), weights[5:9])
    assert_products_match(W, weights, rng)


@pytest.mark.parametrize("type_name", ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "BF16"])
def test_gguf_py_quantized_blocks(type_name):
    rng = np.random.default_rng(7)
    values = rng.standard_normal((N_ROWS, 160)).astype(np.float32)
    raw = oracle_quantize(values, gguf.GGMLQuantizationType[type_name]).view(np.uint8)
    W = QuantizedMatrix(raw, GGMLType[type_name], 160)
    weights = reference_weights(raw, type_name)
    np.testing.assert_array_equal(dequantize_rows(W, 0, N_ROWS), weights)
    assert_products_match(W, weights, rng)


def llamacpp_slices(data_dir):
    index = json.loads((data_dir / "kernels" / "llamacpp_blocks.json").read_text())
    arrays = np.load(data_dir / "kernels" / "llamacpp_blocks.npz")
    return [(name, arrays[name], entry["n_cols"]) for name, entry in index.items()]


def test_llamacpp_written_blocks(data_dir):
    slices = llamacpp_slices(data_dir)
    assert sorted(name for name, _, _ in slices) == ["Q2_K", "Q3_K", "Q4_0", "Q4_K", "Q6_K"]
    rng = np.random.default_rng(11)
    for type_name, raw, n_cols in slices:
        W = QuantizedMatrix(raw, GGMLType[type_name], n_cols)
        weights = reference_weights(raw, type_name)
        np.testing.assert_array_equal(dequantize_rows(W, 0, W.n_rows), weights)
        assert_products_match(W, weights, rng)


def test_mmap_tensor_in_place(data_dir):
    """A GGUF tensor straight from the reader's mmap (read-only, zero-copy)."""
    reader = GGUFReader(data_dir / "kq" / "kq-f16.gguf")
    info = next(t for t in reader.tensors if t.name == "blk.0.ffn_gate.weight")
    W = QuantizedMatrix(reader.tensor_bytes(info.name), info.type, info.shape[0])
    weights = reader.tensor_array(info.name).astype(np.float32).reshape(W.n_rows, W.n_cols)
    assert_products_match(W, weights, np.random.default_rng(3))


def test_row_slices_share_memory():
    rng = np.random.default_rng(5)
    raw = random_rows("Q4_K", 40, 256, rng)
    W = QuantizedMatrix(raw, GGMLType.Q4_K, 256)
    expert = W.rows(13, 29)
    assert expert.shape == (16, 256) and np.shares_memory(expert.raw, raw)
    x = rng.standard_normal(256).astype(np.float32)
    np.testing.assert_array_equal(matvec(expert, x), matvec(W, x)[13:29])
    assert W.rows(7, 7).shape == (0, 256) and matvec(W.rows(7, 7), x).shape == (0,)
    with pytest.raises(BadInputError):
        W.rows(30, 41)


def test_output_buffers_and_threads():
    rng = np.random.default_rng(9)
    raw = random_rows("Q8_0", 64, 128, rng)
    W = QuantizedMatrix(raw, GGMLType.Q8_0, 128)
    X = rng.standard_normal((9, 128)).astype(np.float32)
    before = get_threads()
    try:
        set_threads(1)
        assert get_threads() == 1
        one = matmul(W, X)
        set_threads(2)
        out = np.empty((9, 64), np.float32)
        assert matmul(W, X, out) is out
        np.testing.assert_allclose(out, one, rtol=1e-6, atol=1e-6)
        y = np.empty(64, np.float32)
        assert matvec(W, X[2], y) is y  # mat-vec and GEMM sum in different orders
        np.testing.assert_allclose(y, one[2], rtol=1e-5, atol=1e-5)
    finally:
        set_threads(before)


def test_unsupported_type_is_named():
    raw = np.zeros((2, TYPE_INFO[GGMLType.Q8_K].block_bytes), np.uint8)  # an activation-only type
    with pytest.raises(UnsupportedError, match="Q8_K"):
        QuantizedMatrix(raw, GGMLType.Q8_K, 256)
    assert set(supported_types()) == {GGMLType[name] for name in ALL_TYPES}


def test_bad_shapes_are_reported():
    raw = np.zeros((4, 34), np.uint8)
    with pytest.raises(BadInputError, match="Q8_0"):
        QuantizedMatrix(raw, GGMLType.Q8_0, 64)  # 64 values need 68 bytes
    W = QuantizedMatrix(raw, GGMLType.Q8_0, 32)
    with pytest.raises(BadInputError):
        matvec(W, np.zeros(31, np.float32))
    with pytest.raises(BadInputError):
        matmul(W, np.zeros((3, 32), np.float32), out=np.empty((3, 5), np.float32))
    with pytest.raises(BadInputError):
        set_threads(0)


def test_matmul_over_several_tiles():
    """Wide rows: the prompt GEMM decodes the matrix in several row tiles plus a <32-row remainder."""
    rng = np.random.default_rng(13)
    raw = random_rows("Q4_0", 300, 2048, rng)  # 128-row tiles of 2048 floats: 128 + 128 + 32 + 12
    W = QuantizedMatrix(raw, GGMLType.Q4_0, 2048)
    weights = reference_weights(raw, "Q4_0")
    X = rng.standard_normal((13, 2048)).astype(np.float32)
    expected = X.astype(np.float64) @ weights.astype(np.float64).T
    bound = 2e-5 * np.outer(np.linalg.norm(X, axis=1), np.linalg.norm(weights, axis=1))
    assert np.all(np.abs(matmul(W, X) - expected) <= bound)


def test_every_engine_kernel_releases_the_gil():
    """The engine thread computes while an HTTP server's event loop (or any caller) keeps running:
    every compiled kernel the engine calls must release the GIL."""
    from numba.core.registry import CPUDispatcher

    from llmcli.engine import ops
    from llmcli.engine.kernels import FORMATS, gemm

    kernels = [getattr(fmt, slot) for fmt in FORMATS.values()
               for slot in ("matvec", "matvec_serial", "matvec_int8", "matvec_int8_serial", "dequant")
               if getattr(fmt, slot) is not None]
    kernels = [getattr(k, "kernel", k) for k in kernels]  # a codec's dequantize kernel behind its Decoder
    for module in (ops, gemm):
        kernels += [f for f in vars(module).values() if isinstance(f, CPUDispatcher)
                    and not f.targetoptions.get("inline") == "always"]
    assert len(kernels) > 40
    held = [k.py_func.__qualname__ for k in kernels if not k.targetoptions.get("nogil")]
    assert not held, held
