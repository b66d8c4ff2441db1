"""Q8_0, Q4_0, Q5_0 and IQ4_NL weights repacked into VNNI row panels (engine/panels.py,
kernels/panel_int8.py): the packing is the same bytes reordered; column t of a B-column product is
bit for bit the lone (B = 1) product of X[t], for any B, serial or parallel, at 1 or 2 threads; the
values are the row mat-vec's up to float summation order (the same 8-bit activations), and in
row order (Q8_0, Q5_0) the row mat-vec's bits; `matvec`/
`matvecs` run the panels of a packed matrix in "int8" mode only; `matmul`'s integer GEMM decodes
from the panels the tile it decodes from the rows (the same results), and rows looked up in the
panels are the type's decoder's.

Row counts: 37 (3 panels, the last partial: the tail path), 64 (a whole panel pair twice) and 80
(an odd panel count: the lone last panel); block counts 1, 2 and 20 (the demo model's 640).
"""

from __future__ import annotations

import numpy as np
import pytest

from llmcli.engine import matmul
from llmcli.engine.kernels import gemm_int8
from llmcli.engine.kernels.panel_int8 import KERNELS, PANEL_KINDS
from llmcli.engine.matmul import QuantizedMatrix, matvec, matvecs, set_activations, set_threads
from llmcli.engine.panels import PanelMatrix
from llmcli.errors import UnsupportedError
from llmcli.gguf.constants import GGMLType

from test_kernels import random_rows

ROW_COUNTS = [37, 64, 80]
BLOCKS_PER_ROW = [1, 2, 20]
COLUMN_COUNTS = [1, 2, 3, 5, 6, 7, 8, 12, 13, 16]
TYPES = ["Q8_0", "Q4_0", "Q5_0", "IQ4_NL"]
ROW_ORDER_TYPES = ["Q8_0", "Q5_0"]


def test_every_type_packs_on_this_cpu():
    """The CI machine has AVX512-VNNI: the panels are what runs, not the row fallback."""
    assert [t.name for t in PANEL_KINDS] == TYPES


def matrix(rng, type_name: str, n_rows: int, n_blocks: int) -> QuantizedMatrix:
    return QuantizedMatrix(random_rows(type_name, n_rows, 32 * n_blocks, rng), GGMLType[type_name], 32 * n_blocks)


def panels_of(W: QuantizedMatrix) -> PanelMatrix:
    return PanelMatrix(W.weights, W.n_cols, W.ggml_type)


def kernels(W: QuantizedMatrix):
    """(serial, parallel) panel mat-vec kernels of W's type."""
    found = KERNELS[PANEL_KINDS[W.ggml_type]]
    return found.matvecs_serial, found.matvecs


def activations(rng, n_columns: int, n_cols: int) -> np.ndarray:
    X = rng.standard_normal((n_columns, n_cols)).astype(np.float32)
    X[:, :32] *= 30  # blocks of very different scales
    return X


