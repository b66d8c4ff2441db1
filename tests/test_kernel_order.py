"""Q4_K rows repacked into the 8-bit mat-vec's order (engine/panels.py `pack_kernel_order`,
kernels/int8_kquants.py `q4_k_kernel_order`): the same weights in 148-byte blocks, so every product
gives the bits the rows give - the mat-vec for any number of columns (serial or parallel, 1 or 2
threads), the integer GEMM's tiles, and in "float" mode the rows themselves; the mapped rows are
released as they are repacked; a model's logits are the same repacked or not.

Row counts 37 and 80 (not multiples of the row tile or the GEMM's panels), 1, 2 and 8 blocks a row.
"""

from __future__ import annotations

import numpy as np
import pytest

from llmcli.engine import matmul
from llmcli.engine.kernels import gemm_int8
from llmcli.engine.matmul import QuantizedMatrix, matvec, matvecs, set_activations, set_threads
from llmcli.engine.panels import KERNEL_ORDER_TYPES, pack_kernel_order
from llmcli.gguf.constants import GGMLType

from test_kernels import random_rows

COLUMN_COUNTS = [1, 2, 3, 5, 8, 13, 16]


def _pair(rng, n_rows, n_blocks):
    """The same Q4_K matrix twice: as stored, and repacked."""
    raw = random_rows("Q4_K", n_rows, 256 * n_blocks, rng)
    rows = QuantizedMatrix(raw, GGMLType.Q4_K, 256 * n_blocks)
    packed = QuantizedMatrix(raw.copy(), GGMLType.Q4_K, 256 * n_blocks)
    released = []
    pack_kernel_order(packed, lambda a, b: released.append((a, b)))
    assert released[0][0] == 0 and released[-1][1] == n_rows  # every row given back, in order
    assert all(b == c for (_, b), (c, _) in zip(released, released[1:]))
    return rows, packed


def test_q4_k_is_the_repacked_type():
    assert KERNEL_ORDER_TYPES == {GGMLType.Q4_K}


@pytest.mark.parametrize("n_rows", [37, 80])
@pytest.mark.parametrize("n_blocks", [1, 2, 8])
@pytest.mark.parametrize("threads", [1, 2])
def test_matvecs_give_the_rows_bits(n_rows, n_blocks, threads, int8_mode):
    rng = np.random.default_rng(n_rows * 10 + n_blocks)
    rows, packed = _pair(rng, n_rows, n_blocks)
    assert packed.kernel_rows.shape == (n_rows, n_blocks, 148) and not packed.kernel_rows.flags.writeable
    set_threads(threads)
    for B in COLUMN_COUNTS:
        X = rng.standard_normal((B, 256 * n_blocks)).astype(np.float32)
        expected = matvecs(rows, X)
        assert np.array_equal(matvecs(packed, X).view(np.uint32), expected.view(np.uint32)), B
        decoded = matvecs(packed, X, decoding=True)
        assert np.array_equal(decoded.view(np.uint32), matvecs(rows, X, decoding=True).view(np.uint32)), B
    assert np.array_equal(matvec(packed, X[2]).view(np.uint32), matvec(rows, X[2]).view(np.uint32))


def test_products_read_the_repacked_rows(int8_mode):
    """The 8-bit products read kernel_rows (scrambling them changes the result), "float" mode the rows."""
    rng = np.random.default_rng(3)
    rows, packed = _pair(rng, 80, 2)
    X = rng.standard_normal((4, 512)).astype(np.float32)
    expected = matvecs(rows, X)
    set_activations("float")
    float_rows = matvecs(rows, X)
    assert np.array_equal(matvecs(packed, X), float_rows)
    set_activations("int8")
    scrambled = np.ascontiguousarray(packed.kernel_rows[::-1])
    scrambled.flags.writeable = False
    packed.kernel_rows = scrambled
    assert not np.array_equal(matvecs(packed, X), expected)


