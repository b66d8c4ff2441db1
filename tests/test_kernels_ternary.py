"""Mat-vecs with TQ1_0 / TQ2_0 weights (kernels/ternary.py), float32 and 8-bit activations.

Oracles: ggml's own dequantized values (tests/data/iquants/dequantize.npz) for the float kernels;
ggml-cpu's `vec_dot` on its own Q8_K activation blocks (tests/data/iquants/vec_dot.npz, recorded by
scripts/make_iquant_refs.py through scripts/iquant_ref_harness.cpp) for the 8-bit ones. `ggml_vec_dot_case`
is shared with test_kernels_int8_iq4.py. B-column products against lone mat-vecs (serial and parallel
kernels, both activation modes) and the dequantizer against gguf-py's are test_kernels_matvecs.py's and
test_kernels.py's (TQ1_0 and TQ2_0 are in their type list).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from numba import njit

from llmcli.engine.kernels.common import serial_twin
from llmcli.engine.kernels.int8_kquants import quantize_q8_k
from llmcli.engine.kernels.ternary import INT8_MATVECS
from llmcli.engine.matmul import (SERIAL_MATVEC_BYTES, QuantizedMatrix, get_threads, matvec, matvecs,
                                  set_threads)
from llmcli.gguf.constants import GGMLType
from llmcli.quants import dequantize, quantize

DATA = Path(__file__).parent / "data" / "iquants"
TYPES = ["TQ1_0", "TQ2_0"]
N_ROWS = 37  # not a multiple of the 16-row tiles


@njit  # not cached: numba's cache would not notice a change in the inlined quantize_q8_k
def _quantize_q8_k(x):
    return quantize_q8_k(x)


def reference_rows(type_name: str, n_blocks: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 rows (N_ROWS, row bytes), their float64 values): ggml's recorded blocks and values
    (dequantize.npz: random bytes with finite scales, then real kq blocks), shuffled into rows."""
    ref = np.load(DATA / "dequantize.npz")
    pick = rng.choice(len(ref[f"{type_name}.blocks"]), N_ROWS * n_blocks)
    raw = np.ascontiguousarray(ref[f"{type_name}.blocks"][pick].reshape(N_ROWS, -1))
    return raw, ref[f"{type_name}.values"][pick].reshape(N_ROWS, -1).astype(np.float64)


def q8_k_values(xq_bytes: np.ndarray) -> np.ndarray:
    """ggml's block_q8_K records (float d, int8 qs[256], int16 bsums[16]) -> float64 d * qs."""
    blocks = xq_bytes.reshape(-1, 292)
    d = blocks[:, :4].copy().view(np.float32).astype(np.float64)
    return (d * blocks[:, 4:260].view(np.int8)).reshape(-1)


def q8_0_values(xq_bytes: np.ndarray) -> np.ndarray:
    """ggml's block_q8_0 records (fp16 d, int8 qs[32]) -> float64 d * qs."""
    blocks = xq_bytes.reshape(-1, 34)
    d = blocks[:, :2].copy().view(np.float16).astype(np.float64)
    return (d * blocks[:, 2:].view(np.int8)).reshape(-1)


def ggml_vec_dot_case(type_name: str, activation_values):
    """For one type of vec_dot.npz: (weights, x, ggml's dots (vectors, rows), our int8 matvecs (the
    same), the exact products of the weights with ggml's quantized activations, and their size:
    sum of |terms|), all from the recorded blocks and ggml's own activation blocks."""
    ref = np.load(DATA / "vec_dot.npz")
    raw, X = ref[f"{type_name}.blocks"], ref[f"{type_name}.x"]
    W = QuantizedMatrix(raw, GGMLType[type_name], X.shape[1])
    got = matvecs(W, X)  # the caller sets the activation mode
    w64 = dequantize(raw, GGMLType[type_name]).astype(np.float64)
    xq64 = np.stack([activation_values(row) for row in ref[f"{type_name}.xq"]])
    return ref[f"{type_name}.dot"], got, xq64 @ w64.T, np.abs(xq64) @ np.abs(w64).T


# How far ggml's vec_dot is from the exact product of its own blocks, relative to the sum of |terms|
# (measured: IQ4_NL 4.7e-8, IQ4_XS 5.3e-8, TQ2_0 7.6e-6; TQ1_0 4.1e-5 on two real rows, mostly zero
# weights, under outlier activations: its int16 lanes carry c * xq for the t = 0 weights and the
# bsums of other positions, so its float32 rounding is relative to those, not to the terms).
GGML_ROUNDING = {"IQ4_NL": 1e-5, "IQ4_XS": 1e-5, "TQ1_0": 1e-4, "TQ2_0": 1e-5}
# Ours: exact integer sums per lane, float32 rounding of the scaling and the lane sums (measured:
# TQ1_0 8.8e-8, TQ2_0 1.2e-7, IQ4_XS 5.3e-8, IQ4_NL 2.9e-7).
OUR_ROUNDING = 1e-6


