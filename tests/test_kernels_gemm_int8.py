"""The integer GEMM for prompts (kernels/gemm_int8.py): Q4_K, Q5_K, Q6_K, Q8_0, Q4_0, Q5_0, IQ4_NL,
IQ4_XS, IQ3_* and IQ2_* weights.

Oracles: gguf-py's dequantize for the decoded tile (codes, scales, mins rebuild the weights), the
int8 mat-vecs' activation quantizers (already checked against ggml) for the activation blocks, and a
numpy transcription of the kernel's integer formula (exact int64 sums, float64 scaling) for the
products. Sizes are odd on purpose: rows not a multiple of the 32-row micro-kernel, tokens not a
multiple of its 6, sub-block counts not a multiple of its k chunk.
"""

from __future__ import annotations

import numpy as np
import pytest
from numba import njit

from llmcli.engine import matmul as mm
from llmcli.engine.kernels import gemm_int8 as g
from llmcli.engine.kernels.int8 import quantize_activations
from llmcli.engine.kernels.int8_kquants import quantize_q8_k
from llmcli.engine.matmul import QuantizedMatrix, Workspace, gemm_min_tokens, matmul, matmul_segments, matvecs
from llmcli.errors import BadInputError
from llmcli.gguf.constants import GGMLType

from test_kernels import random_rows, reference_weights

TYPES = ["Q4_K", "Q5_K", "Q6_K", "Q8_0", "Q4_0", "Q5_0", "IQ4_NL", "IQ4_XS", "IQ3_XXS", "IQ3_S", "IQ2_XXS",
         "IQ2_XS", "IQ2_S"]
N_ROWS = 37
N_COLS = {"Q4_K": 512, "Q5_K": 512, "Q6_K": 512, "Q8_0": 352, "Q4_0": 352, "Q5_0": 352, "IQ4_NL": 352,
          "IQ4_XS": 512, "IQ3_XXS": 512, "IQ3_S": 512,
          "IQ2_XXS": 512, "IQ2_XS": 512, "IQ2_S": 512}


@pytest.fixture(autouse=True)
def int8_matvecs(activation_mode):
    """The mat-vecs compared with round activations to 8 bits (the default mode)."""
    activation_mode("int8")


@njit  # not cached: numba's cache would not notice a change in the inlined quantizers
def _q8_0(x, offset):
    return quantize_activations(x, offset)


@njit
def _q8_k(x):
    return quantize_q8_k(x)


