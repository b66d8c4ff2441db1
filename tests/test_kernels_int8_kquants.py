"""Mat-vecs with 8-bit activations for Q2_K, Q3_K, Q4_K, Q5_K and Q6_K weights (kernels/int8_kquants.py).

Oracles: ggml itself (tests/data/kernels/int8_kquant_refs.npz, made by
scripts/make_int8_kquant_refs.py through ctypes on the reference commit's libggml: its Q8_K
activation blocks and its ggml_vec_dot_q4_K_q8_K / q5_K_q8_K / q6_K_q8_K results, SIMD and generic C;
tests/data/kernels/int8_vec_dot.npz, made by scripts/make_iquant_refs.py --int8-only through
scripts/iquant_ref_harness.cpp on the same commit's static libggml: the CPU backend's from_float and
vec_dot for Q2_K and Q3_K); a numpy transcription of ggml's integer formula (exact int64 sums,
float64 scaling); and the dequantized weights (llmcli's dequantize, byte-exact to ggml's) in float64
for the size of the activation rounding.
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

from llmcli.engine.kernels.common import serial_twin
from llmcli.engine.kernels.int8_kquants import INT8_KQUANT_MATVECS, quantize_q8_k
from llmcli.gguf.constants import GGMLType
from llmcli.quants import dequantize, quantize

REFS = Path(__file__).parent / "data" / "kernels" / "int8_kquant_refs.npz"
HARNESS_REFS = Path(__file__).parent / "data" / "kernels" / "int8_vec_dot.npz"
BLOCK_BYTES = {"Q2_K": 84, "Q3_K": 110, "Q4_K": 144, "Q5_K": 176, "Q6_K": 210, "IQ4_XS": 136}
X_GROUP = {"Q2_K": (16, 16), "Q3_K": (16, 16), "Q4_K": (8, 32), "Q5_K": (8, 32), "Q6_K": (16, 16),
           "IQ4_XS": (16, 16)}  # the engine's activation views
N_ROWS = 37  # not a multiple of the 16-row tiles


@njit  # not cached: numba's cache would not notice a change in the inlined quantize_q8_k
def _quantize(x):
    return quantize_q8_k(x)


def run_kernel(type_name: str, raw: np.ndarray, x: np.ndarray, kernel=None) -> np.ndarray:
    n_blocks = x.size // 256
    out = np.full(len(raw), np.nan, np.float32)
    kernel = kernel or INT8_KQUANT_MATVECS[GGMLType[type_name]]
    kernel(raw.reshape(len(raw), n_blocks, BLOCK_BYTES[type_name]), x.reshape(n_blocks, *X_GROUP[type_name]), out)
    return out


def split_q8k(blocks: np.ndarray):
    """ggml's block_q8_K records (float d, int8 qs[256], int16 bsums[16]) -> (xq, xd, bsums)."""
    return (blocks[:, 4:260].copy().view(np.int8).reshape(-1), blocks[:, :4].copy().view(np.float32).reshape(-1),
            blocks[:, 260:].copy().view(np.int16).reshape(-1).astype(np.int32))