@pytest.mark.parametrize("type_name", TYPES)
@pytest.mark.parametrize("n_rows", ROW_COUNTS)
def test_packing_is_the_same_bytes_reordered(n_rows, type_name):
    rng = np.random.default_rng(n_rows)
    W = matrix(rng, type_name, n_rows, 3)
    P = panels_of(W)
    assert P.nbytes == -(-n_rows // 16) * 16 * W.raw.shape[1]  # 34 (18, 22) bytes per 32 weights
    if type_name == "Q8_0":
        codes = P.codes.reshape(P.codes.shape[0], -1, 16, 4)  # [panel, k // 4, row in panel, k % 4]
        codes = codes.transpose(0, 2, 1, 3).reshape(-1, W.n_cols)[:n_rows]
        assert np.array_equal(codes ^ 0x80, W.weights[:, :, 2:].reshape(n_rows, -1))
    else:  # [panel, block, m, row in panel, i] = qs[4m + i] of the row's block (m = 4: Q5_0's qh)
        qs_at = 6 if type_name == "Q5_0" else 2
        codes = P.codes.reshape(P.codes.shape[0], 3, -1, 16, 4).transpose(0, 3, 1, 2, 4)
        codes = codes.reshape(-1, 3, codes.shape[3] * 4)[:n_rows]
        assert np.array_equal(codes[:, :, :16], W.weights[:, :, qs_at:])
        if type_name == "Q5_0":
            assert np.array_equal(codes[:, :, 16:], W.weights[:, :, 2:6])
    scales = P.scales.reshape(P.scales.shape[0], -1, 16).transpose(0, 2, 1).reshape(-1, 3)[:n_rows]
    assert np.array_equal(scales, W.weights[:, :, :2].copy().view(np.uint16)[:, :, 0])
    padded = P.codes.reshape(P.codes.shape[0], -1, 16, 4)[-1, :, n_rows % 16 or 16:]
    assert not padded.any() and not P.scales.reshape(-1, 3, 16)[-1, :, n_rows % 16 or 16:].any()


@pytest.mark.parametrize("type_name", TYPES)
@pytest.mark.parametrize("n_rows", ROW_COUNTS)
def test_columns_equal_lone_products_and_the_row_matvec(n_rows, type_name, int8_mode):
    rng = np.random.default_rng(100 + n_rows)
    for n_blocks in BLOCKS_PER_ROW:
        W = matrix(rng, type_name, n_rows, n_blocks)
        P = panels_of(W)
        serial, parallel = kernels(W)
        X = activations(rng, max(COLUMN_COUNTS), W.n_cols)
        tail = np.empty((max(COLUMN_COUNTS), 16), np.float32)
        lone = np.empty((len(X), n_rows), np.float32)
        for t in range(len(X)):
            serial(P.codes, P.scales, X[t:t + 1], lone[t:t + 1], tail[:1])
        rows = matvecs(W, X)  # not packed yet: the row-by-row 8-bit mat-vec
        scale = np.abs(rows).max(axis=1, keepdims=True)
        assert np.all(np.abs(lone - rows) <= 1e-5 * scale), (n_rows, n_blocks)
        for threads in (1, 2):
            set_threads(threads)
            for kernel in (serial, parallel):
                for n_columns in COLUMN_COUNTS:
                    out = np.full((n_columns, n_rows), np.nan, np.float32)
                    kernel(P.codes, P.scales, X[:n_columns], out, tail[:n_columns])
                    assert np.array_equal(out, lone[:n_columns]), (n_rows, n_blocks, threads, kernel, n_columns)


@pytest.mark.parametrize("type_name", ROW_ORDER_TYPES)
@pytest.mark.parametrize("n_rows", ROW_COUNTS)
def test_row_order_panels_give_the_row_matvecs_bits(n_rows, type_name, int8_mode):
    """Q8_0 / Q5_0 layer matrices keep the row mat-vec's summation order in panels: every column
    bit for bit what the row-by-row 8-bit mat-vec gives, for any B, serial or parallel, at 1 or 2
    threads, with odd block counts too (the row kernel's lone last block)."""
    rng = np.random.default_rng(200 + n_rows)
    for n_blocks in BLOCKS_PER_ROW + [3]:
        W = matrix(rng, type_name, n_rows, n_blocks)
        P = PanelMatrix(W.weights, W.n_cols, W.ggml_type, row_order=True)
        found = KERNELS[P.kind]
        X = activations(rng, max(COLUMN_COUNTS), W.n_cols)
        tail = np.empty((max(COLUMN_COUNTS), 16), np.float32)
        for threads in (1, 2):
            set_threads(threads)
            for kernel in (found.row_order_serial, found.row_order):
                for n_columns in COLUMN_COUNTS:
                    rows = matvecs(W, X[:n_columns])  # W has no panels: the row mat-vec
                    out = np.full((n_columns, n_rows), np.nan, np.float32)
                    kernel(P.codes, P.scales, X[:n_columns], out, tail[:n_columns])
                    assert np.array_equal(out.view(np.uint32), rows.view(np.uint32)), \
                        (n_blocks, threads, kernel, n_columns)
        W.panels = P  # and through matvecs / matvec
        assert np.array_equal(matvecs(W, X[:5]), rows[:5]) and np.array_equal(matvec(W, X[2]), rows[2])


@pytest.mark.parametrize("type_name", ROW_ORDER_TYPES)
@pytest.mark.parametrize("n_rows", ROW_COUNTS)
def test_decoded_tokens_sum_in_float64_the_same_bits_packed_or_not(n_rows, type_name, int8_mode):
    """A Q8_0 / Q5_0 layer matrix's decoded tokens (matvecs(decoding=True) of a matrix marked
    wide_decode) sum each row in float64: in panels and in the unpacked rows (--mlock, --no-mmap)
    the same bits, for any B, serial or parallel, at 1 or 2 threads; each row is its exact sum
    (the integer block sums times d_w * xd rounded to float32, as ggml rounds them) rounded once;
    and prompt rows (decoding=False) keep the row order's bits."""
    rng = np.random.default_rng(300 + n_rows)
    for n_blocks in BLOCKS_PER_ROW + [3]:
        W = matrix(rng, type_name, n_rows, n_blocks)
        X = activations(rng, max(COLUMN_COUNTS), W.n_cols)
        row_order = matvecs(W, X)  # not yet marked: the row mat-vec
        W.wide_decode = True
        assert np.array_equal(matvecs(W, X), row_order)
        exact = _exact_sums(W, X)
        for threads in (1, 2):
            set_threads(threads)
            for n_columns in COLUMN_COUNTS:
                rows = matvecs(W, X[:n_columns], decoding=True)
                assert np.array_equal(rows, exact[:n_columns]), (n_blocks, threads, n_columns)
        W.panels = PanelMatrix(W.weights, W.n_cols, W.ggml_type, row_order=True)
        for threads in (1, 2):
            set_threads(threads)
            for n_columns in COLUMN_COUNTS:
                packed = matvecs(W, X[:n_columns], decoding=True)
                assert np.array_equal(packed, exact[:n_columns]), (n_blocks, threads, n_columns)
        assert np.array_equal(matvecs(W, X), row_order)


def _exact_sums(W: QuantizedMatrix, X: np.ndarray) -> np.ndarray:
    """Each row . X[t] from the blocks' codes and fp16 scales and X's Q8_0 activation blocks: the
    integer block sums times d_w * xd (float32), each product exact in float64, added in block
    order in float64 and rounded to float32 once."""
    from llmcli.quants.registry import dequantize

    n_blocks = W.n_cols // 32
    xq = np.empty(X.shape, np.int8)
    xd = np.empty((X.shape[0], n_blocks), np.float32)
    xsum = np.empty((X.shape[0], n_blocks), np.int32)
    gemm_int8.activations_q8_0(X, 1, xq, xd, xsum)
    d_w = W.weights[:, :, :2].copy().view(np.float16)[:, :, 0].astype(np.float32)  # (rows, blocks)
    # the codes: each block's values over its scale (exact: a small integer times an fp16 d)
    values = dequantize(W.raw, W.ggml_type).reshape(W.n_rows, n_blocks, 32)
    codes = np.rint(np.divide(values, d_w[:, :, None], out=np.zeros_like(values), where=d_w[:, :, None] != 0))
    isums = np.einsum("rbk,tbk->trb", codes.astype(np.int64), xq.reshape(X.shape[0], n_blocks, 32).astype(np.int64))
    d = (d_w[None, :, :] * xd[:, None, :]).astype(np.float32)  # float32 products, as ggml rounds them
    total = np.zeros((X.shape[0], W.n_rows), np.float64)
    for b in range(n_blocks):
        total += isums[:, :, b].astype(np.float64) * d[:, :, b].astype(np.float64)
    return total.astype(np.float32)


@pytest.mark.parametrize("type_name", sorted(set(TYPES) - set(ROW_ORDER_TYPES)))
def test_row_order_is_offered_only_where_layers_use_it(type_name):
    rng = np.random.default_rng(3)
    W = matrix(rng, type_name, 16, 1)
    with pytest.raises(UnsupportedError, match="row-order"):
        PanelMatrix(W.weights, W.n_cols, W.ggml_type, row_order=True)


@pytest.mark.parametrize("type_name", TYPES)
def test_a_packed_matrix_runs_its_panels_in_int8_mode_only(type_name, int8_mode):
    rng = np.random.default_rng(7)
    W = matrix(rng, type_name, 80, 20)
    X = activations(rng, 40, W.n_cols)
    rows_int8 = matvecs(W, X[:5])
    set_activations("float")
    rows_float, gemm_float = matvecs(W, X[:5]), matmul.matmul(W, X)
    set_activations("int8")
    gemm_int8_rows = matmul.matmul(W, X, gemm="int8")
    P = panels_of(W)
    W.panels = P
    panels = np.empty((5, 80), np.float32)
    kernels(W)[0](P.codes, P.scales, X[:5], panels, np.empty((5, 16), np.float32))
    assert not np.array_equal(panels, rows_int8)  # another summation order: really the panels
    assert np.array_equal(matvecs(W, X[:5]), panels)
    assert np.array_equal(matvec(W, X[3]), panels[3])
    assert np.array_equal(matmul.matmul(W, X), gemm_float)  # 40 rows, float GEMM: from the rows
    assert np.array_equal(matmul.matmul(W, X, gemm="int8"), gemm_int8_rows)  # the integer GEMM's tiles
    set_activations("float")
    assert np.array_equal(matvecs(W, X[:5]), rows_float)


@pytest.mark.parametrize("type_name", TYPES)
@pytest.mark.parametrize("n_rows", ROW_COUNTS)
def test_gemm_tiles_from_panels_are_the_tiles_from_rows(n_rows, type_name):
    """The real rows' codes and scales are the bytes the GEMM's row decoder makes; a tile reaching
    past the last panel is zero there."""
    rng = np.random.default_rng(300 + n_rows)
    W = matrix(rng, type_name, n_rows, 20)
    P = panels_of(W)
    for r0 in (0, 32):
        n_panels = 4  # rows r0 .. r0 + 63: past the end of every matrix here but the 80-row one
        shape = (n_panels, W.n_cols * 16)
        from_rows = np.zeros(shape, np.uint8), np.zeros((n_panels, 20 * 16), np.float32)
        from_panels = np.full(shape, 7, np.uint8), np.full((n_panels, 20 * 16), np.nan, np.float32)
        gemm_int8.DECODERS[W.ggml_type](W.weights, r0, *from_rows, from_rows[1])
        P.decode_tile(r0, *from_panels)
        real = min(n_rows - r0, 16 * n_panels)
        codes = [c.reshape(n_panels, -1, 16, 4).transpose(0, 2, 1, 3).reshape(16 * n_panels, -1) for c in
                 (from_rows[0], from_panels[0])]
        scales = [s.reshape(n_panels, 20, 16).transpose(0, 2, 1).reshape(16 * n_panels, -1) for s in
                  (from_rows[1], from_panels[1])]
        assert np.array_equal(codes[1][:real], codes[0][:real]), (r0, type_name)
        assert np.array_equal(scales[1], scales[0]), (r0, type_name)  # 0 past the end
        whole_panels = -(-n_rows // 16) - r0 // 16
        assert not codes[1][16 * whole_panels:].any()


@pytest.mark.parametrize("type_name", TYPES)
def test_rows_decode_as_the_types_decoder(type_name):
    """Token embeddings of a tied output matrix are looked up in its panels: the same bits."""
    from llmcli.quants.registry import dequantize

    rng = np.random.default_rng(11)
    W = matrix(rng, type_name, 37, 3)
    ids = np.array([0, 36, 17, 17, 5, 31, 32], np.int64)
    rows = panels_of(W).rows(ids, np.full((len(ids), W.n_cols), np.nan, np.float32))
    assert np.array_equal(rows, dequantize(W.raw[ids], W.ggml_type).reshape(len(ids), W.n_cols))
