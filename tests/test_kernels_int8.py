"""Mat-vecs with 8-bit activations (kernels/int8.py): Q8_0, Q4_0, Q5_0, Q4_1, Q5_1 weights; and the
engine's decode with them and the K-quant ones (int8_kquants.py, tested in test_kernels_int8_kquants.py).

Oracles: gguf-py's dequantize for the weight blocks and its Q8_0 quantizer for the activation
blocks; for Q4_1 / Q5_1 ggml itself (tests/data/kernels/int8_vec_dot.npz, recorded by
scripts/make_iquant_refs.py --int8-only: ggml-cpu's Q8_1 activation blocks and its vec_dot) and a
numpy transcription of ggml's integer formula; llama.cpp's own logits on the K-quant test model (its
CPU backend rounds activations the same way), token by token through the engine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf.quants import dequantize as oracle_dequantize
from gguf.quants import quantize as oracle_quantize
from numba import njit

from llmcli.engine.kernels.common import serial_twin
from llmcli.engine.kernels.int8 import INT8_MATVECS, q8_1_sums_into, quantize_activations
from llmcli.engine.matmul import QuantizedMatrix, matmul, matvec, set_activations
from llmcli.errors import BadInputError
from llmcli.gguf.constants import GGMLType
from llmcli.models import load_model
from llmcli.quantize import quantize_file
from llmcli.quants.mixes import QuantizeOptions

from test_kernels import N_ROWS, random_rows

INT8_TYPES = ["Q8_0", "Q4_0", "Q5_0"]
AFFINE_TYPES = ["Q4_1", "Q5_1"]  # w = d u + m: Q8_1 activations
KQ = Path(__file__).parent / "data" / "kq"
GGML_REFS = Path(__file__).parent / "data" / "kernels" / "int8_vec_dot.npz"


@njit(cache=True)
def _quantize(x):
    return quantize_activations(x, np.int32(1))


@njit  # not cached: numba's cache would not notice a change in the inlined quantizers
def _quantize_q8_1(x):
    xq, xd, _ = quantize_activations(x, np.int32(0))
    xs = np.empty(xd.size, np.float32)
    q8_1_sums_into(x, xq, xs)
    return xq, xd, xs


def oracle_activations(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(int codes (n,), block scales (n/32,)) of x as gguf-py's Q8_0 quantizer writes them."""
    blocks = oracle_quantize(x.reshape(1, -1), gguf.GGMLQuantizationType.Q8_0).view(np.uint8).reshape(-1, 34)
    scales = blocks[:, :2].copy().view(np.float16).astype(np.float32).reshape(-1)
    return blocks[:, 2:].view(np.int8).reshape(-1).astype(np.int64), scales


def oracle_weights(raw: np.ndarray, type_name: str) -> np.ndarray:
    """gguf-py's dequantized weights in float64."""
    return oracle_dequantize(raw, gguf.GGMLQuantizationType[type_name]).astype(np.float64)


def int8_reference(raw: np.ndarray, type_name: str, x: np.ndarray) -> np.ndarray:
    """sum over blocks of d_w * d_x * (codes . xq) in float64, from gguf-py's dequantized weights
    (= d_w * code) and gguf-py's activation blocks."""
    xq, xd = oracle_activations(x)
    weights = oracle_weights(raw, type_name)
    n_blocks = x.size // 32
    per_block = np.einsum("rbk,bk->rb", weights.reshape(len(raw), n_blocks, 32), xq.reshape(n_blocks, 32))
    return per_block @ xd.astype(np.float64)


def int8_matvec_case(type_name: str, n_cols: int, activation_mode):
    """(raw rows, their matrix, x, the engine's mat-vec of x with 8-bit activations): N_ROWS random
    rows of `type_name`, x with blocks of very different scales (its first 40x the others)."""
    rng = np.random.default_rng(n_cols + len(type_name))
    raw = random_rows(type_name, N_ROWS, n_cols, rng)
    W = QuantizedMatrix(raw, GGMLType[type_name], n_cols)
    x = rng.standard_normal(n_cols).astype(np.float32)
    x[:32] *= 40
    activation_mode("int8")
    return raw, W, x, matvec(W, x)