def _decoded(type_name: str, raw: np.ndarray):
    """The tile arrays for all rows of raw, decoded by the kernel."""
    spec = g.SPECS[GGMLType[type_name]]
    n_cols = N_COLS[type_name]
    n_sub = n_cols // spec.sub_len
    n_panels = -(-len(raw) // g.ROWS_PER_MICRO) * g.PANELS_PER_MICRO
    codes = np.full((n_panels, n_cols * g.ROWS_PER_PANEL), 7, np.uint8)
    scales = np.full((n_panels, n_sub * g.ROWS_PER_PANEL), np.nan, np.float32)
    mins = np.full_like(scales, np.nan)
    W = QuantizedMatrix(raw, GGMLType[type_name], n_cols)
    g.DECODERS[W.ggml_type](W.weights, 0, codes, scales, mins if spec.has_min else scales)
    return spec, codes, scales, mins


def _rows(spec, codes, scales, mins):
    """Per weight row: u int64 (rows, K), s and m float64 (rows, n_sub), from the panel layout."""
    n_panels = codes.shape[0]
    k4 = codes.shape[1] // 64
    u = codes.reshape(n_panels, k4, g.ROWS_PER_PANEL, 4).transpose(0, 2, 1, 3).reshape(n_panels * 16, 4 * k4)
    s = scales.reshape(n_panels, -1, g.ROWS_PER_PANEL).transpose(0, 2, 1).reshape(n_panels * 16, -1)
    m = (mins.reshape(n_panels, -1, g.ROWS_PER_PANEL).transpose(0, 2, 1).reshape(n_panels * 16, -1)
         if spec.has_min else -spec.offset * s)
    return u.astype(np.int64), s.astype(np.float64), m.astype(np.float64)


@pytest.mark.parametrize("type_name", TYPES)
def test_decoded_tile_rebuilds_the_weights(type_name):
    """s * u + m per sub-block is gguf-py's dequantized weight (to float32 rounding of s and m);
    the panel rows past the matrix are zero."""
    rng = np.random.default_rng(1)
    raw = random_rows(type_name, N_ROWS, N_COLS[type_name], rng)
    spec, codes, scales, mins = _decoded(type_name, raw)
    u, s, m = _rows(spec, codes, scales, mins)
    assert u.max() <= {"q4_k": 15, "q4_0": 15, "q5_k": 31, "q5_0": 31, "q6_k": 63, "q8_0": 255,
                       "iq4_nl": 241, "iq4_xs": 241, "iq3_xxs": 126, "iq3_s": 31,
                       "iq2_xxs": 86, "iq2_xs": 86, "iq2_s": 86}[spec.kind]
    rebuilt = s.repeat(spec.sub_len, 1) * u + m.repeat(spec.sub_len, 1)
    expected = reference_weights(raw, type_name).astype(np.float64)
    tol = 1e-6 * (np.abs(s.repeat(spec.sub_len, 1) * u) + np.abs(m.repeat(spec.sub_len, 1)))[:N_ROWS]
    assert np.all(np.abs(rebuilt[:N_ROWS] - expected) <= tol)
    assert not u[N_ROWS:].any() and not s[N_ROWS:].any() and not m[N_ROWS:].any()


@pytest.mark.parametrize("type_name", TYPES)
def test_activations_are_the_int8_matvecs(type_name):
    """The GEMM's activation blocks are the int8 mat-vecs' bit for bit: Q8_0 for Q8_0/Q4_0/Q5_0/IQ4_NL
    weights, Q8_K for the K-quants, IQ4_XS, IQ3_* and IQ2_* (llama.cpp's choice), with xinit = -offset * (sum of
    xq) and xmin = d_x * (sum of xq) per sub-block."""
    rng = np.random.default_rng(2)
    spec = g.SPECS[GGMLType[type_name]]
    n = N_COLS[type_name]
    X = rng.standard_normal((5, n)).astype(np.float32)
    X[1, 3] = 40.0
    X[2] = 0.0  # an all-zero row: scale 0, codes 0
    n_sub = n // spec.sub_len
    xq, xscale = np.empty((5, n), np.int8), np.empty((5, n_sub), np.float32)
    xinit, xmin = np.empty((5, n_sub), np.int32), np.empty((5, n_sub), np.float32)
    g.activations(spec, X, xq, xscale, xinit, xmin)
    for t in range(5):
        if spec.q8_k:
            q, d, bsums = _q8_k(X[t])
            d = d.repeat(256 // spec.sub_len)
        else:
            q, d, _ = _q8_0(X[t], np.int32(1))
        np.testing.assert_array_equal(xq[t], q)
        np.testing.assert_array_equal(xscale[t], d)
        sums = q.reshape(n_sub, spec.sub_len).astype(np.int64).sum(1)
        if spec.has_min:
            np.testing.assert_array_equal(xmin[t], d * sums.astype(np.float32))
        else:
            np.testing.assert_array_equal(xinit[t], -spec.offset * sums)


@pytest.mark.parametrize("type_name", TYPES)
def test_gemm_is_the_integer_formula(type_name):
    """out[t, r] = sum_s float(xinit + u . xq) * xscale * s (+ m * xmin), the integer sums exact:
    the kernel within float32 rounding of the scaling (relative to the sum of magnitudes), for 37
    tokens (6 groups of 6 and one more) and 37 rows (a partly filled last panel pair)."""
    rng = np.random.default_rng(3)
    raw = random_rows(type_name, N_ROWS, N_COLS[type_name], rng)
    spec, codes, scales, mins = _decoded(type_name, raw)
    n = N_COLS[type_name]
    n_t, n_sub = 37, n // spec.sub_len
    X = rng.standard_normal((n_t, n)).astype(np.float32)
    xq, xscale = np.empty((n_t, n), np.int8), np.empty((n_t, n_sub), np.float32)
    xinit, xmin = np.empty((n_t, n_sub), np.int32), np.empty((n_t, n_sub), np.float32)
    g.activations(spec, X, xq, xscale, xinit, xmin)
    out = np.full((n_t, N_ROWS + 3), np.nan, np.float32)  # columns 0..2 are another tile's
    g.gemm_kernel(spec)(xq, xscale, xinit, xmin, codes, scales, mins if spec.has_min else scales, out, 3, N_ROWS,
                        np.empty((n_t, g.ROWS_PER_MICRO), np.float32))
    assert np.isnan(out[:, :3]).all()
    u, s, m = _rows(spec, codes, scales, mins)
    u, s, m = u[:N_ROWS], s[:N_ROWS], m[:N_ROWS]
    dots = np.einsum("rsk,tsk->trs", u.reshape(N_ROWS, n_sub, -1), xq.astype(np.int64).reshape(n_t, n_sub, -1))
    integer = dots + (0 if spec.has_min else xinit.astype(np.int64)[:, None, :])
    terms = integer * xscale.astype(np.float64)[:, None, :] * s[None]
    if spec.has_min:
        terms = terms + m[None] * xmin.astype(np.float64)[:, None, :]
    magnitude = np.abs(terms).sum(2)
    assert np.all(np.abs(out[:, 3:] - terms.sum(2)) <= 1e-6 * magnitude + 1e-30)


@pytest.mark.parametrize("type_name", TYPES)
def test_matmul_int8_gemm(type_name, monkeypatch):
    """Through matmul: the integer GEMM agrees with the int8 B-row mat-vec (the same integer sums,
    float additions in another order); a token's row is the same bits whatever else is in the batch
    or in the other segments; several row tiles (forced small) give the same bits as one."""
    rng = np.random.default_rng(4)
    n = N_COLS[type_name]
    raw = random_rows(type_name, 75, n, rng)
    W = QuantizedMatrix(raw, GGMLType[type_name], n)
    X = rng.standard_normal((47, n)).astype(np.float32)
    got = matmul(W, X, workspace=Workspace(), gemm="int8")
    ref = matvecs(W, X)
    assert np.abs(got - ref).max() <= 2e-6 * np.abs(ref).max()
    shifted = matmul(W, X[7:], gemm="int8")  # every token in another group of 6
    np.testing.assert_array_equal(shifted, got[7:])
    both = matmul_segments(W, X, bounds=[0, 33, 47], gemm="int8")
    np.testing.assert_array_equal(both[:33], matmul(W, X[:33], gemm="int8"))
    np.testing.assert_array_equal(both[33:], matvecs(W, X[33:]))  # a 14-token segment: mat-vec
    threshold = gemm_min_tokens(W.ggml_type, "int8")  # measured: 24 for 256-weight blocks, 16 for 32
    assert threshold == (24 if g.SPECS[W.ggml_type].block_size == 256 else 16)
    assert gemm_min_tokens(W.ggml_type) == 32
    np.testing.assert_array_equal(matmul(W, X[:threshold - 1], gemm="int8"), ref[:threshold - 1])
    np.testing.assert_array_equal(matmul(W, X[:threshold], gemm="int8"), got[:threshold])
    monkeypatch.setattr(mm, "GEMM_INT8_TILE_BYTES", 32 * n)  # tiles of 32 rows: 32 + 32 + 11
    np.testing.assert_array_equal(matmul(W, X, gemm="int8"), got)
    assert not np.array_equal(matmul(W, X, gemm="float"), got)
    with pytest.raises(BadInputError, match="gemm must be one of"):
        matmul(W, X, gemm="int4")


def test_every_kernel_releases_the_gil():
    """As every engine kernel (test_kernels.py): the engine thread computes while the caller runs."""
    from numba.core.registry import CPUDispatcher

    kernels = [f for f in vars(g).values() if isinstance(f, CPUDispatcher) and f.targetoptions.get("inline") != "always"]
    assert len(kernels) >= 11
    assert not [k.py_func.__qualname__ for k in kernels if not k.targetoptions.get("nogil")]
