"""Mat-vec kernels for IQ2_XXS, IQ2_XS and IQ2_S weights (kernels/iq2.py), float and 8-bit activations.

Oracles: ggml's dequantized blocks (tests/data/iquants/dequantize.npz, scripts/make_iquant_refs.py:
ggml's to_float on its own quantized blocks) for the float kernels; for the 8-bit kernels ggml's
`ggml_vec_dot_iq2_*_q8_K` results (tests/data/iquants/vec_dot.npz) and a numpy transcription of
their integer formula (exact int64 sums of grid * sign * xq, (2 ls + 1) per sub-block, float64
scaling) on the Q8_K activation blocks, which test_kernels_int8_kquants.py checks against ggml's.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from numba import njit

from llmcli.engine.kernels import FORMATS
from llmcli.engine.kernels.int8_kquants import quantize_q8_k
from llmcli.engine.matmul import QuantizedMatrix, matmul, matvec, matvecs
from llmcli.gguf.constants import GGMLType
from llmcli.quants import dequantize
from llmcli.quants.iq_grids import KSIGNS_IQ2XS, grid_bytes

REFS = Path(__file__).parent / "data" / "iquants"
TYPES = ["IQ2_XXS", "IQ2_XS", "IQ2_S"]
BLOCK_BYTES = {"IQ2_XXS": 66, "IQ2_XS": 74, "IQ2_S": 82}
GRIDS = {"IQ2_XXS": "iq2xxs_grid", "IQ2_XS": "iq2xs_grid", "IQ2_S": "iq2s_grid"}
N_ROWS = 37  # not a multiple of the 16-row tiles
N_BLOCKS = 8  # 2048 columns


@njit  # not cached: numba's cache would not notice a change in the inlined quantize_q8_k
def _quantize(x):
    return quantize_q8_k(x)


def ggml_rows(type_name: str, n_rows: int = N_ROWS) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 rows of N_BLOCKS of ggml's blocks, ggml's dequantized values of them)."""
    refs = np.load(REFS / "dequantize.npz")
    blocks, values = refs[f"{type_name}.blocks"], refs[f"{type_name}.values"]
    n = n_rows * N_BLOCKS
    assert len(blocks) >= n
    return blocks[:n].reshape(n_rows, -1).copy(), values[:n].reshape(n_rows, -1)


