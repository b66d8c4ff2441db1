"""The engine on the K-quant test model quantized to every i-quant and ternary type, against llama.cpp.

References (tests/data/iquants/logits, scripts/make_iquant_logits_refs.py): llama.cpp 0c1e570 on
kq-f16.gguf quantized by `llama-quantize --imatrix kq.imatrix.gguf --pure` to each ggml type (with
`--token-embedding-type Q8_0` where ggml cannot quantize token_embd without importance data), its
native logits (8-bit activations, f16 KV cache) and its logits on the same weights dequantized to F32
with an F32 KV cache. Each file is made here by `llmcli.quantize` and checked to be llama-quantize's,
tensor by tensor (tests/data/iquants/quantize.json), so those runs apply to it.

* Prompt activations "float" with an F32 KV cache is llama.cpp's dequant-f32 arithmetic: held to the
  K-quants' tight bound (kq_refs.DEQUANT_F32_MAX, float summation order).
* The default settings are held to twice llama.cpp's own native-vs-dequant-f32 distance from its
  native logits (max and mean |diff|), and the argmax disagreement to twice llama.cpp's own. This model
  amplifies every rounding through its 8 layers: llama.cpp's own distance is 0.5-2.7 max here.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from tests.kq_refs import (DATA, IMATRIX_DIR, KQ, check_dequant_f32, check_within, default_logits, float_logits,
                           own_distance, prompt_ids, quantize_as_run, tensor_hashes)

REFS = DATA / "iquants"
LOGITS = REFS / "logits"
TYPES = ["IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ4_NL", "IQ4_XS", "TQ1_0", "TQ2_0"]


def _record(ggml_type: str) -> dict:
    return json.loads((LOGITS / f"{ggml_type}.json").read_text())


def _quantize_run(record: dict) -> dict:
    """The llama-quantize run of quantize.json the logits were recorded on (same options, same file)."""
    runs = json.loads((REFS / "quantize.json").read_text())["runs"]
    return next(r for r in runs if r.get("ggml_type") == record["ggml_type"] and r["options"] == record["options"]
                and not r.get("failed"))


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    """ggml type -> our quantization of kq-f16.gguf as llama.cpp's reference run, made once per module
    and checked byte-identical to llama-quantize's first."""
    made = {}

    def get(ggml_type: str):
        if ggml_type not in made:
            run = _quantize_run(_record(ggml_type))
            out = tmp_path_factory.mktemp("iquants") / f"kq-{ggml_type}.gguf"
            with pytest.MonkeyPatch.context() as mp:
                mp.chdir(IMATRIX_DIR)   # the imatrix's name as given goes into quantize.imatrix.file
                quantize_as_run(run, out)
            got = tensor_hashes(out)
            bad = [g[0] for g, e in zip(got, run["tensors"]) if g != e]
            assert len(got) == len(run["tensors"]) and not bad, \
                f"{ggml_type}: tensors differ from llama-quantize's, e.g. {bad[:3]}"
            assert hashlib.sha256(out.read_bytes()).hexdigest() == _record(ggml_type)["gguf_sha256"]
            made[ggml_type] = out
        return made[ggml_type]

    return get


def test_references_cover_every_type():
    for ggml_type in TYPES:
        record = _record(ggml_type)
        assert record["prompt_ids"] == prompt_ids()
        assert record["input_sha256"] == hashlib.sha256(KQ.read_bytes()).hexdigest()
        assert _quantize_run(record)["file_sha256"] == record["gguf_sha256"]
        for name in (record["logits_file"], record["dequant_f32"]["logits_file"]):
            assert np.load(REFS / name).shape == (len(prompt_ids()), 1000)


@pytest.mark.parametrize("ggml_type", TYPES)
def test_float_path_is_llamacpps_dequant_f32(ggml_type, quantized):
    ref = np.load(REFS / _record(ggml_type)["dequant_f32"]["logits_file"])
    check_dequant_f32(float_logits(quantized(ggml_type)), ref, ggml_type)


@pytest.mark.parametrize("ggml_type", TYPES)
def test_default_path_within_twice_llamacpps_own_spread(ggml_type, quantized):
    record = _record(ggml_type)
    own = own_distance(record)
    native = np.load(REFS / record["logits_file"])
    check_within(default_logits(quantized(ggml_type)), native, ggml_type, 2 * own["max_abs_diff"],
                 2 * own["mean_abs_diff"], 1 - 2 * (1 - own["argmax_agree_fraction"]))
