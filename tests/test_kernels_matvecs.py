"""B-column mat-vecs (`matvecs`, batched decoding): row t of the product is bit for bit the lone
`matvec(W, X[t])`, for every weight type, in both activation modes, from the serial and the parallel
kernel, for any number of columns B. Also `matmul` on both sides of its GEMM threshold, `Workspace`
and `Linear`'s workspace.

Weights are random valid blocks (test_kernels.random_rows); N_ROWS = 37 is not a multiple of the
16-row tiles, and the block counts 1, 2, 3, 7 reach every tail of the row loops (odd block counts,
lone last pairs).
"""

from __future__ import annotations

import numpy as np
import pytest

from llmcli.engine.linear import Linear
from llmcli.engine.matmul import (QuantizedMatrix, Workspace, gemm_min_tokens, get_threads,
                                  matmul, matvec, matvecs, set_activations, set_threads)
from llmcli.errors import BadInputError
from llmcli.gguf.constants import TYPE_INFO, GGMLType

from test_kernels import ALL_TYPES, N_ROWS, random_rows, reference_weights

COLUMN_COUNTS = [1, 2, 3, 4, 5, 8, 16, 17]
BLOCKS_PER_ROW = [1, 2, 3, 7]
INT8_TYPES = ["Q8_0", "Q4_0", "Q5_0", "Q4_1", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS",
              "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ1_S", "IQ1_M", "TQ1_0", "TQ2_0"]
MODES = ["int8", "float"]


@pytest.fixture
def mode(request, activation_mode):
    activation_mode(request.param)
    return request.param


def row_length(type_name: str, n_blocks: int) -> int:
    block = TYPE_INFO[GGMLType[type_name]].block_size
    # the float types have no blocks: 32 values per "block" plus a few, so their rows have a tail
    return n_blocks * 32 + 5 if block == 1 else n_blocks * block


def kernels(W: QuantizedMatrix, mode_name: str):
    """(serial, parallel) kernel of W's type in this activation mode."""
    fmt = W.format
    if mode_name == "int8" and fmt.matvec_int8 is not None:
        return fmt.matvec_int8_serial, fmt.matvec_int8
    return fmt.matvec_serial, fmt.matvec


def activations(rng, n_columns: int, n_cols: int) -> np.ndarray:
    X = rng.standard_normal((n_columns, n_cols)).astype(np.float32)
    X[:, :32] *= 30  # blocks of very different scales
    return X


@pytest.mark.parametrize("mode", MODES, indirect=True)
@pytest.mark.parametrize("type_name", ALL_TYPES)
def test_columns_equal_lone_matvecs(type_name, mode):
    rng = np.random.default_rng(sum(map(ord, type_name)) + len(mode))
    for n_blocks in BLOCKS_PER_ROW:
        n_cols = row_length(type_name, n_blocks)
        W = QuantizedMatrix(random_rows(type_name, N_ROWS, n_cols, rng), GGMLType[type_name], n_cols)
        X = activations(rng, max(COLUMN_COUNTS), n_cols)
        lone = np.stack([matvec(W, x) for x in X])
        for kernel in kernels(W, mode):
            for n_columns in COLUMN_COUNTS:
                out = np.full((n_columns, N_ROWS), np.nan, np.float32)
                kernel(W.weights, X[:n_columns], out)
                assert np.array_equal(out, lone[:n_columns]), (type_name, mode, n_blocks, n_columns, kernel)
        for n_columns in COLUMN_COUNTS:
            assert np.array_equal(matvecs(W, X[:n_columns]), lone[:n_columns]), (type_name, n_blocks, n_columns)


@pytest.mark.parametrize("mode", ["int8"], indirect=True)
@pytest.mark.parametrize("type_name", INT8_TYPES)
def test_int8_columns_differ_from_float(type_name, mode):
    """The int8 mode really runs the 8-bit kernels on columns (not the float ones)."""
    rng = np.random.default_rng(3)
    n_cols = row_length(type_name, 2)
    W = QuantizedMatrix(random_rows(type_name, N_ROWS, n_cols, rng), GGMLType[type_name], n_cols)
    X = activations(rng, 3, n_cols)
    int8 = matvecs(W, X)
    set_activations("float")
    exact = matvecs(W, X)
    assert not np.array_equal(int8, exact)
    # the activation rounding: Q3_K 2.6 % (its random weights in 256-value activation blocks one of
    # which holds the 30x values), the others up to 1.6 %
    assert np.abs(int8 - exact).max() < 0.03 * np.abs(exact).max()


@pytest.mark.parametrize("mode", MODES, indirect=True)
def test_parallel_pool_gives_the_same_bits(mode):
    """Through the public API at 1 and 2 threads (a matrix big enough for the parallel kernel)."""
    rng = np.random.default_rng(5)
    before = get_threads()
    try:
        for type_name in ("Q5_0", "Q6_K", "Q4_1", "F16"):
            n_cols = row_length(type_name, 3)
            W = QuantizedMatrix(random_rows(type_name, 1000, n_cols, rng), GGMLType[type_name], n_cols)
            X = activations(rng, 9, n_cols)
            results = []
            for threads in (1, 2):
                set_threads(threads)
                results.append((matvecs(W, X), np.stack([matvec(W, x) for x in X])))
            for got, lone in results:
                assert np.array_equal(got, results[0][1]) and np.array_equal(lone, results[0][1]), type_name
    finally:
        set_threads(before)