def float_mode_matvec(W: QuantizedMatrix, x: np.ndarray, int8_result: np.ndarray, activation_mode) -> np.ndarray:
    """W . x with float activations (the mode stays "float"): another kernel, not int8_result's bits."""
    activation_mode("float")
    result = matvec(W, x)
    assert not np.array_equal(result, int8_result)
    return result


def test_activation_blocks_are_ggmls():
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.standard_normal(32 * 40).astype(np.float32) * 3,
                        np.zeros(32, np.float32),  # an all-zero block: d = 0, codes 0
                        np.full(32, -2.5, np.float32)])
    xq, xd, xbias = _quantize(x)
    want_q, want_d = oracle_activations(x)
    np.testing.assert_array_equal(xd, want_d)  # fp16-rounded amax / 127
    # ggml's x86 quantizer multiplies by 127/amax and rounds half to even, gguf-py's reference by
    # 1/d and half away from zero: codes may differ by 1 on an exact tie, nowhere else
    differ = xq.astype(np.int64) != want_q
    assert np.abs(xq.astype(np.int64) - want_q).max() <= 1 and differ.mean() < 0.01
    assert np.all(xq[-64:-32] == 0) and np.all(xq[-32:] == -127)
    np.testing.assert_array_equal(xbias.reshape(-1, 8)[:, 0], -xq.reshape(-1, 32).astype(np.int64).sum(1))
    assert np.all(xbias.reshape(-1, 8)[:, 1:] == 0)


@pytest.mark.parametrize("type_name", INT8_TYPES)
@pytest.mark.parametrize("n_cols", [32, 64, 96, 160, 224, 640])  # 1, 2, 3, 5, 7, 20 blocks: every tail
def test_matvec_equals_integer_reference(type_name, n_cols, activation_mode):
    raw, W, x, got = int8_matvec_case(type_name, n_cols, activation_mode)
    expected = int8_reference(raw, type_name, x)
    # exact integer sums; only the float32 scaling and lane sums round (and a tie rounded the other way)
    scale = np.abs(oracle_weights(raw, type_name)).sum(1) * np.abs(x).max() / 127
    assert np.all(np.abs(got - expected) <= 1e-5 * np.abs(expected) + 1e-3 * scale), type_name
    # the mode switch: float activations give the float kernels' result, which differs by the rounding
    exact = float_mode_matvec(W, x, got, activation_mode)
    assert np.abs(exact - got).max() < 0.02 * np.abs(exact).max()
    # a batch of fewer than 4 tokens runs as mat-vecs: the same kernel
    activation_mode("int8")
    np.testing.assert_array_equal(matmul(W, np.stack([x, x]))[1], got)


def q8_1_records(xq, xd, xs) -> np.ndarray:
    """Our Q8_1 activation blocks as ggml's block_q8_1 bytes (fp16 d, fp16 s, int8 qs[32]) per block."""
    halves = [v.astype(np.float16).view(np.uint8).reshape(-1, 2) for v in (xd, xs)]
    return np.concatenate(halves + [xq.view(np.uint8).reshape(-1, 32)], 1)


def affine_terms(type_name: str, raw: np.ndarray, xq, xd, xs) -> tuple[np.ndarray, np.ndarray]:
    """(ggml's dot, the sum of the magnitudes of its terms) in float64 per row, from its integer
    formula (ggml_vec_dot_q4_1_q8_1_generic / _q5_1_): sum over blocks b of
    d_w d_x (u . xq) + m_w s_x, u the nibble (| bit j of qh << 4 for weight j)."""
    n_blocks = xd.size
    blocks = raw.reshape(len(raw), n_blocks, -1)
    d, m = (blocks[..., at:at + 2].copy().view(np.float16)[..., 0].astype(np.float64) for at in (0, 2))
    qs = blocks[..., -16:].astype(np.int64)
    u = np.concatenate([qs & 15, qs >> 4], -1)
    if type_name == "Q5_1":
        qh = blocks[..., 4:8].copy().view("<u4")[..., 0].astype(np.int64)
        u |= ((qh[..., None] >> np.arange(32)) & 1) << 4
    xq = xq.astype(np.int64).reshape(n_blocks, 32)
    dots, sizes = np.einsum("rbk,bk->rb", u, xq), np.einsum("rbk,bk->rb", u, np.abs(xq))
    xd, xs = xd.astype(np.float64), xs.astype(np.float64)
    return (d * xd * dots + m * xs).sum(1), (np.abs(d * xd) * sizes + np.abs(m * xs)).sum(1)