def matrix(type_name: str, raw: np.ndarray) -> QuantizedMatrix:
    return QuantizedMatrix(raw, GGMLType[type_name], raw.shape[1] // BLOCK_BYTES[type_name] * 256)


def integer_codes(type_name: str, raw: np.ndarray):
    """(w int64 (rows, blocks, 32 groups, 8): grid value * sign, sc int64 (rows, blocks, 32): 2 ls + 1
    of each group's sub-block, d float64 (rows, blocks)) as ggml's vec_dot reads a block."""
    b = raw.reshape(len(raw), -1, BLOCK_BYTES[type_name]).astype(np.int64)
    d = (b[..., 0] | b[..., 1] << 8).astype(np.uint16).view(np.float16).astype(np.float64)
    g = np.arange(32)
    if type_name == "IQ2_XXS":  # per sub-block s: 4 index bytes, then a u32 of 4 x 7 sign bits and ls
        aux = sum(b[..., 6 + 8 * (g // 4) + i] << (8 * i) for i in range(4))
        index = b[..., 2 + 8 * (g // 4) + g % 4]
        signs = KSIGNS_IQ2XS[(aux >> (7 * (g % 4))) & 127]
        ls = aux >> 28
    else:
        scales = b[..., 66 if type_name == "IQ2_XS" else 74:][..., g // 4]
        ls = (scales >> (4 * ((g // 2) % 2))) & 15
        if type_name == "IQ2_XS":
            q = b[..., 2 + 2 * g] | b[..., 3 + 2 * g] << 8
            index, signs = q & 511, KSIGNS_IQ2XS[q >> 9]
        else:
            index = b[..., 2 + g] | ((b[..., 66 + g // 4] << (8 - 2 * (g % 4))) & 0x300)
            signs = b[..., 34 + g]
    grid = grid_bytes(GRIDS[type_name]).astype(np.int64)[index]
    sign = np.where((signs.astype(np.int64)[..., None] >> np.arange(8)) & 1, -1, 1)
    return grid * sign, 2 * ls + 1, d


def integer_reference(type_name: str, raw: np.ndarray, x: np.ndarray):
    """(ggml's dot per row, float64 from exact integer sums; the same with every factor taken
    absolute: the size of what float32 adds up) for activations x quantized to Q8_K."""
    xq, xd, _ = _quantize(x)
    w, sc, d = integer_codes(type_name, raw)
    xq = xq.astype(np.int64).reshape(-1, 32, 8)
    per_group = (w * xq).sum(-1)
    per_group_abs = (np.abs(w) * np.abs(xq)).sum(-1)
    scale = 0.125 * d * xd.astype(np.float64)
    return ((sc * per_group).sum(-1) * scale).sum(1), ((sc * per_group_abs).sum(-1) * np.abs(scale)).sum(1)


def assert_close_to_terms(got, reference, what, rel=3e-7):
    """got = the exact sum up to float32 rounding of the per-block scaling and the lane sums
    (measured <= 2.1e-8 of the magnitude; a wrong code moves it by ~1/2048 of it)."""
    exact, magnitude = reference
    err = np.abs(got.astype(np.float64) - exact)
    assert np.all(err <= rel * magnitude + 1e-30), (what, (err / np.maximum(magnitude, 1e-30)).max())


@pytest.mark.parametrize("type_name", TYPES)
def test_float_matvec_is_the_decoded_rows_product(type_name, activation_mode):
    activation_mode("float")
    raw, ggml_values = ggml_rows(type_name)
    values = dequantize(raw, GGMLType[type_name])
    np.testing.assert_array_equal(values, ggml_values)  # the codec decodes as ggml (test_iq2.py)
    W = matrix(type_name, raw)
    rng = np.random.default_rng(len(type_name))
    x = rng.standard_normal(W.n_cols).astype(np.float32)
    products = values.astype(np.float64) * x.astype(np.float64)
    got = matvec(W, x)
    # only the order of float32 additions differs: 32 lanes of 64 FMAs each, then a tree of 5
    err = np.abs(got - products.sum(1))
    assert np.all(err <= 1e-6 * np.abs(products).sum(1)), (err / np.abs(products).sum(1)).max()
    # the prompt GEMMs (32+ tokens): float32 on decoded tiles; "int8" the integer GEMM, ggml's
    # integer sums on Q8_K activations (test_kernels_gemm_int8.py checks its parts)
    X = rng.standard_normal((33, W.n_cols)).astype(np.float32)
    expected = X.astype(np.float64) @ values.astype(np.float64).T
    bound = 1e-6 * np.abs(X).astype(np.float64) @ np.abs(values).astype(np.float64).T
    assert np.all(np.abs(matmul(W, X, gemm="float") - expected) <= bound)
    integer = matmul(W, X, gemm="int8")
    for t in range(len(X)):
        assert_close_to_terms(integer[t], integer_reference(type_name, raw, X[t]), "int8 GEMM", rel=2e-6)


@pytest.mark.parametrize("type_name", TYPES)
@pytest.mark.parametrize("mode", ["float", "int8"])
def test_columns_and_serial_twin_are_the_single_matvec_bit_for_bit(type_name, mode, activation_mode):
    activation_mode(mode)
    raw, _ = ggml_rows(type_name)
    W = matrix(type_name, raw)
    rng = np.random.default_rng(3)
    X = rng.standard_normal((11, W.n_cols)).astype(np.float32)  # a group of 8 columns, then 2 and 1
    X[4, :256] = 0  # an all-zero activation block
    singles = np.stack([matvec(W, x) for x in X])
    np.testing.assert_array_equal(matvecs(W, X), singles)
    fmt = FORMATS[GGMLType[type_name]]
    parallel, serial = (fmt.matvec, fmt.matvec_serial) if mode == "float" else (fmt.matvec_int8, fmt.matvec_int8_serial)
    for kernel in (parallel, serial):
        out = np.full((len(X), N_ROWS), np.nan, np.float32)
        kernel(W.weights, X, out)
        np.testing.assert_array_equal(out, singles)
        one = np.full(N_ROWS, np.nan, np.float32)
        kernel(W.weights, X[2].reshape(W.x_shape), one)
        np.testing.assert_array_equal(one, singles[2])


@pytest.mark.parametrize("type_name", TYPES)
def test_int8_matvec_equals_ggmls_integer_formula(type_name, activation_mode):
    activation_mode("int8")
    raw, values = ggml_rows(type_name)
    raw[5, :BLOCK_BYTES[type_name]] = 0  # a block of zeros (d = 0)
    W = matrix(type_name, raw)
    rng = np.random.default_rng(11)
    x = rng.standard_normal(W.n_cols).astype(np.float32)
    x[:256] *= 40  # super-blocks of very different scales
    x[512:768] = 0  # an all-zero activation block
    got = matvec(W, x)
    reference = integer_reference(type_name, raw, x)
    assert_close_to_terms(got, reference, type_name)
    # against the float product: only the activation rounding differs (about 0.5-1 % here)
    exact = dequantize(raw, GGMLType[type_name]).astype(np.float64) @ x.astype(np.float64)
    rel = np.linalg.norm(got - exact) / np.linalg.norm(exact)
    assert 1e-4 < rel < 0.03, rel


def split_q8k(blocks: np.ndarray):
    """ggml's block_q8_K records (float d, int8 qs[256], int16 bsums[16]), (n, 292) -> (xq, xd)."""
    return blocks[:, 4:260].copy().view(np.int8).reshape(-1), blocks[:, :4].copy().view(np.float32).reshape(-1)


@pytest.mark.parametrize("type_name", TYPES)
def test_int8_matvec_equals_ggmls_vec_dot(type_name, activation_mode):
    """ggml-cpu's own vec_dot_iq2_*_q8_K (AVX-512 build) on ggml-quantized, real and random rows,
    for 6 activation columns (outliers, a zero super-block, ...): our Q8_K blocks are ggml's, and
    our dots equal ggml's up to the order of the float additions."""
    activation_mode("int8")
    refs = np.load(REFS / "vec_dot.npz")
    assert str(refs["vec_dot_type"][list(refs["types"]).index(type_name)]) == "Q8_K"
    raw, X, dots = refs[f"{type_name}.blocks"], refs[f"{type_name}.x"], refs[f"{type_name}.dot"]
    W = matrix(type_name, raw)
    got = matvecs(W, X)
    for t, x in enumerate(X):
        xq, xd = _quantize(x)[:2]
        want_q, want_d = split_q8k(refs[f"{type_name}.xq"][t].reshape(-1, 292))
        np.testing.assert_array_equal(xq, want_q)
        np.testing.assert_array_equal(xd.view(np.uint32), want_d.view(np.uint32))
        reference = integer_reference(type_name, raw, x)
        assert_close_to_terms(dots[t], reference, ("ggml", t))  # the transcription is ggml's formula
        assert_close_to_terms(got[t], reference, ("ours", t))
        # measured <= 7.4e-8 of the magnitude apart (ggml's own from the exact sum: <= 5.2e-8)
        err = np.abs(got[t].astype(np.float64) - dots[t])
        assert np.all(err <= 3e-7 * reference[1] + 1e-30), (t, (err / np.maximum(reference[1], 1e-30)).max())


def test_generic_code_without_vnni(tmp_path, activation_mode):
    """Compiled for a CPU without AVX512-VNNI (int8.HAS_VNNI False) the int8 kernels emit plain
    vector IR for the byte products and the sign masks: the same numbers. Haswell, not "generic":
    the fp16 scales load as `fpext half`, which needs F16C."""
    activation_mode("int8")
    refs = np.load(REFS / "vec_dot.npz")
    script = textwrap.dedent(f"""
        import numpy as np
        from llmcli.engine.kernels import int8, iq2
        from llmcli.gguf.constants import GGMLType
        assert not int8.HAS_VNNI
        refs = np.load({str(REFS / "vec_dot.npz")!r})
        out = {{}}
        for name, kernel in iq2.INT8_MATVECS.items():
            raw, X = refs[name.name + ".blocks"], refs[name.name + ".x"]
            out[name.name] = np.empty((len(X), len(raw)), np.float32)
            kernel(raw.reshape(len(raw), 2, -1), X, out[name.name])
        np.savez({str(tmp_path / 'out.npz')!r}, **out)
    """)
    env = dict(os.environ, NUMBA_CPU_NAME="haswell", NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=600)
    generic = np.load(tmp_path / "out.npz")
    for type_name in TYPES:
        raw, X = refs[f"{type_name}.blocks"], refs[f"{type_name}.x"]
        np.testing.assert_array_equal(generic[type_name], matvecs(matrix(type_name, raw), X))
