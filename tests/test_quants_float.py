"""F32, F16 and BF16 against real references.

- tests/data/quants/ggml_refs.npz (scripts/make_quant_refs.py, ctypes on ggml at the reference
  commit): ggml_quantize_chunk's F16/BF16 output for ~68k float32 inputs chosen at every kind of
  rounding decision, and sha256 of ggml's widening of all 65536 16-bit patterns.
- tests/data/gguf_ref/llama-f16.json: llama.cpp's converter output for the tiny llama checkpoint.
- tests/data/kq: llama.cpp's f16 conversion of the K-quant model.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from safetensors.numpy import load_file

from llmcli.gguf import GGUFReader
from llmcli.gguf.constants import GGMLType
from llmcli.quants import dequantize, quantize

F16, BF16, F32 = GGMLType.F16, GGMLType.BF16, GGMLType.F32
ALL_16BIT = np.arange(1 << 16, dtype=np.uint16)


@pytest.fixture(scope="module")
def ggml_refs(data_dir):
    with np.load(data_dir / "quants" / "ggml_refs.npz") as refs:
        return {k: refs[k] for k in refs.files}


def sha256(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


@pytest.mark.parametrize("type_name", ["F16", "BF16"])
def test_quantize_matches_ggml_on_rounding_edges(type_name, ggml_refs):
    """Exact ties and one ulp either side of every fp16 midpoint (sampled) and of bf16 midpoints,
    NaN payloads of both signs, infinities, overflow to inf, subnormals, random bit patterns."""
    inputs = ggml_refs["float_inputs"]
    expected = ggml_refs[f"{type_name}/quantized"].view(np.uint16)
    out = quantize(inputs, GGMLType[type_name]).view(np.uint16)
    differ = np.nonzero(out != expected)[1]
    shown = [f"{inputs[0, i].view(np.uint32):#010x}->{out[0, i]:#06x} (ggml {expected[0, i]:#06x})"
             for i in differ[:5]]
    assert differ.size == 0, f"{differ.size} of {inputs.size} values differ from ggml: {shown}"


@pytest.mark.parametrize("type_name", ["F16", "BF16"])
def test_dequantize_every_pattern_matches_ggml(type_name, ggml_refs):
    out = dequantize(ALL_16BIT.view(np.uint8).reshape(1, -1), GGMLType[type_name])
    assert out.shape == (1, 1 << 16)
    assert sha256(out) == str(ggml_refs[f"{type_name}/all_patterns_dequantized_sha256"])


# (input float32 bits, what it exercises); ggml's answer is looked up in the reference inputs
BF16_EDGES = [
    (0x3F808000, "tie, even below: rounds down"),
    (0x3F818000, "tie, odd below: rounds up"),
    (0x3F808001, "just above a tie"),
    (0x3F807FFF, "just below a tie"),
    (0xBF818000, "negative tie, odd below: rounds away from zero"),
    (0x7F7FFFFF, "largest float rounds to inf"),
    (0x7F7F7FFF, "largest float that stays finite"),
    (0x7F800000, "+inf"),
    (0xFF800000, "-inf"),
    (0x7FC00000, "quiet NaN"),
    (0x7F800001, "signalling NaN, payload only in the dropped half: quiet bit forced"),
    (0xFFC00000, "negative NaN"),
    (0x00008000, "subnormal tie rounds to zero (even), not flushed"),
    (0x00018000, "subnormal tie rounds up to odd+1"),
    (0x007FFFFF, "largest subnormal rounds up to the smallest normal"),
    (0x80000000, "-0"),
]


@pytest.mark.parametrize("bits,what", BF16_EDGES, ids=[w for _, w in BF16_EDGES])
def test_bf16_edge_cases(bits, what, ggml_refs):
    inputs = ggml_refs["float_inputs"].view(np.uint32)[0]
    where = np.nonzero(inputs == bits)[0]
    assert where.size, f"{bits:#010x} is not among the reference inputs"
    expected = ggml_refs["BF16/quantized"].view(np.uint16)[0, where[0]]
    x = np.array([[bits]], dtype=np.uint32).view(np.float32)
    assert quantize(x, BF16).view(np.uint16)[0, 0] == expected


def test_f16_round_trip_every_finite_pattern():
    finite = ALL_16BIT[np.isfinite(ALL_16BIT.view(np.float16))]
    back = quantize(dequantize(finite.view(np.uint8).reshape(1, -1), F16), F16).view(np.uint16)
    assert np.array_equal(back[0], finite)
    # widening is exact: equal to numpy's own float16 -> float32 for every non-NaN pattern
    non_nan = ALL_16BIT[~np.isnan(ALL_16BIT.view(np.float16))]
    assert np.array_equal(dequantize(non_nan.view(np.uint8).reshape(1, -1), F16)[0],
                          non_nan.view(np.float16).astype(np.float32))


def test_f16_nan_is_canonical_as_in_ggml(ggml_refs):
    """ggml writes every NaN as 0x7E00 with the sign kept, whatever the payload (numpy would keep
    the payload's top bits)."""
    inputs = ggml_refs["float_inputs"][0]
    nan = np.isnan(inputs)
    assert nan.sum() > 100
    expected = ggml_refs["F16/quantized"].view(np.uint16)[0, nan]
    assert set(expected.tolist()) == {0x7E00, 0xFE00}
    assert np.array_equal(quantize(inputs[nan].reshape(1, -1), F16).view(np.uint16)[0], expected)


def test_bf16_round_trip_every_non_nan_pattern():
    patterns = ALL_16BIT.view(np.uint8).reshape(1, -1)
    back = quantize(dequantize(patterns, BF16), BF16).view(np.uint16)[0]
    is_nan = ((ALL_16BIT & 0x7F80) == 0x7F80) & ((ALL_16BIT & 0x007F) != 0)
    assert np.array_equal(back[~is_nan], ALL_16BIT[~is_nan])
    assert (back[is_nan] & 0x0040).all()  # NaNs come back quiet


def test_f32_is_identity_including_nan_payloads():
    bits = np.array([[0x7FC00001, 0xFF800001, 0x00000001, 0x80000000, 0x3F800000]], dtype=np.uint32)
    raw = quantize(bits.view(np.float32), F32)
    assert raw.dtype == np.uint8 and raw.shape == (1, 20)
    assert np.array_equal(raw.view(np.uint32), bits)
    assert np.array_equal(dequantize(raw, F32).view(np.uint32), bits)


def test_f16_matches_llama_cpp_converter(data_dir):
    """Tensors the converter writes without reordering: same bytes as llama.cpp's f16 GGUF."""
    weights = load_file(data_dir / "hf" / "llama" / "model.safetensors")
    record = json.loads((data_dir / "gguf_ref" / "llama-f16.json").read_text())["tensors"]
    pairs = {"token_embd.weight": "model.embed_tokens.weight", "output.weight": "lm_head.weight"}
    for layer in (0, 1):
        for gguf_name, hf_name in [("ffn_down", "mlp.down_proj"), ("ffn_gate", "mlp.gate_proj"),
                                   ("ffn_up", "mlp.up_proj"), ("attn_v", "self_attn.v_proj"),
                                   ("attn_output", "self_attn.o_proj")]:
            pairs[f"blk.{layer}.{gguf_name}.weight"] = f"model.layers.{layer}.{hf_name}.weight"
    for gguf_name, hf_name in pairs.items():
        assert record[gguf_name]["type"] == "F16"
        assert sha256(quantize(weights[hf_name], F16)) == record[gguf_name]["sha256"], gguf_name


def test_f16_kq_model_requantizes_to_itself(data_dir):
    """Widening llama.cpp's F16 tensors and narrowing again reproduces the recorded bytes."""
    reader = GGUFReader(data_dir / "kq" / "kq-f16.gguf")
    record = json.loads((data_dir / "kq" / "index.json").read_text())["f16"]["tensors"]
    checked = 0
    for name, info in record.items():
        if info["type"] != "F16":
            continue
        raw = reader.tensor_bytes(name)
        assert sha256(quantize(dequantize(raw, F16), F16)) == info["sha256"], name
        checked += 1
    assert checked >= 58
