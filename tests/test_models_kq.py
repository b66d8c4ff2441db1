"""The engine on quantized weights: the K-quant test model in every type llama.cpp was run with.

Each file is made in the test by `llmcli.quantize` from kq-f16.gguf and checked to be llama-quantize's
file byte for byte (sha256 in kq/types/*.json), so llama.cpp's outputs for it apply. The engine
computes in float32 on the quantized blocks when asked (prompt activations "float"), which is
exactly what llama.cpp did for `<TAG>.dequant_f32.logits.npy` (every tensor dequantized to F32, F32
KV cache): the README expects 1e-3-1e-2 there (float summation order). The brief's bound is 2x the
f16-vs-transformers difference (0.06); we hold the README's 1e-2. Against llama.cpp's native logits
(8-bit activations) only the README's measured spread applies (max 0.6-1.7), checked loosely.

The default prompt path (8-bit activations on integer GEMMs where the weight type has one: llama.cpp's
own arithmetic) is held to llama.cpp's own yardstick: its logits must lie within llama.cpp's
native-vs-dequant-f32 distance of llama.cpp's native logits.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from llmcli.quantize import quantize_file
from llmcli.quants.mixes import QuantizeOptions
from tests.kq_refs import (KQ, KQ_DIR, check_dequant_f32, check_within, default_logits, float_logits,
                           own_distance)

# Float rounding (and our f16 KV cache) between our float32 path and llama.cpp's dequant-f32 run.
FLOAT_NOISE_MAX, FLOAT_NOISE_MEAN = 0.03, 0.002
TAGS = ["Q4_0", "Q5_1", "Q8_0", "Q4_K_M", "Q6_K", "Q2_K-pure", "Q3_K-pure", "Q4_K-pure", "Q5_K-pure"]


def _check_dequant_f32(path, tag: str) -> np.ndarray:
    # the reference ran with an F32 KV cache: so do we (our f16 cache is tested in test_kv_cache_types);
    # and it computed float32 activations on dequantized weights: so do we ("float", not the default
    # 8-bit integer GEMM, which is checked against llama.cpp's native logits in _check_default_path)
    logits = float_logits(path)
    check_dequant_f32(logits, np.load(KQ_DIR / "llamacpp" / f"{tag}.dequant_f32.logits.npy"), tag)
    return logits


def test_f16_file():
    logits = _check_dequant_f32(KQ, "f16")
    hf = np.load(KQ_DIR / "hf" / "reference" / "logits.npy")
    assert np.abs(logits - hf).max() < 0.06  # llama.cpp's own f16 run: 0.030


@pytest.mark.parametrize("tag", TAGS)
def test_quantized_file(tag, tmp_path):
    record = json.loads((KQ_DIR / "types" / f"{tag}.json").read_text())
    out = tmp_path / f"kq-{tag}.gguf"
    quantize_file(KQ, out, record["type_arg"], QuantizeOptions(pure=record["pure"]), measure=False)
    assert hashlib.sha256(out.read_bytes()).hexdigest() == record["file_sha256"]
    logits = _check_dequant_f32(out, tag)
    native = np.load(KQ_DIR / "llamacpp" / f"{tag}.logits.npy")
    assert np.abs(logits - native).max() < 2.5
    _check_default_path(out, tag, native)


def _check_default_path(path, tag: str, native: np.ndarray) -> None:
    """The default prompt path, with the default (f16) KV cache as llama.cpp's native run had: within
    llama.cpp's own native-vs-dequant-f32 distance of its native logits (max and mean |diff|).
    Weight types without an integer GEMM (Q5_1, Q2_K, Q3_K here) stay float32: that path is llama.cpp's
    dequant-f32 run up to float rounding and our f16 cache (max 0.020-0.025, mean 0.0011-0.0013
    measured, scripts/compare_prompt_activations.py), allowed on top. Argmax: llama.cpp's own
    native-vs-dequant agreement on this sensitive model is 87-100 % (README of the references)."""
    own = own_distance(json.loads((KQ_DIR / "llamacpp" / f"{tag}.json").read_text()))
    check_within(default_logits(path), native, tag, own["max_abs_diff"] + FLOAT_NOISE_MAX,
                 own["mean_abs_diff"] + FLOAT_NOISE_MEAN, 0.87)