@pytest.mark.parametrize("n_rows", [37, 80])
def test_integer_gemm_tiles_from_repacked_rows_are_the_rows_tiles(n_rows):
    rng = np.random.default_rng(n_rows)
    rows, packed = _pair(rng, n_rows, 2)
    n_panels = -(-n_rows // gemm_int8.ROWS_PER_PANEL)
    tiles = []
    for decode, weights in ((gemm_int8.DECODERS[GGMLType.Q4_K], rows.weights),
                            (gemm_int8.decode_q4_k_kernel_order, packed.kernel_rows)):
        codes = np.zeros((n_panels, 512 * gemm_int8.ROWS_PER_PANEL), np.uint8)
        scales = np.zeros((n_panels, 16 * gemm_int8.ROWS_PER_PANEL), np.float32)
        mins = np.zeros_like(scales)
        decode(weights, 0, codes, scales, mins)
        tiles.append((codes, scales, mins))
    for a, b in zip(*tiles):
        assert np.array_equal(a, b)


def test_integer_gemm_gives_the_rows_bits(int8_mode):
    rng = np.random.default_rng(5)
    rows, packed = _pair(rng, 80, 8)
    X = rng.standard_normal((40, 2048)).astype(np.float32)
    assert np.array_equal(matmul.matmul(packed, X, gemm="int8"), matmul.matmul(rows, X, gemm="int8"))


def test_a_model_gives_the_same_logits_repacked_or_not(tmp_path):
    """The K-quant test model in Q4_K-pure: mapped (its Q4_K layers repacked, the pages released)
    and read into memory (--no-mmap: rows kept), a prompt through the integer GEMM, then decoded
    tokens: the same bits."""
    from llmcli.models import load_model
    from llmcli.quantize import quantize_file
    from llmcli.quants.mixes import QuantizeOptions
    from tests.kq_refs import KQ

    path = tmp_path / "kq-Q4_K.gguf"
    quantize_file(KQ, path, "Q4_K", QuantizeOptions(pure=True), measure=False)
    results = []
    for use_mmap in (True, False):
        model = load_model(path, ctx_size=128, use_mmap=use_mmap)
        repacked = [m.matrix.kernel_rows is not None for b in model.blocks for m in vars(b).values()
                    if hasattr(m, "matrix") and m.matrix.ggml_type == GGMLType.Q4_K]
        assert repacked and all(r == use_mmap for r in repacked)
        seq = model.new_sequence()
        prompt = model.forward(seq, np.arange(5, 45), 0, all_logits=True).copy()
        steps = [model.decode([seq], np.array([9 + i]))[0].copy() for i in range(3)]
        results.append(np.concatenate([prompt] + [s.reshape(1, -1) for s in steps]))
    assert np.array_equal(results[0].view(np.uint32), results[1].view(np.uint32))


@pytest.mark.parametrize("type_name,repacked", [
    ("Q4_K", lambda m: m.kernel_rows is not None and not m.wide_decode),
    ("Q8_0", lambda m: m.panels is not None and m.wide_decode),  # as a Q8_0 layer matrix: float64 decode sums
])
def test_experts_are_repacked_as_layer_matrices_each_releasing_its_rows(tmp_path, int8_mode, type_name, repacked):
    """A 3-D expert stack (3 experts of 37 rows, 512 columns) of a type whose layer matrices are
    repacked at load: each expert's Linear is repacked the same way and gives the bits its stored
    rows give (decoded tokens), and the mapped pages are given back expert after expert, every row
    of the stack once, at its offset in the stack."""
    from llmcli.gguf import GGUFReader, GGUFWriter
    from llmcli.models.transformer import Transformer

    n_rows, n_cols, n_expert = 37, 512, 3
    ggml_type = GGMLType[type_name]
    raw = random_rows(type_name, n_rows * n_expert, n_cols, np.random.default_rng(5))
    path = tmp_path / "experts.gguf"
    w = GGUFWriter(path)
    w.add_string("general.architecture", "llama")
    w.add_tensor_info("blk.0.ffn_up_exps.weight", (n_cols, n_rows, n_expert), ggml_type)
    with w.open():
        w.write_tensor_data("blk.0.ffn_up_exps.weight", raw)
    with GGUFReader(path) as reader:
        released = []
        reader.release_pages = lambda info, lo, hi: released.append((lo // info.row_bytes, hi // info.row_bytes))
        model = Transformer.__new__(Transformer)  # only what _weight reads
        model.reader, model.workspace = reader, None
        experts = model._weight(reader.tensor("blk.0.ffn_up_exps.weight"), None)
        assert [e.expert for e in experts] == list(range(n_expert))
        assert all(repacked(e.matrix) for e in experts)
        assert released[0][0] == 0 and released[-1][1] == n_rows * n_expert
        assert all(b == c for (_, b), (c, _) in zip(released, released[1:]))
        X = np.random.default_rng(6).standard_normal((3, n_cols)).astype(np.float32)
        for e, linear in enumerate(experts):
            rows = QuantizedMatrix(raw[e * n_rows:(e + 1) * n_rows], ggml_type, n_cols)
            rows.wide_decode = linear.matrix.wide_decode
            assert rows.kernel_rows is None and rows.panels is None
            assert np.array_equal(linear.decode(X, np.empty((3, n_rows), np.float32), True),
                                  matvecs(rows, X, decoding=True))
