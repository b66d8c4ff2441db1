"""`llmcli quantize --imatrix` against `llama-quantize --imatrix` (llama.cpp 0c1e570), byte for byte.

References: tests/data/imatrix/quantize.json, made by scripts/make_imatrix_refs.py: the kq model
quantized with llama-imatrix's file (and its legacy .dat, --include-weights / --exclude-weights,
and llmcli's own imatrix files) to every type llmcli supports plus Q2_K_S; per run the file's
sha256, its quantize.imatrix.* metadata and each tensor's type and data sha256 - or the error.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from llmcli.errors import BadInputError, UnsupportedError
from llmcli.gguf import GGUFReader
from llmcli.gguf.constants import GGMLType
from llmcli.quantize import load_importance, quantize_file
from llmcli.quants import quantize as quantize_rows

DATA = Path(__file__).parent / "data"
IMX = DATA / "imatrix"
KQ = DATA / "kq" / "kq-f16.gguf"
RECORD = json.loads((IMX / "quantize.json").read_text())
RUNS = RECORD["runs"]
TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q2_K_S", "Q3_K_S", "Q3_K_M", "Q3_K_L",
         "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K"]


def _options(run: dict) -> dict:
    it = iter(run["options"])
    out = {"include_weights": [], "exclude_weights": []}
    for flag in it:
        value = next(it)
        if flag == "--imatrix":
            out["imatrix"] = value
        else:
            out[flag[2:].replace("-", "_")].append(value)
    return out


def _run_id(run: dict) -> str:
    return "-".join([run["type"]] + [o for o in run["options"] if not o.startswith("--")])


def test_references_cover_every_type_and_the_options():
    assert hashlib.sha256(KQ.read_bytes()).hexdigest() == RECORD["input_sha256"]
    plain = [r["type"] for r in RUNS if r["options"] == ["--imatrix", "kq.imatrix.gguf"]]
    assert plain == TYPES and not any(r.get("failed") for r in RUNS if r["type"] in plain and
                                      r["options"] == ["--imatrix", "kq.imatrix.gguf"])
    used = {o for r in RUNS for o in r["options"]}
    assert {"--include-weights", "--exclude-weights", "kq.imatrix.dat", "kq.llmcli.imatrix.gguf",
            "kq.llmcli.imatrix.dat"} <= used
    # llama-quantize read llmcli's files (both formats) and quantized with them
    assert all(not r.get("failed") for r in RUNS if "llmcli" in r["options"][1])


@pytest.mark.parametrize("run", RUNS, ids=_run_id)
def test_quantized_file_matches_llama_quantize(run, tmp_path, monkeypatch):
    monkeypatch.chdir(IMX)   # the imatrix file name as given goes into quantize.imatrix.file
    out = tmp_path / "out.gguf"
    if run.get("failed"):
        expected = {"attn_k": ("Missing importance matrix for tensor blk.0.attn_k.weight",
                               "no importance data for tensor 'blk.0.attn_k.weight'"),
                    "mixtral.imatrix.gguf": ("imatrix size 64 is different from tensor size 256",
                                             "has 64 values for tensor 'blk.0.attn_k.weight', which needs 256")}
        key = next(k for k in expected if k in run["options"])
        theirs, ours = expected[key]
        assert any(theirs in line for line in run["error"]), run["error"]
        with pytest.raises(BadInputError, match=ours.replace("(", r"\(").replace(")", r"\)")):
            quantize_file(KQ, out, run["type"], measure=False, **_options(run))
        assert not out.exists() and not list(tmp_path.iterdir())
        return
    report = quantize_file(KQ, out, run["type"], measure=False, **_options(run))
    with GGUFReader(out) as r:
        got = [[t.name, t.type.name, hashlib.sha256(r.tensor_bytes(t).tobytes()).hexdigest()] for t in r.tensors]
        meta = {k: r.get(k) for k in r.metadata if k.startswith("quantize.imatrix")}
        types = {k: r.metadata[k].type.name for k in meta}
        last = list(r.metadata)[-6:]
    bad = [g[0] for g, e in zip(got, run["tensors"]) if g != e]
    assert [g[:2] for g in got] == [e[:2] for e in run["tensors"]]
    assert not bad, f"{len(bad)} tensors differ from llama-quantize's, e.g. {bad[:3]}"
    assert (meta, types, last) == (run["metadata"], run["metadata_types"], run["last_keys"])
    assert out.stat().st_size == run["file_bytes"] == report.file_bytes_out
    assert hashlib.sha256(out.read_bytes()).hexdigest() == run["file_sha256"]
    assert report.imatrix["entries"] == run["metadata"]["quantize.imatrix.entries_count"]


def test_imatrix_changes_the_mix_and_the_bytes():
    # with an imatrix llama-quantize guards Q4_0's first ffn_down layers with Q4_1 (n_layer/8 = 1)
    run = next(r for r in RUNS if r["type"] == "Q4_0" and r["options"] == ["--imatrix", "kq.imatrix.gguf"])
    types = {name: t for name, t, _ in run["tensors"]}
    assert types["blk.0.ffn_down.weight"] == "Q4_1" and types["blk.1.ffn_down.weight"] == "Q4_0"
    plain = json.loads((DATA / "kq" / "types" / "Q4_0.json").read_text())
    assert plain["tensor_types"]["blk.0.ffn_down.weight"] == "Q4_0"
    # and every weighted type's blocks differ from the unweighted quantizer's
    weights = load_importance(IMX / "kq.imatrix.gguf").weights["blk.2.attn_q.weight"]
    with GGUFReader(KQ) as r:
        x = r.tensor_array("blk.2.attn_q.weight").astype(np.float32)[:8]
    for t in ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"):
        assert not np.array_equal(quantize_rows(x, GGMLType[t], weights), quantize_rows(x, GGMLType[t])), t
    assert np.array_equal(quantize_rows(x, GGMLType.Q8_0, weights), quantize_rows(x, GGMLType.Q8_0))


def test_q2_k_s_needs_an_imatrix(cli, tmp_path):
    out = tmp_path / "out.gguf"
    res = cli("quantize", KQ, out, "--type", "Q2_K_S")
    assert res.exit_code == 1
    lines = [line for line in res.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "importance matrix" in lines[0]
    assert "--imatrix" in " ".join(res.stderr.split()) and not list(tmp_path.iterdir())
    res = cli("quantize", KQ, out, "--type", "Q2_K_S", "--imatrix", IMX / "kq.imatrix.gguf", "--json")
    assert res.exit_code == 0, res.stderr
    info = json.loads(res.stdout)
    run = next(r for r in RUNS if r["type"] == "Q2_K_S" and r["options"] == ["--imatrix", "kq.imatrix.gguf"])
    assert {t["name"]: t["to_type"] for t in info["tensors"]} == {n: t for n, t, _ in run["tensors"]}
    assert info["imatrix"]["tensors_weighted"] == 57 and all(
        t["imatrix"] == (t["name"] != "token_embd.weight" and t["from_type"] != t["to_type"]) for t in info["tensors"])


def test_option_errors(cli, tmp_path):
    out = tmp_path / "out.gguf"

    def fails(res, fragment):
        assert res.exit_code == 1, (res.stdout, res.stderr)
        lines = [line for line in res.stderr.strip().splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:") and fragment in " ".join(res.stderr.split())

    im = IMX / "kq.imatrix.gguf"
    fails(cli("quantize", KQ, out, "-t", "Q4_K_M", "--imatrix", im, "--include-weights", "attn",
              "--exclude-weights", "ffn"), "cannot be used together")
    fails(cli("quantize", KQ, out, "-t", "Q4_K_M", "--include-weights", "attn"), "give one with --imatrix")
    fails(cli("quantize", KQ, out, "-t", "Q4_K_M", "--imatrix", IMX / "genesis-1-3.txt"), "not an importance matrix")
    fails(cli("quantize", KQ, out, "-t", "Q4_K_M", "--imatrix", tmp_path / "none.gguf"), "cannot read")
    assert not list(tmp_path.iterdir())


def test_filters_that_leave_nothing_quantize_as_without(tmp_path):
    # llama-quantize: no entry left -> no imatrix at all (same bytes and metadata as without)
    out = tmp_path / "out.gguf"
    report = quantize_file(KQ, out, "Q4_K_M", measure=False, imatrix=IMX / "kq.imatrix.gguf",
                           include_weights=["no-such-tensor"])
    assert report.imatrix is None
    plain = json.loads((DATA / "kq" / "types" / "Q4_K_M.json").read_text())
    assert hashlib.sha256(out.read_bytes()).hexdigest() == plain["file_sha256"]


def test_dry_run_with_imatrix(tmp_path):
    report = quantize_file(KQ, None, "Q2_K_S", dry_run=True, imatrix=IMX / "kq.imatrix.dat")
    assert report.dry_run and report.imatrix["entries"] == 57 and not list(tmp_path.iterdir())
    with pytest.raises(UnsupportedError, match="importance matrix"):
        quantize_file(KQ, None, "Q2_K_S", dry_run=True)
