"""IQ3_XXS and IQ3_S mat-vecs (engine/kernels/iq3.py), float32 and 8-bit activations.

Oracles, all recorded from ggml by scripts/make_iquant_refs.py:
- tests/data/iquants/dequantize.npz: real blocks (llama-quantize's, of the kq model) with ggml's
  dequantized values; the float kernel must equal values @ x up to float32 summation order.
- tests/data/iquants/vec_dot.npz: weight rows, float activations and ggml-cpu's own results of
  quantizing the activations to Q8_K and running the type's vec_dot; the int8 kernel must equal
  them up to float32 rounding of the scaling and of the sum over blocks.
Both kernels: a B-column call equals B lone mat-vecs bit for bit, the serial twin the parallel
kernel. test_kernels_iq1.py runs the same checks on IQ1_S and IQ1_M.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from llmcli.engine.kernels import FORMATS
from llmcli.gguf.constants import TYPE_INFO, GGMLType
from llmcli.quants import dequantize

DATA = Path(__file__).parent / "data" / "iquants"
TYPES = ["IQ3_XXS", "IQ3_S"]
ROWS = 37  # not a multiple of the 16-row tiles
COLUMN_COUNTS = [1, 2, 3, 8, 9]


def real_rows(type_name: str, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """(blocks uint8 (n_rows, n_blocks, block bytes), ggml's values float32 (n_rows, n_cols)):
    dequantize.npz's blocks of real weights, cut into rows of equal length."""
    with np.load(DATA / "dequantize.npz") as refs:
        blocks, values = refs[f"{type_name}.blocks"], refs[f"{type_name}.values"]
    n_blocks = len(blocks) // n_rows
    info = TYPE_INFO[GGMLType[type_name]]
    return (blocks[:n_rows * n_blocks].reshape(n_rows, n_blocks, info.block_bytes),
            values[:n_rows * n_blocks].reshape(n_rows, -1))


def activations(rng, n_columns: int, n_cols: int) -> np.ndarray:
    X = rng.standard_normal((n_columns, n_cols)).astype(np.float32)
    X[:, 256:512] *= 30  # super-blocks of very different scales
    return X


def check_float_matches_dequantized(type_name: str) -> None:
    blocks, values = real_rows(type_name, ROWS)
    fmt = FORMATS[GGMLType[type_name]]
    rng = np.random.default_rng(sum(map(ord, type_name)))
    for x in activations(rng, 3, values.shape[1]):
        out = np.full(ROWS, np.nan, np.float32)
        fmt.matvec(blocks, x.reshape(-1, *fmt.x_group), out)
        exact = values.astype(np.float64) @ x.astype(np.float64)
        magnitude = np.abs(values.astype(np.float64)) @ np.abs(x.astype(np.float64))
        # float32 accumulation: a few ulps of the sum of |terms|; one wrong weight is ~1e-3 of it
        assert np.all(np.abs(out - exact) <= 1e-6 * magnitude), (type_name, np.max(np.abs(out - exact) / magnitude))


def check_int8_matches_ggml(type_name: str) -> None:
    with np.load(DATA / "vec_dot.npz") as refs:
        raw, X, ggml = refs[f"{type_name}.blocks"], refs[f"{type_name}.x"], refs[f"{type_name}.dot"]
        assert str(refs["vec_dot_type"][list(refs["types"]).index(type_name)]) == "Q8_K"
    ggml_type = GGMLType[type_name]
    fmt = FORMATS[ggml_type]
    blocks = raw.reshape(len(raw), -1, TYPE_INFO[ggml_type].block_bytes)
    weights = dequantize(raw, ggml_type).astype(np.float64)
    magnitude = np.abs(X.astype(np.float64)) @ np.abs(weights).T
    for kernel in (fmt.matvec_int8, fmt.matvec_int8_serial):
        out = np.full(ggml.shape, np.nan, np.float32)
        kernel(blocks, X, out)
        # integer sums exact: only float32 rounding of d_w * d_x * sum and of the sum over blocks
        assert np.all(np.abs(out - ggml) <= 1e-5 * magnitude + 1e-30), (type_name, kernel)
    # and really the 8-bit path: off the float product by the activation rounding
    exact = X.astype(np.float64) @ weights.T
    assert np.max(np.abs(ggml - exact) / (magnitude + 1e-30)) > 1e-4


def check_columns_and_twins(type_name: str) -> None:
    blocks, values = real_rows(type_name, ROWS)
    fmt = FORMATS[GGMLType[type_name]]
    rng = np.random.default_rng(7)
    X = activations(rng, max(COLUMN_COUNTS), values.shape[1])
    for parallel, serial in ((fmt.matvec, fmt.matvec_serial), (fmt.matvec_int8, fmt.matvec_int8_serial)):
        lone = np.empty((len(X), ROWS), np.float32)
        for t, x in enumerate(X):
            parallel(blocks, x.reshape(-1, *fmt.x_group), lone[t])
        for kernel in (parallel, serial):
            for n_columns in COLUMN_COUNTS:
                out = np.full((n_columns, ROWS), np.nan, np.float32)
                kernel(blocks, X[:n_columns], out)
                assert np.array_equal(out, lone[:n_columns]), (type_name, kernel, n_columns)


@pytest.mark.parametrize("type_name", TYPES)
def test_float_matvec_matches_dequantized_rows(type_name):
    check_float_matches_dequantized(type_name)


@pytest.mark.parametrize("type_name", TYPES)
def test_int8_matvec_matches_ggml_vec_dot(type_name):
    check_int8_matches_ggml(type_name)


@pytest.mark.parametrize("type_name", TYPES)
def test_columns_equal_lone_matvecs_and_serial_twin(type_name):
    check_columns_and_twins(type_name)
