"""Mat-vecs with 8-bit activations for IQ4_NL (Q8_0 activation blocks, kernels/int8.py) and IQ4_XS
(Q8_K blocks, kernels/int8_kquants.py), as ggml's `ggml_vec_dot_iq4_nl_q8_0` / `_iq4_xs_q8_K`.

Oracles: ggml-cpu's vec_dot on its own activation blocks (tests/data/iquants/vec_dot.npz, see
test_kernels_ternary.py), and the dequantized weights (bit-identical to ggml's) for the size of
the activation rounding. B-column products against lone mat-vecs (serial and parallel kernels, both
activation modes) are test_kernels_matvecs.py's (IQ4_NL and IQ4_XS are in its type lists), the IQ4_XS
serial twin also test_kernels_int8_kquants.py's. The code paths for CPUs without AVX-512 (AVX2, and
generic x86-64) run in subprocesses here and must give the same bits as the VNNI path, for every
int8 kernel.
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
from llmcli.engine.matmul import QuantizedMatrix, has_int8_kernel, matvec
from llmcli.gguf.constants import GGMLType

from test_kernels_int8_kquants import assert_activation_rounding_only, random_matrix, varied_activations
from test_kernels_ternary import DATA, assert_is_ggmls_dot, q8_0_values, q8_k_values

TYPES = ["IQ4_NL", "IQ4_XS"]
ACTIVATION_VALUES = {"IQ4_NL": q8_0_values, "IQ4_XS": q8_k_values}
KERNELS = {"IQ4_NL": INT8_MATVECS[GGMLType.IQ4_NL], "IQ4_XS": INT8_KQUANT_MATVECS[GGMLType.IQ4_XS]}


@njit  # not cached: numba's cache would not notice a change in the inlined quantizers
def _activations(x, q8_k):
    if q8_k:
        xq, xd, _ = quantize_q8_k(x)
        return xq, xd
    xq, xd, _ = quantize_activations(x, np.int32(128))
    return xq, xd


@pytest.mark.parametrize("type_name", TYPES)
def test_int8_matches_ggml_vec_dot(type_name, activation_mode):
    activation_mode("int8")
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
def test_int8_within_activation_rounding(type_name, n_blocks, activation_mode):
    """Against the exact product: each x is off by at most half its activation block's step d_x, so
    |error| <= sum over activation blocks of d_x / 2 * sum |w| there."""
    rng = np.random.default_rng(n_blocks + len(type_name))
    n_cols = 256 * n_blocks
    raw = random_matrix(type_name, n_cols, rng)
    x = varied_activations(n_cols, rng)
    W = QuantizedMatrix(raw, GGMLType[type_name], n_cols)
    activation_mode("int8")
    got = matvec(W, x)
    _, xd = _activations(x, type_name == "IQ4_XS")
    # measured 0.5-0.9 % of the product: the rounding, nothing else
    assert_activation_rounding_only(got, raw, type_name, x, xd, lambda weights: 1e-6 * (np.abs(weights) @ np.abs(x)))
    assert got[3] == 0
    activation_mode("float")
    assert not np.array_equal(matvec(W, x), got)  # the modes run different kernels


# The kernels' other code paths, in a subprocess on this CPU: numba's generic x86-64 target (no
# AVX2, no AVX-512: the grid lookup as selects, the dots as plain vector IR), and AVX2 without
# AVX-512 (the feature detection told so: vpshufb on ymm, vpmaddubsw / the signed form).
CPU_SETUPS = {
    "generic": ({"NUMBA_CPU_NAME": "x86-64"}, "assert not (int8.HAS_AVX2 or int8.HAS_VNNI or int8.HAS_PSHUFB_256)"),
    "avx2": ({}, "assert int8.HAS_AVX2 and int8.HAS_PSHUFB_256 and not (int8.HAS_VNNI or int8.HAS_AVX512BW)"),
}
AVX2_ONLY = """
import llvmlite.binding as llvm
from llvmlite.binding.targets import FeatureMap
_features = llvm.get_host_cpu_features
def _avx2_only():  # numba compiles for these features too: no AVX-512 instruction anywhere
    found = FeatureMap()
    found.update((k, v and not k.startswith("avx512") and "vnni" not in k) for k, v in _features().items())
    assert found["avx2"]
    return found
llvm.get_host_cpu_features = _avx2_only
"""


@pytest.mark.parametrize("setup", list(CPU_SETUPS))
def test_other_cpus_give_the_same_bits(setup, tmp_path):
    """Every path leaves the same integer in every lane: the same float32 results, bit for bit
    (IQ4_NL, IQ4_XS, the ternary kernels of kernels/ternary.py, and the other int8 kernels; IQ3_*'s
    grid lookup is vpermi2w here, scalar loads there)."""
    rng = np.random.default_rng(4)
    native = {}
    for type_name in TYPES + ["TQ1_0", "TQ2_0", "Q8_0", "Q4_0", "Q5_0", "Q4_1", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K",
                              "Q6_K", "IQ3_XXS", "IQ3_S"]:
        raw = random_matrix(type_name, 512, rng)[:20]
        X = rng.standard_normal((3, 512)).astype(np.float32)
        np.save(tmp_path / f"{type_name}.raw.npy", raw)
        np.save(tmp_path / f"{type_name}.x.npy", X)
        W = QuantizedMatrix(raw, GGMLType[type_name], 512)
        out = np.empty((3, 20), np.float32)
        W.format.matvec_int8(W.weights, X, out)
        native[type_name] = out
    env_vars, check = CPU_SETUPS[setup]
    script = (AVX2_ONLY if setup == "avx2" else "") + textwrap.dedent(f"""
        import numpy as np
        from llmcli.engine.kernels import int8
        from llmcli.engine.matmul import QuantizedMatrix
        from llmcli.gguf.constants import GGMLType
        {check}
        for name in {list(native)!r}:
            W = QuantizedMatrix(np.load({str(tmp_path)!r} + f"/{{name}}.raw.npy"), GGMLType[name], 512)
            out = np.empty((3, 20), np.float32)
            W.format.matvec_int8(W.weights, np.load({str(tmp_path)!r} + f"/{{name}}.x.npy"), out)
            np.save({str(tmp_path)!r} + f"/{{name}}.out.npy", out)
    """)
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"), **env_vars)
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=1200)
    for type_name, out in native.items():
        np.testing.assert_array_equal(np.load(tmp_path / f"{type_name}.out.npy"), out, err_msg=type_name)