@pytest.mark.parametrize("mode", MODES, indirect=True)
@pytest.mark.parametrize("type_name", ["F32", "Q8_0", "Q4_0", "Q5_0", "Q4_1", "Q4_K", "Q5_K", "Q6_K", "IQ4_XS"])
def test_matmul_on_both_sides_of_the_gemm_threshold(type_name, mode):
    rng = np.random.default_rng(11)
    n_cols = 512 if TYPE_INFO[GGMLType[type_name]].block_size == 256 else 96
    raw = random_rows(type_name, N_ROWS, n_cols, rng)
    W = QuantizedMatrix(raw, GGMLType[type_name], n_cols)
    w64 = reference_weights(raw, type_name).astype(np.float64)
    threshold = gemm_min_tokens(W.ggml_type)
    assert 2 <= threshold <= 64
    workspace = Workspace()
    for n_tokens in (threshold - 1, threshold, threshold + 7):
        X = rng.standard_normal((n_tokens, n_cols)).astype(np.float32)
        got = matmul(W, X, workspace=workspace)
        if n_tokens < threshold:  # the B-row mat-vec: the lone mat-vecs' bits
            assert np.array_equal(got, np.stack([matvec(W, x) for x in X]))
        else:  # the GEMM is float32 whatever the mode
            np.testing.assert_array_equal(matmul(W, X), got)  # temporaries or a workspace: the same
        expected = X.astype(np.float64) @ w64.T
        # test_kernels' float32 bound; 8-bit activations (below the threshold) round x to ~1/254 of a block's max
        scale = 2e-5 if mode == "float" or n_tokens >= threshold or type_name not in INT8_TYPES else 2e-2
        bound = scale * np.outer(np.linalg.norm(X, axis=1), np.linalg.norm(w64, axis=1))
        assert np.all(np.abs(got - expected) <= bound), (type_name, n_tokens, np.max(np.abs(got - expected) / bound))


def test_workspace_buffers_are_reused():
    rng = np.random.default_rng(2)
    raw = random_rows("Q4_0", 300, 2048, rng)  # several GEMM row tiles plus a <32-row remainder
    W = QuantizedMatrix(raw, GGMLType.Q4_0, 2048)
    X = rng.standard_normal((gemm_min_tokens(W.ggml_type) + 3, 2048)).astype(np.float32)
    workspace = Workspace()
    first = matmul(W, X, workspace=workspace)
    buffers = dict(workspace._buffers)
    assert set(buffers) == {"rows", "panels"}
    second = matmul(W, X, workspace=workspace)
    assert all(workspace._buffers[k] is v for k, v in buffers.items())
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(first, matmul(W, X))
    view = workspace.buffer("rows", 3, 4)
    assert view.shape == (3, 4) and view.dtype == np.float32 and np.shares_memory(view, buffers["rows"])


def test_matvecs_shapes_and_errors():
    rng = np.random.default_rng(4)
    W = QuantizedMatrix(random_rows("Q8_0", 20, 64, rng), GGMLType.Q8_0, 64)
    X = rng.standard_normal((3, 64)).astype(np.float32)
    out = np.empty((3, 20), np.float32)
    assert matvecs(W, X, out) is out
    assert matvecs(W, X[:0]).shape == (0, 20)
    assert matvecs(W.rows(4, 4), X).shape == (3, 0)
    np.testing.assert_array_equal(matvecs(W, X.astype(np.float64)), out)  # converted to float32
    np.testing.assert_array_equal(matvecs(W, np.asfortranarray(X)), out)
    with pytest.raises(BadInputError):
        matvecs(W, X[0])
    with pytest.raises(BadInputError):
        matvecs(W, np.zeros((3, 32), np.float32))
    with pytest.raises(BadInputError):
        matvecs(W, X, np.empty((3, 21), np.float32))


class _Info:
    def __init__(self, name, ggml_type, shape):
        self.name, self.type, self.shape = name, ggml_type, shape


class _Reader:
    path = "test.gguf"

    def __init__(self, raw):
        self.raw = raw

    def tensor_bytes(self, info):
        return self.raw


def test_linear_passes_its_workspace_to_matmul():
    rng = np.random.default_rng(8)
    raw = random_rows("Q6_K", N_ROWS, 256, rng)
    workspace = Workspace()
    layer = Linear(_Reader(raw), _Info("w", GGMLType.Q6_K, (256, N_ROWS)), workspace=workspace)
    assert layer.workspace is workspace
    assert Linear(_Reader(raw), _Info("w", GGMLType.Q6_K, (256, N_ROWS))).workspace is None
    X = rng.standard_normal((gemm_min_tokens(GGMLType.Q6_K) + 1, 256)).astype(np.float32)
    out = np.empty((len(X), N_ROWS), np.float32)
    layer(X, out)
    assert set(workspace._buffers) == {"rows", "panels"}  # the GEMM ran with the layer's workspace
    np.testing.assert_array_equal(out, matmul(layer.matrix, X))
    one = np.empty((1, N_ROWS), np.float32)
    layer(X[:1], one)  # one row: the mat-vec
    np.testing.assert_array_equal(one[0], matvec(layer.matrix, X[0]))