def numpy_q8k(x: np.ndarray):
    """ggml's quantize_row_q8_K_ref in numpy."""
    blocks = x.reshape(-1, 256)
    magnitude = np.where(np.isnan(blocks), -1, np.abs(blocks))  # `ax > amax` never picks a NaN
    top = blocks[np.arange(len(blocks)), magnitude.argmax(1)]  # the first largest |x|
    zero = ~(np.abs(top) > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        iscale = np.float32(-127.0) / np.where(zero, np.float32(1), top)
        shifted = (iscale[:, None] * blocks + np.float32(12582912.0)).view(np.int32)  # ggml's nearest_int
    q = np.minimum(127, (shifted & 0x7FFFFF) - 0x400000).astype(np.int8)
    q[zero] = 0
    with np.errstate(divide="ignore"):
        xd = np.where(zero, np.float32(0), np.float32(1.0) / iscale).astype(np.float32)
    return q.reshape(-1), xd, q.reshape(-1, 16).astype(np.int32).sum(1)


def block_terms(type_name: str, raw: np.ndarray, xq, xd, bsums, magnitude=False) -> np.ndarray:
    """float64 (rows, n_blocks): each super-block's term of ggml's dot, its integer sums as
    ggml_vec_dot_q4_K_q8_K_generic / _q5_K_ / _q6_K_q8_K_generic form them. magnitude=True:
    the same with every product and scale taken absolute (the size of what float32 adds up)."""
    nb = xd.size
    blocks = raw.reshape(len(raw), nb, BLOCK_BYTES[type_name]).astype(np.int64)
    xq = xq.astype(np.int64).reshape(nb, 256)
    bsums = bsums.astype(np.int64).reshape(nb, 16)
    fix = np.abs if magnitude else (lambda v: v)
    xd, xq, bsums = fix(xd.astype(np.float64)), fix(xq), fix(bsums)

    def f16(lo):
        return fix((blocks[..., lo] | blocks[..., lo + 1] << 8).astype(np.uint16).view(np.float16).astype(np.float64))

    if type_name == "Q2_K":  # weight 128n + 32j + 16h + l = (qs[32n + 16h + l] >> 2j) & 3, sub-block 8n + 2j + h
        qs = blocks[..., 16:80].reshape(len(raw), nb, 2, 1, 32)
        u = ((qs >> (2 * np.arange(4))[:, None]) & 3).reshape(len(raw), nb, 16, 16)
        sc, mn = blocks[..., 0:16] & 15, blocks[..., 0:16] >> 4
        isum = (sc * np.einsum("rbsl,bsl->rbs", u, xq.reshape(nb, 16, 16))).sum(-1)
        imin = (mn * bsums).sum(-1)
        return f16(80) * xd * isum - (-1 if magnitude else 1) * f16(82) * xd * imin
    if type_name == "Q3_K":  # as Q2_K's, minus 4 where bit 4n + j of hmask[16h + l] is clear
        qs = blocks[..., 32:96].reshape(len(raw), nb, 2, 1, 32)
        hm = blocks[..., 0:32].reshape(len(raw), nb, 1, 1, 32)
        planes = np.arange(4)[:, None]
        low = (qs >> 2 * planes) & 3
        high = (hm >> (4 * np.arange(2)[:, None, None] + planes)) & 1
        w = fix((low - 4 * (1 - high)).reshape(len(raw), nb, 16, 16))
        b = blocks[..., 96:108]
        s = np.arange(16)
        sc = ((b[..., s % 8] >> (4 * (s // 8))) & 15) | ((b[..., 8 + s % 4] >> (2 * (s // 4))) & 3) << 4
        isum = (fix(sc - 32) * np.einsum("rbsl,bsl->rbs", w, xq.reshape(nb, 16, 16))).sum(-1)
        return f16(108) * xd * isum
    if type_name in ("Q4_K", "Q5_K"):
        s = blocks[..., 4:16]
        sc = np.concatenate([s[..., 0:4] & 63, (s[..., 8:12] & 15) | (s[..., 0:4] >> 6) << 4], -1)
        mn = np.concatenate([s[..., 4:8] & 63, (s[..., 8:12] >> 4) | (s[..., 4:8] >> 6) << 4], -1)
        qs = blocks[..., -128:].reshape(len(raw), nb, 4, 32)
        u = np.stack([qs & 15, qs >> 4], 3).reshape(len(raw), nb, 8, 32)  # sub-block 2g, 2g+1
        if type_name == "Q5_K":  # the 5th bit of weight l in sub-block j: bit j of qh[l]
            qh = blocks[..., 16:48]
            u = u | np.stack([(qh >> j) & 1 for j in range(8)], 2) << 4
        isum = (sc * np.einsum("rbsl,bsl->rbs", u, xq.reshape(nb, 8, 32))).sum(-1)
        imin = (mn * bsums.reshape(nb, 8, 2).sum(-1)).sum(-1)
        return f16(0) * xd * isum - (-1 if magnitude else 1) * f16(2) * xd * imin
    ql, qh = blocks[..., :128], blocks[..., 128:192]
    sc = fix(blocks[..., 192:208] - ((blocks[..., 192:208] & 128) << 1))
    parts = []
    for n in range(2):
        a, c, h = ql[..., 64 * n:64 * n + 32], ql[..., 64 * n + 32:64 * n + 64], qh[..., 32 * n:32 * n + 32]
        parts += [(a & 15) | (h & 3) << 4, (c & 15) | (h >> 2 & 3) << 4,
                  (a >> 4) | (h >> 4 & 3) << 4, (c >> 4) | (h >> 6 & 3) << 4]
    w = fix(np.concatenate(parts, -1).reshape(len(raw), nb, 16, 16) - 32)
    isum = (sc * np.einsum("rbsl,bsl->rbs", w, xq.reshape(nb, 16, 16))).sum(-1)
    return f16(208) * xd * isum


def integer_reference(type_name: str, raw: np.ndarray, q8k) -> tuple[np.ndarray, np.ndarray]:
    """(per-block terms, their magnitudes) for activation blocks q8k = (xq, xd, bsums)."""
    return block_terms(type_name, raw, *q8k), block_terms(type_name, raw, *q8k, magnitude=True)


def assert_close_to_terms(got: np.ndarray, reference, what) -> None:
    """got = the terms summed, up to float32 rounding of the per-block scaling and the lane sums:
    within 3e-7 of the magnitude of what is summed (float32 eps 6e-8; measured <= 5e-8 here, and
    ggml's own SIMD and generic results <= 3.4e-8 and 2.1e-8)."""
    terms, magnitude = reference
    scale = magnitude.sum(1)
    err = np.abs(got - terms.sum(1))
    assert np.all(err <= 3e-7 * scale + 1e-30), (what, (err / np.maximum(scale, 1e-30)).max())


def random_matrix(type_name: str, n_cols: int, rng) -> np.ndarray:
    """N_ROWS rows of `type_name` quantized from random rows of different scales; row 3 all zero."""
    w = rng.standard_normal((N_ROWS, n_cols)).astype(np.float32) * rng.uniform(0.01, 3, (N_ROWS, 1)).astype(np.float32)
    w[3] = 0  # an all-zero row
    return quantize(w, GGMLType[type_name])


def varied_activations(n_cols: int, rng) -> np.ndarray:
    """x whose first 256 values are 40x the others (super-blocks of very different scales) and,
    past one super-block, whose next 256 are 0 (an all-zero activation block)."""
    x = rng.standard_normal(n_cols).astype(np.float32)
    x[:256] *= 40
    if n_cols > 256:
        x[256:512] = 0
    return x


def assert_activation_rounding_only(got, raw, type_name: str, x, xd, slack) -> None:
    """got = W x but for the activation rounding: each x is off by at most |d|/2 (d = its
    activation block's step, xd), so |error| <= sum over blocks b of |d_b|/2 * sum |w| over b,
    + slack(weights) (float64 weights) for the float32 rounding of the sums; and the rounding is
    there, 0.01-3 % of the product (L2 over rows)."""
    weights = dequantize(raw, GGMLType[type_name]).astype(np.float64)
    exact = weights @ x.astype(np.float64)
    size = len(x) // len(xd)
    bound = (np.abs(weights).reshape(len(raw), -1, size).sum(-1) * np.abs(xd.astype(np.float64)) / 2).sum(1)
    err = np.abs(got - exact)
    assert np.all(err <= 1.001 * bound + slack(weights)), (err / bound).max()
    rel = np.linalg.norm(got - exact) / np.linalg.norm(exact)
    assert 1e-4 < rel < 0.03, rel


def test_activation_blocks_are_ggmls():
    refs = np.load(REFS)
    for name in ("x2560", "x512"):
        xq, xd, bsums = _quantize(refs[name])
        want = split_q8k(refs[f"{name}_q8k"])
        np.testing.assert_array_equal(xq, want[0])
        np.testing.assert_array_equal(xd.view(np.uint32), want[1].view(np.uint32))  # d = 1/iscale, float32
        np.testing.assert_array_equal(bsums, want[2])
        if name == "x2560":  # its all-zero block 3 and its block with +9 and -9: -9 came second
            assert xd[3] == 0 and np.all(xq[768:1024] == 0) and np.all(bsums[48:64] == 0)
            assert xd[5] == np.float32(1) / (np.float32(-127) / np.float32(9)) and xq[1280 + 7] == -127
    # more data against the numpy transcription: signed zeros, ties of |x| in both orders, tiny
    # values, a NaN (skipped by the max, code 0), an infinity (iscale 0: codes 0, d inf), all NaN
    rng = np.random.default_rng(5)
    x = rng.standard_normal(256 * 9).astype(np.float32) * np.repeat(np.float32([1, 1e-30, 1e3, 1, 1, 1, 1, 1, 1]), 256)
    x[768:1024] = -0.0
    x[1024 + 3], x[1024 + 9] = -4.0, 4.0
    x[1280 + 3], x[1280 + 9] = 4.0, -4.0
    x[1536 + 5] = np.nan
    x[1792 + 200] = -np.inf
    x[2048:2304] = np.nan
    for got, want in zip(_quantize(x), numpy_q8k(x)):
        np.testing.assert_array_equal(got, want)
    assert _quantize(x)[1][7] == np.inf and _quantize(x)[0][1536 + 5] == 0


@pytest.mark.parametrize("type_name", ["Q4_K", "Q5_K", "Q6_K"])
def test_matches_ggml_vec_dot(type_name):
    """ggml's own dot products (its SIMD code and its generic C code) on ggml-quantized rows."""
    refs = np.load(REFS)
    for name in ("x2560", "x512"):
        raw = refs[f"{type_name}_{name}_weights"]
        got = run_kernel(type_name, raw, refs[name])
        ref = integer_reference(type_name, raw, split_q8k(refs[f"{name}_q8k"]))
        for variant in ("simd", "generic"):
            assert_close_to_terms(refs[f"{type_name}_{name}_dot_{variant}"], ref, (name, variant))  # oracle check
        assert_close_to_terms(got, ref, name)
        assert got[1] == 0  # the all-zero row


@pytest.mark.parametrize("type_name", ["Q2_K", "Q3_K"])
def test_activation_blocks_and_dots_are_ggmls(type_name):
    """ggml-cpu's from_float (Q8_K) and vec_dot on ggml-quantized rows (with and without importance
    weights) and random blocks: our activation blocks are its bytes; our dots (parallel kernel, B
    columns at once, and the serial twin one column at a time) its integer sums to float32 rounding
    (measured: ggml 4.5e-8 / 4.2e-8, ours 8.9e-8 / 5.1e-8 of the terms' magnitude, Q2_K / Q3_K)."""
    refs = np.load(HARNESS_REFS)
    assert str(refs["vec_dot_type"][list(refs["types"]).index(type_name)]) == "Q8_K"
    raw, X, ggml = refs[f"{type_name}.blocks"], refs[f"{type_name}.x"], refs[f"{type_name}.dot"]
    n_blocks = X.shape[1] // 256
    kernel = INT8_KQUANT_MATVECS[GGMLType[type_name]]
    blocks = raw.reshape(len(raw), n_blocks, BLOCK_BYTES[type_name])
    columns = np.full(ggml.shape, np.nan, np.float32)
    kernel(blocks, X, columns)
    for t, (x, want) in enumerate(zip(X, refs[f"{type_name}.xq"])):
        q8k = _quantize(x)
        for got, wanted in zip(q8k, split_q8k(want.reshape(-1, 292))):
            np.testing.assert_array_equal(got.view(np.uint8), wanted.astype(got.dtype).view(np.uint8))
        ref = integer_reference(type_name, raw, q8k)
        assert_close_to_terms(ggml[t], ref, ("oracle", t))
        assert_close_to_terms(columns[t], ref, t)
        lone = np.full(len(raw), np.nan, np.float32)
        serial_twin(kernel)(blocks, x.reshape(n_blocks, *X_GROUP[type_name]), lone)
        np.testing.assert_array_equal(lone, columns[t])
    assert np.all(columns[5] == 0) and np.all(ggml[5] == 0)  # the all-zero activation vector


@pytest.mark.parametrize("type_name", ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"])
@pytest.mark.parametrize("n_cols", [256, 768, 2560])  # one super-block, an odd count, the demo's 2560
def test_matvec_equals_integer_reference(type_name, n_cols):
    rng = np.random.default_rng(n_cols + len(type_name))
    raw = random_matrix(type_name, n_cols, rng)
    x = varied_activations(n_cols, rng)
    got = run_kernel(type_name, raw, x)
    xq, xd, bsums = numpy_q8k(x)
    ref = integer_reference(type_name, raw, (xq, xd, bsums))
    assert_close_to_terms(got, ref, n_cols)
    assert got[3] == 0
    # against the exact product: the only difference is the activation rounding (measured: at most
    # 11 % of its worst case on a row; 0.55-0.86 % of the product)
    assert_activation_rounding_only(got, raw, type_name, x, xd, lambda weights: 3e-7 * ref[1].sum(1))


def test_serial_twin_gives_the_same_numbers():
    rng = np.random.default_rng(9)
    x = rng.standard_normal(768).astype(np.float32)
    for type_name, kernel in INT8_KQUANT_MATVECS.items():
        raw = random_matrix(type_name.name, 768, rng)
        np.testing.assert_array_equal(run_kernel(type_name.name, raw, x, serial_twin(kernel)),
                                      run_kernel(type_name.name, raw, x))


def test_generic_code_without_vnni(tmp_path):
    """Compiled for a CPU without AVX512-VNNI (HAS_VNNI False) the kernels emit plain vector IR for
    the byte products: the same numbers. Haswell (AVX2), not "generic": the fp16 scales load as
    `fpext half`, which needs F16C (without it LLVM calls __extendhfsf2, absent from numba's JIT)."""
    refs = np.load(REFS)
    script = textwrap.dedent(f"""
        import numpy as np
        from llmcli.engine.kernels import int8, int8_kquants
        from llmcli.gguf.constants import GGMLType
        assert not int8.HAS_VNNI
        refs = np.load({str(REFS)!r})
        x = refs["x512"]
        out = {{}}
        for name, bb, group in (("Q4_K", 144, (8, 32)), ("Q5_K", 176, (8, 32)), ("Q6_K", 210, (16, 16))):
            raw = refs[name + "_x512_weights"]
            out[name] = np.empty(len(raw), np.float32)
            int8_kquants.INT8_KQUANT_MATVECS[GGMLType[name]](raw.reshape(len(raw), 2, bb), x.reshape(2, *group),
                                                            out[name])
        np.savez({str(tmp_path / 'out.npz')!r}, **out)
    """)
    env = dict(os.environ, NUMBA_CPU_NAME="haswell", NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=600)
    generic = np.load(tmp_path / "out.npz")
    for type_name in ("Q4_K", "Q5_K", "Q6_K"):
        raw = refs[f"{type_name}_x512_weights"]
        ref = integer_reference(type_name, raw, split_q8k(refs["x512_q8k"]))
        assert_close_to_terms(generic[type_name], ref, type_name)
        np.testing.assert_allclose(generic[type_name], run_kernel(type_name, raw, refs["x512"]), rtol=1e-6, atol=1e-7)