def assert_is_ggmls_dot(type_name: str, activation_values) -> None:
    """Our int8 kernel equals the exact integer product of ggml's activation blocks with the
    weights to float32 rounding; ggml's vec_dot does too (to its own rounding), so the two agree."""
    ggml, got, exact, magnitude = ggml_vec_dot_case(type_name, activation_values)
    assert np.all(np.abs(ggml - exact) <= GGML_ROUNDING[type_name] * magnitude + 1e-30), "oracle"
    assert np.all(np.abs(got - exact) <= OUR_ROUNDING * magnitude + 1e-30), \
        (type_name, (np.abs(got - exact) / np.maximum(magnitude, 1e-30)).max())
    assert np.all(np.abs(got - ggml) <= (OUR_ROUNDING + GGML_ROUNDING[type_name]) * magnitude + 1e-30)
    assert np.all(got[5] == 0) and np.all(ggml[5] == 0)  # the all-zero activation vector


@pytest.mark.parametrize("type_name", TYPES)
def test_int8_matches_ggml_vec_dot(type_name, activation_mode):
    activation_mode("int8")
    assert_is_ggmls_dot(type_name, q8_k_values)


@pytest.mark.parametrize("type_name", TYPES)
def test_activation_blocks_are_the_ones_ggml_dots(type_name):
    """The Q8_K blocks the kernels dot with are ggml's bytes (d, qs, bsums) for these vectors."""
    ref = np.load(DATA / "vec_dot.npz")
    for x, want in zip(ref[f"{type_name}.x"], ref[f"{type_name}.xq"]):
        xq, xd, bsums = _quantize_q8_k(x)
        blocks = want.reshape(-1, 292)
        np.testing.assert_array_equal(xd.view(np.uint32), blocks[:, :4].copy().view(np.uint32).reshape(-1))
        np.testing.assert_array_equal(xq, blocks[:, 4:260].view(np.int8).reshape(-1))
        np.testing.assert_array_equal(bsums, blocks[:, 260:].copy().view(np.int16).reshape(-1))


@pytest.mark.parametrize("type_name", TYPES)
@pytest.mark.parametrize("n_blocks", [1, 2, 5])
def test_float_matvec_equals_dequantized_product(type_name, n_blocks, activation_mode):
    activation_mode("float")
    rng = np.random.default_rng(n_blocks + len(type_name))
    raw, w64 = reference_rows(type_name, n_blocks, rng)
    W = QuantizedMatrix(raw, GGMLType[type_name], 256 * n_blocks)
    X = rng.standard_normal((3, 256 * n_blocks)).astype(np.float32)
    X[:, :256] *= 30  # blocks of very different scales
    exact = X.astype(np.float64) @ w64.T
    magnitude = np.abs(X).astype(np.float64) @ np.abs(w64).T
    got = np.stack([matvec(W, x) for x in X])
    # float32 products and sums in lanes: a few float32 roundings of the terms' magnitude
    assert np.all(np.abs(got - exact) <= 1e-6 * magnitude + 1e-30), (np.abs(got - exact) / magnitude).max()


@pytest.mark.parametrize("type_name", TYPES)
@pytest.mark.parametrize("n_blocks", [1, 3, 7])
def test_int8_within_activation_rounding(type_name, n_blocks, activation_mode):
    """8-bit activations against the exact product: each x is off by at most half its block's
    step d_x (= max |x| / 127), so |error| <= sum over blocks of d_x / 2 * sum |w| there."""
    rng = np.random.default_rng(10 * n_blocks + len(type_name))
    raw, w64 = reference_rows(type_name, n_blocks, rng)
    W = QuantizedMatrix(raw, GGMLType[type_name], 256 * n_blocks)
    x = rng.standard_normal(256 * n_blocks).astype(np.float32)
    x[:256] *= 40
    activation_mode("int8")
    got = matvec(W, x)
    _, xd, _ = _quantize_q8_k(x)
    exact = w64 @ x.astype(np.float64)
    bound = (np.abs(w64).reshape(N_ROWS, n_blocks, 256).sum(-1) * np.abs(xd.astype(np.float64)) / 2).sum(1)
    assert np.all(np.abs(got - exact) <= 1.001 * bound + 1e-5 * (np.abs(w64) @ np.abs(x))), type_name
    activation_mode("float")
    assert not np.array_equal(matvec(W, x), got)  # the int8 mode really ran the 8-bit kernel


@pytest.mark.parametrize("activations", ["int8", "float"])
def test_parallel_pool_gives_the_same_bits(activations, activation_mode):
    """Through the public API at 1 and 2 threads, a matrix big enough for the parallel kernel; and
    the kernels' serial twins."""
    activation_mode(activations)
    rng = np.random.default_rng(11)
    before = get_threads()
    try:
        for type_name in TYPES:
            w = rng.standard_normal((600, 512)).astype(np.float32)
            W = QuantizedMatrix(quantize(w, GGMLType[type_name]), GGMLType[type_name], 512)
            X = rng.standard_normal((5, 512)).astype(np.float32)
            assert W.raw.nbytes * len(X) > SERIAL_MATVEC_BYTES
            results = []
            for threads in (1, 2):
                set_threads(threads)
                results.append(matvecs(W, X))
            assert np.array_equal(results[0], results[1]), type_name
            kernel = INT8_MATVECS[GGMLType[type_name]] if activations == "int8" else W.format.matvec
            out = np.empty((5, 600), np.float32)
            serial_twin(kernel)(W.weights, X, out)
            assert np.array_equal(out, results[0]), type_name
    finally:
        set_threads(before)

