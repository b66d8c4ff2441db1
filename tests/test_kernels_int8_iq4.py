"""Mat-vecs with 8-bit activations for IQ4_NL (Q8_0 activation blocks, kernels/int8.py) and IQ4_XS
(Q8_K blocks, kernels/int8_kquants.py), as ggml's `ggml_vec_dot_iq4_nl_q8_0` / `_iq4_xs_q8_K`.

Oracles: ggml-cpu's vec_dot on its own activation blocks (tests/data/iquants/vec_dot.npz, see
test_kernels_ternary.py), and the dequantized weights (bit-identical to ggml's) for the size of
the activation rounding. B-column products against lone mat-vecs (serial and parallel kernels, both
activation modes) are test_kernels_matvecs.py's (IQ4_NL and IQ4_XS are in its type lists), the IQ4_XS
serial twin also test_kernels_int8_kquants.py's.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from numba import njit

from llmcli.engine.kernels.int8 import INT8_MATVECS, quantize_activations
from llmcli.engine.kernels.int8_kquants import INT8_KQUANT_MATVECS, quantize_q8_k
from llmcli.engine.matmul import QuantizedMatrix, get_activations, has_int8_kernel, matvec, set_activations
from llmcli.gguf.constants import GGMLType
from llmcli.quants import dequantize, quantize

from test_kernels_ternary import DATA, assert_is_ggmls_dot, q8_0_values, q8_k_values

TYPES = ["IQ4_NL", "IQ4_XS"]
ACTIVATION_VALUES = {"IQ4_NL": q8_0_values, "IQ4_XS": q8_k_values}
KERNELS = {"IQ4_NL": INT8_MATVECS[GGMLType.IQ4_NL], "IQ4_XS": INT8_KQUANT_MATVECS[GGMLType.IQ4_XS]}
N_ROWS = 37  # not a multiple of the 16-row tiles


@pytest.fixture
def mode():
    before = get_activations()
    yield set_activations
    set_activations(before)


@njit  # not cached: numba's cache would not notice a change in the inlined quantizers
def _activations(x, q8_k):
    if q8_k:
        xq, xd, _ = quantize_q8_k(x)
        return xq, xd
    xq, xd, _ = quantize_activations(x, np.int32(128))
    return xq, xd


def random_matrix(type_name: str, n_cols: int, rng) -> np.ndarray:
    w = rng.standard_normal((N_ROWS, n_cols)).astype(np.float32) * rng.uniform(0.01, 3, (N_ROWS, 1)).astype(np.float32)
    w[3] = 0  # an all-zero row
    return quantize(w, GGMLType[type_name])


@pytest.mark.parametrize("type_name", TYPES)
def test_int8_matches_ggml_vec_dot(type_name, mode):
    mode("int8")
    assert has_int8_kernel(GGMLType[type_name])
    assert_is_ggmls_dot(type_name, ACTIVATION_VALUES[type_name])


@pytest.mark.parametrize("type_name", TYPES)
def test_activation_blocks_are_the_ones_ggml_dots(type_name):
    """Q8_0 (IQ4_NL) / Q8_K (IQ4_XS) activation codes and scales equal the blocks ggml's vec_dot read."""
    ref = np.load(DATA / "vec_dot.npz")
    for x, want in zip(ref[f"{type_name}.x"], ref[f"{type_name}.xq"]):
        xq, xd = _activations(x, type_name == "IQ4_XS")
        if type_name == "IQ4_XS":
            blocks = want.reshape(-1, 292)
            want_d, want_q = blocks[:, :4].copy().view(np.float32), blocks[:, 4:260].view(np.int8)
        else:
            blocks = want.reshape(-1, 34)
            want_d, want_q = blocks[:, :2].copy().view(np.float16).astype(np.float32), blocks[:, 2:].view(np.int8)
        np.testing.assert_array_equal(xd.view(np.uint32), want_d.reshape(-1).view(np.uint32))
        np.testing.assert_array_equal(xq, want_q.reshape(-1))


