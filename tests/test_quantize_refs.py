"""llama-quantize's choices beyond the dense kq model: MoE, tied embeddings, row-length fallbacks,
options, requantizing, and (type plans only) 70B / 8-expert / Falcon rules and every file type.

References: tests/data/quantize_ref/{files,plans}.json, made by scripts/make_quantize_references.py
with llama.cpp 0c1e570 (llama-cpp-python 0.3.36). The tiny f16 inputs are made here by
`llmcli convert` from tests/data/hf (checked against the sha256 of llama.cpp's own conversion).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from llmcli.convert.pipeline import convert
from llmcli.errors import BadInputError, UnsupportedError
from llmcli.gguf import GGUFReader
from llmcli.gguf.constants import GGMLType
from llmcli.quantize import quantize_file
from llmcli.quants.mixes import MIXES, ModelFacts, QuantizeOptions, plan_types

DATA = Path(__file__).parent / "data"
REF = DATA / "quantize_ref"
FILES = json.loads((REF / "files.json").read_text())
PLANS = json.loads((REF / "plans.json").read_text())
PRE = {"qwen2": "qwen2"}  # as the reference pack converted it (see tests/data/gguf_ref)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """The f16 GGUFs llama-quantize read: convert's output is byte-identical to llama.cpp's."""
    root = tmp_path_factory.mktemp("quantize_ref")
    paths = {"kq": DATA / "kq" / "kq-f16.gguf"}
    for model in ("mixtral", "qwen2", "gemma3"):
        out = root / f"{model}-f16.gguf"
        convert(DATA / "hf" / model, out, outtype="f16", pre=PRE.get(model))
        paths[model] = out
    for model, path in paths.items():
        assert _sha256(path) == FILES["models"][model]["input_sha256"], f"{model}: input differs from llama.cpp's"
    return paths


def _options(raw: dict) -> tuple[QuantizeOptions, bool]:
    return QuantizeOptions(
        pure=raw.get("pure", False),
        output_tensor_type=GGMLType[raw["output_tensor_type"].upper()] if raw.get("output_tensor_type") else None,
        token_embedding_type=GGMLType[raw["token_embedding_type"].upper()] if raw.get("token_embedding_type") else None,
        leave_output_tensor=raw.get("leave_output_tensor", False),
        tensor_types=[(p.lower(), GGMLType[t.upper()]) for p, t in raw.get("tensor_types", [])],
    ), raw.get("allow_requantize", False)


RUNS = [r for r in FILES["runs"] if not r.get("failed")]


def _run_id(run: dict) -> str:
    opts = "+".join(sorted(run["options"])) or "plain"
    return f"{run['model']}-{run.get('input', 'f16')}-{run['type']}-{opts}"


def test_references_cover_moe_tied_fallbacks_and_options():
    models = {r["model"] for r in RUNS}
    assert {"mixtral", "qwen2", "gemma3", "kq"} <= models and len(RUNS) >= 60
    assert {"llama_70b", "moe_8_experts", "falcon", "qwen2_tied_80"} <= set(PLANS["models"])


@pytest.mark.parametrize("run", RUNS, ids=_run_id)
def test_quantized_file_matches_llama_quantize(run, inputs, tmp_path):
    options, allow_requantize = _options(run["options"])
    src = inputs[run["model"]]
    if run.get("input") == "kq-Q4_K_M":
        src = tmp_path / "kq-Q4_K_M.gguf"
        quantize_file(inputs["kq"], src, "Q4_K_M", measure=False)
        assert _sha256(src) == json.loads((DATA / "kq" / "types" / "Q4_K_M.json").read_text())["file_sha256"]
    out = tmp_path / "out.gguf"
    report = quantize_file(src, out, run["type"], options, allow_requantize=allow_requantize, measure=False)
    layout = FILES["models"][run["model"]]["layout"]
    with GGUFReader(out) as reader:
        got = [(t.name, list(t.shape), t.type.name) for t in reader.tensors]
    expected = [(name, shape, t) for (name, shape), t in zip(layout, run["types"].split())]
    assert got == expected
    assert report.file_bytes_out == out.stat().st_size == run["file_bytes"]
    assert _sha256(out) == run["file_sha256"]


def test_requantizing_without_the_flag_fails_like_llama_quantize(inputs, tmp_path):
    run = next(r for r in FILES["runs"] if r.get("failed") and r.get("input") == "kq-Q4_K_M")
    assert "requantizing from type q4_K is disabled" in run["error"][0] and "token_embd.weight" in run["error"][0]
    src = tmp_path / "kq-Q4_K_M.gguf"
    quantize_file(inputs["kq"], src, "Q4_K_M", measure=False)
    with pytest.raises(BadInputError, match=r"'token_embd.weight' is already quantized \(Q4_K\)"):
        quantize_file(src, tmp_path / "out.gguf", "Q4_0")
    assert not (tmp_path / "out.gguf").exists()


def _facts(metadata: dict) -> ModelFacts:
    values = {k: v for k, (_t, v) in metadata.items()}
    return ModelFacts.from_metadata(values.get)


PLAN_CASES = [(model, key) for model, m in PLANS["models"].items() for key in m["plans"]]


@pytest.mark.parametrize("model,key", PLAN_CASES, ids=[f"{m}-{k}" for m, k in PLAN_CASES])
def test_type_plan_matches_llama_quantize(model, key):
    m = PLANS["models"][model]
    expected = m["plans"][key]
    type_name, _, pure = key.partition("-")
    tensors = [(name, shape, GGMLType[t]) for name, shape, t in m["tensors"]]
    run = lambda: plan_types(_facts(m["metadata"]), MIXES[type_name], QuantizeOptions(pure=bool(pure)), tensors)  # noqa: E731
    if expected.get("failed"):
        # the only failure: a 128-block type with no fallback for 80-wide rows
        assert "no tensor type fallback is defined for type q1_0" in " ".join(expected["log_tail"])
        with pytest.raises(UnsupportedError, match="no fallback type is defined for Q1_0"):
            run()
        return
    choices = run()
    assert [c.name for c in choices] == m["order"]
    assert " ".join(c.target.name for c in choices) == expected["types"]
    assert any(c.needs_imatrix for c in choices) == expected["requires_imatrix"]
    assert MIXES[type_name].file_type == expected["ftype"]
