"""The i-quant and ternary types against llama.cpp 0c1e570, byte for byte and bit for bit.

References (tests/data/iquants/, made by scripts/make_iquant_refs.py with llama-quantize and
scripts/iquant_ref_harness.cpp linked against the reference ggml):
* quantize.json: `llama-quantize [--imatrix kq.imatrix.gguf] [--pure] kq-f16.gguf OUT TYPE 2` for
  every i-quant / ternary mix and ggml type: per tensor type and data sha256, the file's sha256,
  or llama-quantize's refusal;
* dequantize.npz: ggml's to_float on random and real blocks of every type;
* quantize_rows.npz: ggml_quantize_chunk on random rows, with and without importance weights;
* vec_dot.npz: ggml-cpu's mat-vec step (the activation through its vec_dot_type's from_float, then
  vec_dot) on rows of every type; the engine's kernels are checked on it elsewhere, here the
  activation blocks and the layout.

The tables below list what this branch has codecs for; a new codec adds its entries (IQ2_XXS,
IQ2_XS, IQ2_S; IQ3_XXS, IQ3_S; IQ1_S, IQ1_M) and each mix once all the types it uses exist.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from llmcli.errors import BadInputError, UnsupportedError
from llmcli.gguf.constants import GGMLType
from llmcli.quantize import quantize_file
from llmcli.quants import dequantize, quantize
from llmcli.quants.mixes import IMATRIX_ONLY_MIXES, QuantizeOptions, find_mix
from tests.kq_refs import DATA, KQ, quantize_as_run, tensor_hashes
from tests.kq_refs import IMATRIX_DIR as IMX

REFS = DATA / "iquants"
RECORD = json.loads((REFS / "quantize.json").read_text())
RUNS = RECORD["runs"]
with np.load(REFS / "quantize_rows.npz") as _npz:
    ROW_KEYS = set(_npz.files)   # no .plain for the types whose ggml quantizer requires weights

# ggml types with a quantizer and a dequantizer on this branch
TYPES = ["TQ1_0", "TQ2_0", "IQ4_NL", "IQ4_XS", "IQ3_XXS", "IQ3_S", "IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S"]
# llama-quantize mixes whose every tensor type has a quantizer here
MIXES = ["TQ1_0", "TQ2_0", "IQ4_NL", "IQ4_XS", "IQ3_XS", "IQ3_S", "IQ3_M", "IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS",
         "IQ2_S", "IQ2_M", "IQ3_XXS"]
# every i-quant / ternary mix and type the references cover (scripts/make_iquant_refs.py)
ALL_MIXES = ["IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ3_XXS", "IQ3_XS", "IQ3_S", "IQ3_M",
             "IQ4_NL", "IQ4_XS", "TQ1_0", "TQ2_0"]
ALL_TYPES = ["IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ4_NL", "IQ4_XS", "TQ1_0", "TQ2_0"]


def _run(type_name: str, pure: bool, imatrix: bool) -> dict:
    key = "ggml_type" if pure else "type"
    found = [r for r in RUNS if r.get(key) == type_name and r["pure"] == pure and r["imatrix"] == imatrix
             and not r.get("failed")]
    return found[-1]


def _recorded(names: list[str], pure: bool) -> list[tuple[str, bool]]:
    """(name, imatrix) for each run of `names` that llama-quantize completed (it refuses the
    imatrix-only types and mixes without one)."""
    key = "ggml_type" if pure else "type"
    return [(n, i) for n in names for i in (True, False)
            if any(r.get(key) == n and r["pure"] == pure and r["imatrix"] == i and not r.get("failed") for r in RUNS)]


def test_references_cover_every_type_and_mix():
    assert hashlib.sha256(KQ.read_bytes()).hexdigest() == RECORD["input_sha256"]
    assert hashlib.sha256((IMX / "kq.imatrix.gguf").read_bytes()).hexdigest() == RECORD["imatrix_sha256"]
    for mix in ALL_MIXES:
        assert _run(mix, False, True)["tensors"]
    for ggml_type in ALL_TYPES:
        run = _run(ggml_type, True, True)
        assert {t for _, t, _ in run["tensors"]} <= {ggml_type, "F32", "Q8_0"}, ggml_type


@pytest.mark.parametrize("mix, imatrix", _recorded(MIXES, False),
                         ids=lambda v: v if isinstance(v, str) else ("imatrix" if v else "plain"))
def test_mix_matches_llama_quantize(mix, imatrix, tmp_path, monkeypatch):
    monkeypatch.chdir(IMX)   # the imatrix file name as given goes into quantize.imatrix.file
    run = _run(mix, False, imatrix)
    out = tmp_path / "out.gguf"
    quantize_file(KQ, out, mix, measure=False, imatrix="kq.imatrix.gguf" if imatrix else None)
    got = tensor_hashes(out)
    assert [g[:2] for g in got] == [e[:2] for e in run["tensors"]]
    bad = [g[0] for g, e in zip(got, run["tensors"]) if g != e]
    assert not bad, f"{len(bad)} tensors differ from llama-quantize's, e.g. {bad[:3]}"
    assert hashlib.sha256(out.read_bytes()).hexdigest() == run["file_sha256"]


@pytest.mark.parametrize("ggml_type, imatrix", _recorded(TYPES, True),
                         ids=lambda v: v if isinstance(v, str) else ("imatrix" if v else "plain"))
def test_pure_type_matches_llama_quantize(ggml_type, imatrix, tmp_path, monkeypatch):
    monkeypatch.chdir(IMX)
    run = _run(ggml_type, True, imatrix)
    out = tmp_path / "out.gguf"
    quantize_as_run(run, out)
    assert tensor_hashes(out) == run["tensors"]
    assert hashlib.sha256(out.read_bytes()).hexdigest() == run["file_sha256"]


@pytest.fixture(scope="module")
def dequantized():
    return dict(np.load(REFS / "dequantize.npz"))


@pytest.fixture(scope="module")
def rows():
    return dict(np.load(REFS / "quantize_rows.npz"))


@pytest.mark.parametrize("ggml_type", TYPES)
def test_dequantize_is_ggml_bit_for_bit(ggml_type, dequantized):
    blocks = dequantized[f"{ggml_type}.blocks"]
    expected = dequantized[f"{ggml_type}.values"]
    got = dequantize(blocks, GGMLType[ggml_type])
    assert got.shape == expected.shape
    differ = np.flatnonzero((got.view(np.uint32) != expected.view(np.uint32)).any(axis=1))
    assert differ.size == 0, f"{differ.size} of {len(blocks)} blocks differ, e.g. block {differ[:5]}"


@pytest.mark.parametrize("ggml_type, weighted", [(t, w) for t in TYPES for w in (True, False)
                                                  if f"{t}.{'weighted' if w else 'plain'}" in ROW_KEYS],
                         ids=lambda v: v if isinstance(v, str) else ("weighted" if v else "plain"))
def test_quantize_rows_is_ggml_byte_for_byte(ggml_type, weighted, rows):
    key = f"{ggml_type}.{'weighted' if weighted else 'plain'}"
    got = quantize(rows["rows"], GGMLType[ggml_type], rows["weights"] if weighted else None)
    expected = rows[key]
    differ = [i for i in range(len(got)) if not np.array_equal(got[i], expected[i])]
    assert not differ, f"rows {differ} differ from ggml_quantize_chunk's"


@pytest.mark.parametrize("mix", ALL_MIXES)
def test_imatrix_rule_is_llama_quantizes(mix):
    """The mixes llama-quantize refused without --imatrix are the ones llmcli refuses (before
    looking at codecs: the refusal does not depend on what this branch can produce)."""
    refused = any(r["type"] == mix and not r["pure"] and not r["imatrix"] and r.get("failed") for r in RUNS)
    if refused:
        assert any("requires an imatrix" in line for r in RUNS if r["type"] == mix and not r["imatrix"]
                   and not r["pure"] for line in r["error"])
        with pytest.raises(UnsupportedError, match="needs an importance matrix.*--imatrix"):
            find_mix(mix, has_imatrix=False)
    else:
        assert mix not in IMATRIX_ONLY_MIXES
        try:
            find_mix(mix, has_imatrix=False)
        except UnsupportedError as e:   # only for want of a codec
            assert "cannot produce yet" in str(e)


@pytest.mark.parametrize("mix", ["IQ2_XXS", "IQ3_XS", "IQ1_M"])
def test_imatrix_mix_refused_without_one(mix, cli, tmp_path):
    out = tmp_path / "out.gguf"
    res = cli("quantize", KQ, out, "--type", mix)
    assert res.exit_code == 1
    lines = [line for line in res.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "--imatrix" in lines[0], res.stderr
    assert not list(tmp_path.iterdir())


def test_weights_only_type_on_token_embd_is_refused(tmp_path):
    # llama-quantize --pure IQ2_XXS aborts on token_embd (GGML_ASSERT(imatrix != NULL)): no
    # importance matrix covers it; llmcli says so instead
    run = next(r for r in RUNS if r.get("ggml_type") == "IQ2_XXS" and r["options"] == ["--imatrix", "kq.imatrix.gguf",
                                                                                        "--pure"])
    assert run["failed"] and any("GGML_ASSERT(imatrix != NULL)" in line for line in run["error"])
    out = tmp_path / "out.gguf"
    options = QuantizeOptions(token_embedding_type=GGMLType.IQ2_XXS)
    with pytest.raises(BadInputError, match="'token_embd.weight' would become IQ2_XXS.*--token-embedding-type"):
        quantize_file(KQ, out, "Q4_K_M", options=options, measure=False)
    with pytest.raises(BadInputError, match="the importance matrix has none for it"):
        quantize_file(KQ, out, "Q4_K_M", options=options, measure=False, imatrix=IMX / "kq.imatrix.gguf")
    assert not list(tmp_path.iterdir())


@pytest.fixture(scope="module")
def vec_dots():
    return dict(np.load(REFS / "vec_dot.npz"))


@pytest.mark.parametrize("ggml_type", ALL_TYPES)
def test_activation_blocks_are_ggml_cpus(ggml_type, vec_dots):
    """ggml-cpu's from_float (the AVX-512 build's) for the activations vec_dot reads is our Q8_K / Q8_0
    quantizer byte for byte."""
    act_type = dict(zip(vec_dots["types"], vec_dots["vec_dot_type"]))[ggml_type]
    assert act_type == ("Q8_0" if ggml_type == "IQ4_NL" else "Q8_K")
    got = quantize(vec_dots[f"{ggml_type}.x"], GGMLType[str(act_type)])
    assert np.array_equal(got, vec_dots[f"{ggml_type}.xq"])


@pytest.mark.parametrize("ggml_type", ALL_TYPES)
def test_vec_dot_is_the_dot_of_the_dequantized_blocks(ggml_type, vec_dots):
    """vec_dot's integer sums are exact: its results are the float64 dot of the dequantized blocks up to
    float32 rounding (ggml's ternary kernels keep 8 float lanes of block partial sums: 4e-5 relative)."""
    act_type = GGMLType[str(dict(zip(vec_dots["types"], vec_dots["vec_dot_type"]))[ggml_type])]
    x = dequantize(vec_dots[f"{ggml_type}.xq"], act_type).astype(np.float64)
    w = dequantize(vec_dots[f"{ggml_type}.blocks"], GGMLType[ggml_type]).astype(np.float64)
    dot = vec_dots[f"{ggml_type}.dot"]
    assert dot.shape == (len(x), len(w)) and w.shape[1] == x.shape[1] == 512
    scale = np.abs(x) @ np.abs(w).T
    assert (np.abs(dot - x @ w.T) <= (1e-4 if ggml_type.startswith("TQ") else 1e-6) * scale).all()
    assert (scale > 0).sum() >= 0.75 * scale.size   # zero rows and the zero vector only