@pytest.mark.parametrize("type_name", AFFINE_TYPES)
def test_q8_1_activation_blocks_are_ggmls(type_name):
    """Our Q8_1 blocks (codes and d as Q8_0's, s from the unrounded d) are the bytes ggml's vec_dot read."""
    refs = np.load(GGML_REFS)
    assert str(refs["vec_dot_type"][list(refs["types"]).index(type_name)]) == "Q8_1"
    for x, want in zip(refs[f"{type_name}.x"], refs[f"{type_name}.xq"]):
        np.testing.assert_array_equal(q8_1_records(*_quantize_q8_1(x)), want.reshape(-1, 36))


@pytest.mark.parametrize("type_name", AFFINE_TYPES)
def test_affine_kernels_match_ggml_vec_dot(type_name, activation_mode):
    """ggml's own dots on ggml-quantized and random rows: the same integer sums, float32 rounding of
    the scaling and the sums apart (measured: ggml 8.5e-8 / 1.0e-7, ours 6.7e-8 / 6.8e-8 of the terms'
    magnitude, Q4_1 / Q5_1)."""
    refs = np.load(GGML_REFS)
    raw, X, ggml = refs[f"{type_name}.blocks"], refs[f"{type_name}.x"], refs[f"{type_name}.dot"]
    kernel = INT8_MATVECS[GGMLType[type_name]]
    blocks = raw.reshape(len(raw), -1, 20 if type_name == "Q4_1" else 24)
    for t, x in enumerate(X):
        exact, magnitude = affine_terms(type_name, raw, *_quantize_q8_1(x))
        assert np.all(np.abs(ggml[t] - exact) <= 1e-6 * magnitude + 1e-30), "oracle"
        for k in (kernel, serial_twin(kernel)):
            got = np.full(len(raw), np.nan, np.float32)
            k(blocks, x.reshape(-1, 2, 16), got)
            assert np.all(np.abs(got - exact) <= 1e-6 * magnitude + 1e-30), (t, np.max(np.abs(got - exact) / magnitude))
    assert np.all(ggml[5] == 0)  # the all-zero activation vector
    activation_mode("int8")
    W = QuantizedMatrix(raw, GGMLType[type_name], X.shape[1])
    assert np.all(matvec(W, X[5]) == 0)


@pytest.mark.parametrize("type_name", AFFINE_TYPES)
@pytest.mark.parametrize("n_cols", [32, 64, 96, 160, 640])  # 1, 2, 3, 5, 20 blocks: every tail
def test_affine_matvec_equals_integer_reference(type_name, n_cols, activation_mode):
    raw, W, x, got = int8_matvec_case(type_name, n_cols, activation_mode)
    exact, magnitude = affine_terms(type_name, raw, *_quantize_q8_1(x))
    assert np.all(np.abs(got - exact) <= 1e-6 * magnitude), np.max(np.abs(got - exact) / magnitude)
    # against the float product: off by the activation rounding only (0.1-1 %)
    product = oracle_weights(raw, type_name) @ x.astype(np.float64)
    rel = np.linalg.norm(got - product) / np.linalg.norm(product)
    assert 1e-4 < rel < 0.03, rel
    float_mode_matvec(W, x, got, activation_mode)


def test_serial_and_parallel_kernels_agree(activation_mode):
    rng = np.random.default_rng(2)
    raw = random_rows("Q5_0", 300, 640, rng)  # > SERIAL_MATVEC_BYTES: the parallel kernel
    W = QuantizedMatrix(raw, GGMLType.Q5_0, 640)
    x = rng.standard_normal(640).astype(np.float32)
    activation_mode("int8")
    out = np.empty(300, np.float32)
    INT8_MATVECS[GGMLType.Q5_0](W.weights, W._x_view(x), out)
    np.testing.assert_array_equal(matvec(W, x), out)
    np.testing.assert_array_equal(matvec(W.rows(0, 5), x), out[:5])  # small: the serial twin


def test_unknown_mode_is_refused():
    with pytest.raises(BadInputError, match="int8, float"):
        set_activations("int4")


