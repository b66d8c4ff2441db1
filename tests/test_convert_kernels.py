"""The float32 -> float16 kernel convert uses must give numpy's astype(float16) bytes exactly
(llama.cpp's converter writes F16 tensors with numpy)."""

from __future__ import annotations

import numpy as np

from llmcli.convert.kernels import f32_to_f16


def test_matches_numpy_on_every_kind_of_float32():
    rng = np.random.default_rng(7)
    random_bits = rng.integers(0, 2**32, 2_000_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    weights = (rng.standard_normal(1_000_000) * 0.05).astype(np.float32)
    edges = np.array([0.0, -0.0, np.inf, -np.inf, 65504, 65519.996, 65520, 1e9, 5.9604645e-08, 2.9802322e-08,
                      2.9802326e-08, 6.1035156e-05, 6.1035152e-05, 1.0009766, 1.0004883], dtype=np.float32)
    nans = np.array([0x7FC00000, 0x7F800001, 0xFF800001, 0x7FA00000, 0x7F802000, 0xFFFFFFFF, 0x7F801FFF],
                    dtype=np.uint32).view(np.float32)
    for values in (random_bits, weights, edges, nans, weights.reshape(1000, 1000)):
        with np.errstate(over="ignore"):
            want = values.astype(np.float16)
        got = f32_to_f16(values)
        assert got.shape == want.shape and got.dtype == np.float16
        np.testing.assert_array_equal(got.view(np.uint16), want.view(np.uint16))
    assert np.isnan(random_bits).sum() > 1000  # the NaN path was exercised


def test_q8_0_kernel_matches_the_numpy_quantizer():
    """The Q8_0 kernel against the numpy port of gguf-py's quantizer (itself checked against
    llama.cpp's q8_0 files in test_convert.py): normal weights, all-zero blocks, exact .5 ties,
    and random finite bit patterns (huge and tiny magnitudes, fp16 overflow of d)."""
    from llmcli.convert.kernels import q8_0_blocks
    from llmcli.convert.pipeline import encode_q8_0_numpy

    rng = np.random.default_rng(3)
    bits = rng.integers(0, 2**32, 32 * 50_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    bits = bits[np.isfinite(bits)]
    cases = [
        (rng.standard_normal(32 * 50_000) * 0.05).astype(np.float32),
        np.zeros(32 * 10, dtype=np.float32),
        (rng.integers(-254, 255, 32 * 50_000) / 2).astype(np.float32),
        bits[: bits.size // 32 * 32],
        np.array([1.0] * 31 + [np.nan] + [2.0] * 31 + [np.inf], dtype=np.float32),  # numpy fallback
    ]
    for values in cases:
        got, want = q8_0_blocks(values, encode_q8_0_numpy), encode_q8_0_numpy(values)
        assert got.shape == want.shape == (values.size // 32, 34)
        np.testing.assert_array_equal(got, want)