@pytest.mark.parametrize("type_name", TYPES)
@pytest.mark.parametrize("n_blocks", [1, 3, 8])  # super-blocks (IQ4_XS) or 32-blocks x 8 (IQ4_NL)
def test_int8_within_activation_rounding(type_name, n_blocks, mode):
    """Against the exact product: each x is off by at most half its activation block's step d_x, so
    |error| <= sum over activation blocks of d_x / 2 * sum |w| there."""
    rng = np.random.default_rng(n_blocks + len(type_name))
    n_cols = 256 * n_blocks
    raw = random_matrix(type_name, n_cols, rng)
    x = rng.standard_normal(n_cols).astype(np.float32)
    x[:256] *= 40  # blocks of very different scales
    if n_blocks > 1:
        x[256:512] = 0  # an all-zero activation block
    W = QuantizedMatrix(raw, GGMLType[type_name], n_cols)
    mode("int8")
    got = matvec(W, x)
    _, xd = _activations(x, type_name == "IQ4_XS")
    w64 = dequantize(raw, GGMLType[type_name]).astype(np.float64)
    exact = w64 @ x.astype(np.float64)
    size = len(x) // len(xd)
    bound = (np.abs(w64).reshape(N_ROWS, -1, size).sum(-1) * np.abs(xd.astype(np.float64)) / 2).sum(1)
    err = np.abs(got - exact)
    assert np.all(err <= 1.001 * bound + 1e-6 * (np.abs(w64) @ np.abs(x))), (err / bound).max()
    assert got[3] == 0
    rel = np.linalg.norm(got - exact) / np.linalg.norm(exact)
    assert 1e-4 < rel < 0.03, rel  # measured 0.5-0.9 %: the rounding, nothing else
    mode("float")
    assert not np.array_equal(matvec(W, x), got)  # the modes run different kernels


def test_generic_code_without_avx512(tmp_path):
    """On a CPU without AVX-512 or AVX2 pshufb (a generic x86-64 target here) the grid lookup is
    selects and the dots plain vector IR: the same numbers."""
    rng = np.random.default_rng(4)
    cases = {}
    for type_name in TYPES:
        raw = random_matrix(type_name, 512, rng)[:20]
        x = rng.standard_normal(512).astype(np.float32)
        np.save(tmp_path / f"{type_name}.raw.npy", raw)
        np.save(tmp_path / f"{type_name}.x.npy", x)
        W = QuantizedMatrix(raw, GGMLType[type_name], 512)
        out = np.empty(20, np.float32)
        KERNELS[type_name](W.weights, W._x_view(x), out)
        cases[type_name] = out
    script = textwrap.dedent(f"""
        import numpy as np
        from llmcli.engine.kernels import int8
        from llmcli.engine.kernels.int8 import INT8_MATVECS
        from llmcli.engine.kernels.int8_kquants import INT8_KQUANT_MATVECS
        from llmcli.engine.matmul import QuantizedMatrix
        from llmcli.gguf.constants import GGMLType
        assert not (int8.HAS_VNNI or int8.HAS_AVX512BW or int8.HAS_PSHUFB_256)
        for name, kernels in (("IQ4_NL", INT8_MATVECS), ("IQ4_XS", INT8_KQUANT_MATVECS)):
            raw = np.load({str(tmp_path)!r} + f"/{{name}}.raw.npy")
            W = QuantizedMatrix(raw, GGMLType[name], 512)
            out = np.empty(20, np.float32)
            kernels[GGMLType[name]](W.weights, W._x_view(np.load({str(tmp_path)!r} + f"/{{name}}.x.npy")), out)
            np.save({str(tmp_path)!r} + f"/{{name}}.out.npy", out)
    """)
    env = dict(os.environ, NUMBA_CPU_NAME="x86-64", NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=900)
    for type_name, native in cases.items():
        generic = np.load(tmp_path / f"{type_name}.out.npy")
        # the integer sums are exact on both paths; float32 scaling and sums may round differently
        np.testing.assert_allclose(generic, native, rtol=1e-5, atol=1e-6 * np.abs(native).max())