def test_generic_code_without_vnni(tmp_path):
    """On a CPU without AVX512-VNNI (an AVX2 Haswell here) the kernels emit plain vector IR: same numbers."""
    rng = np.random.default_rng(4)
    raw = random_rows("Q5_0", 20, 96, rng)
    x = rng.standard_normal(96).astype(np.float32)
    np.save(tmp_path / "raw.npy", raw)
    np.save(tmp_path / "x.npy", x)
    script = textwrap.dedent(f"""
        import numpy as np
        from llmcli.engine.kernels import int8
        from llmcli.engine.matmul import QuantizedMatrix
        from llmcli.gguf.constants import GGMLType
        assert not int8.HAS_VNNI
        W = QuantizedMatrix(np.load({str(tmp_path / 'raw.npy')!r}), GGMLType.Q5_0, 96)
        out = np.empty(20, np.float32)
        int8.matvec_q5_0_int8(W.weights, W._x_view(np.load({str(tmp_path / 'x.npy')!r})), out)
        np.save({str(tmp_path / 'out.npy')!r}, out)
    """)
    env = dict(os.environ, NUMBA_CPU_NAME="haswell", NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=600)
    generic = np.load(tmp_path / "out.npy")
    expected = int8_reference(raw, "Q5_0", x)
    np.testing.assert_allclose(generic, expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("tag", ["Q4_0", "Q8_0", "Q4_K_M", "Q6_K", "Q5_K-pure", "Q5_1", "Q2_K-pure", "Q3_K-pure"])
def test_decode_logits_follow_llamacpp(tag, tmp_path, activation_mode):
    """Token by token (mat-vecs) on the K-quant test model quantized as `tag` (Q4_0 and Q8_0 files
    hold a Q6_K output matrix, Q4_K_M Q4_K and Q6_K ones): llama.cpp's native logits (8-bit
    activations) within 2x its own native-vs-dequantized-f32 difference, and nearer to them on
    average than float32 activations get."""
    record = json.loads((KQ / "types" / f"{tag}.json").read_text())
    path = tmp_path / f"kq-{tag}.gguf"
    quantize_file(KQ / "kq-f16.gguf", path, record["type_arg"], QuantizeOptions(pure=record["pure"]), measure=False)
    ids = json.loads((KQ / "llamacpp" / "f16.json").read_text())["prompt_ids"]
    native = np.load(KQ / "llamacpp" / f"{tag}.logits.npy")
    dequantized = np.load(KQ / "llamacpp" / f"{tag}.dequant_f32.logits.npy")
    model = load_model(path, threads=1)
    per_mode = {}
    for mode in ("int8", "float"):
        activation_mode(mode)
        seq = model.new_sequence()
        per_mode[mode] = np.stack([np.asarray(model.forward(seq, [t])).reshape(-1) for t in ids])
    llamacpp_spread = np.abs(native - dequantized).max()  # 0.75 (Q4_0), 0.60 (Q8_0), 1.35, 1.55
    int8_diff = np.abs(per_mode["int8"] - native).max()
    assert int8_diff <= 2 * llamacpp_spread, (tag, int8_diff, llamacpp_spread)
    # nearer on average than float activations (mean |diff| 0.037-0.056 against 0.040-0.094); the
    # maximum over this sensitive model's 38 x 1000 logits is one outlier and may go either way
    assert np.abs(per_mode["int8"] - native).mean() < np.abs(per_mode["float"] - native).mean()
    # llama.cpp's own native-vs-dequantized argmax agreement on this sensitive model: 86.8-100 %
    # (Q5_K-pure 33 of 38 tokens); ours 86.8 % on Q3_K-pure (max 0.97 and mean 0.051 against its
    # own 1.04 and 0.081: the near ties of a random model), 89-100 % on the others
    assert (per_mode["int8"].argmax(1) == native.argmax(1)).mean() >= 0.865
    # float activations still reproduce the dequantized-f32 run (made with an F32 KV cache, as here;
    # the native run, like ours above, used llama.cpp's default f16 cache)
    activation_mode("float")
    f32_kv = load_model(path, threads=1, cache_type_k="f32", cache_type_v="f32")
    seq = f32_kv.new_sequence()
    float_f32_kv = np.stack([np.asarray(f32_kv.forward(seq, [t])).reshape(-1) for t in ids])
    assert np.abs(float_f32_kv - dequantized).max() < 1e-2
