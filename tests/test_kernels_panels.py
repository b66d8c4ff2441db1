"""Q8_0 weights repacked into VNNI row panels (engine/panels.py, kernels/panel_int8.py): the packing
is the same bytes reordered; column t of a B-column product is bit for bit the lone (B = 1) product
of X[t], for any B, serial or parallel, at 1 or 2 threads; the values are the row mat-vec's up to
float summation order (the same 8-bit activations); and `matvec`/`matvecs` run the panels of a
packed matrix in "int8" mode only, while `matmul`'s GEMM keeps reading the rows.

Row counts: 37 (3 panels, the last partial: the tail path), 64 (a whole panel pair twice) and 80
(an odd panel count: the lone last panel); block counts 1, 2 and 20 (the demo model's 640).
"""

from __future__ import annotations

import numpy as np
import pytest

from llmcli.engine import matmul
from llmcli.engine.kernels.panel_int8 import matvecs_q8_0_panels, matvecs_q8_0_panels_serial
from llmcli.engine.matmul import QuantizedMatrix, get_activations, matvec, matvecs, set_activations, set_threads
from llmcli.engine.panels import PanelMatrix
from llmcli.gguf.constants import GGMLType

from test_kernels import random_rows

ROW_COUNTS = [37, 64, 80]
BLOCKS_PER_ROW = [1, 2, 20]
COLUMN_COUNTS = [1, 2, 3, 5, 6, 7, 8, 12, 13, 16]


@pytest.fixture
def int8_mode():
    before, threads = get_activations(), matmul.get_threads()
    set_activations("int8")
    yield
    set_activations(before)
    set_threads(threads)


def q8_0_matrix(rng, n_rows: int, n_blocks: int) -> QuantizedMatrix:
    return QuantizedMatrix(random_rows("Q8_0", n_rows, 32 * n_blocks, rng), GGMLType.Q8_0, 32 * n_blocks)


def activations(rng, n_columns: int, n_cols: int) -> np.ndarray:
    X = rng.standard_normal((n_columns, n_cols)).astype(np.float32)
    X[:, :32] *= 30  # blocks of very different scales
    return X


@pytest.mark.parametrize("n_rows", ROW_COUNTS)
def test_packing_is_the_same_bytes_reordered(n_rows):
    rng = np.random.default_rng(n_rows)
    W = q8_0_matrix(rng, n_rows, 3)
    P = PanelMatrix(W.weights, W.n_cols)
    assert P.nbytes == -(-n_rows // 16) * 16 * W.raw.shape[1]  # Q8_0's 34 bytes per 32 weights
    codes = P.codes.reshape(P.codes.shape[0], -1, 16, 4)  # [panel, k // 4, row in panel, k % 4]
    codes = codes.transpose(0, 2, 1, 3).reshape(-1, W.n_cols)[:n_rows]
    scales = P.scales.reshape(P.scales.shape[0], -1, 16).transpose(0, 2, 1).reshape(-1, 3)[:n_rows]
    assert np.array_equal(codes ^ 0x80, W.weights[:, :, 2:].reshape(n_rows, -1))
    assert np.array_equal(scales, W.weights[:, :, :2].copy().view(np.uint16)[:, :, 0])
    padded = P.codes.reshape(P.codes.shape[0], -1, 16, 4)[-1, :, n_rows % 16 or 16:]
    assert not padded.any() and not P.scales.reshape(-1, 3, 16)[-1, :, n_rows % 16 or 16:].any()


@pytest.mark.parametrize("n_rows", ROW_COUNTS)
def test_columns_equal_lone_products_and_the_row_matvec(n_rows, int8_mode):
    rng = np.random.default_rng(100 + n_rows)
    for n_blocks in BLOCKS_PER_ROW:
        W = q8_0_matrix(rng, n_rows, n_blocks)
        P = PanelMatrix(W.weights, W.n_cols)
        X = activations(rng, max(COLUMN_COUNTS), W.n_cols)
        tail = np.empty((max(COLUMN_COUNTS), 16), np.float32)
        lone = np.empty((len(X), n_rows), np.float32)
        for t in range(len(X)):
            matvecs_q8_0_panels_serial(P.codes, P.scales, X[t:t + 1], lone[t:t + 1], tail[:1])
        rows = matvecs(W, X)  # not packed yet: the row-by-row 8-bit mat-vec
        scale = np.abs(rows).max(axis=1, keepdims=True)
        assert np.all(np.abs(lone - rows) <= 1e-5 * scale), (n_rows, n_blocks)
        for threads in (1, 2):
            set_threads(threads)
            for kernel in (matvecs_q8_0_panels_serial, matvecs_q8_0_panels):
                for n_columns in COLUMN_COUNTS:
                    out = np.full((n_columns, n_rows), np.nan, np.float32)
                    kernel(P.codes, P.scales, X[:n_columns], out, tail[:n_columns])
                    assert np.array_equal(out, lone[:n_columns]), (n_rows, n_blocks, threads, kernel, n_columns)


def test_a_packed_matrix_runs_its_panels_in_int8_mode_only(int8_mode):
    rng = np.random.default_rng(7)
    W = q8_0_matrix(rng, 80, 20)
    X = activations(rng, 40, W.n_cols)
    rows_int8 = matvecs(W, X[:5])
    set_activations("float")
    rows_float, gemm = matvecs(W, X[:5]), matmul.matmul(W, X)
    set_activations("int8")
    P = PanelMatrix(W.weights, W.n_cols)
    W.panels = P
    panels = np.empty((5, 80), np.float32)
    matvecs_q8_0_panels_serial(P.codes, P.scales, X[:5], panels, np.empty((5, 16), np.float32))
    assert not np.array_equal(panels, rows_int8)  # another summation order: really the panels
    assert np.array_equal(matvecs(W, X[:5]), panels)
    assert np.array_equal(matvec(W, X[3]), panels[3])
    assert np.array_equal(matmul.matmul(W, X), gemm)  # 40 rows: the GEMM, from the rows
    set_activations("float")
    assert np.array_equal(matvecs(W, X[:5]), rows_float)


def test_rows_decode_as_the_q8_0_decoder():
    """Token embeddings of a tied output matrix are looked up in its panels: the same bits."""
    from llmcli.quants import dequantize

    rng = np.random.default_rng(11)
    W = q8_0_matrix(rng, 37, 3)
    ids = np.array([0, 36, 17, 17, 5, 31, 32], np.int64)
    rows = PanelMatrix(W.weights, W.n_cols).rows(ids, np.full((len(ids), W.n_cols), np.nan, np.float32))
    assert np.array_equal(rows, dequantize(W.raw[ids], GGMLType.Q8_0).reshape(len(ids), W.n_cols))
