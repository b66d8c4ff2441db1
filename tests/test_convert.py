"""`llmcli convert` against llama.cpp's converter: every tiny checkpoint, f32/f16/bf16/q8_0/auto.

References: tests/data/gguf_ref/<name>-<f32|f16>.json (the reference pack's llama.cpp GGUFs) and
tests/data/convert_ref/<name>-<type>.json (made by scripts/make_convert_refs.py with llama.cpp's
convert_hf_to_gguf.py at the same commit). Each holds the file sha256, the metadata (types and
values, in order) and every tensor's type, shape and sha256.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from llmcli.convert import convert
from tests.conftest import gguf_record
from llmcli.gguf.constants import FileType, GGMLType

DATA = Path(__file__).parent / "data"
TINY = ["llama", "llama_bf16", "mistral", "mixtral", "qwen2", "gemma3", "phi3"]
# byte-level BPE checkpoints whose pre-tokenizer hash llama.cpp does not know (see the pack's README)
FORCED_PRE = {"llama_bf16": "llama-bpe", "qwen2": "qwen2"}
CONVERT_REFS = sorted(p.stem for p in (DATA / "convert_ref").glob("*-*.json"))


def reference(name: str, outtype: str) -> dict:
    path = DATA / "gguf_ref" / f"{name}-{outtype}.json"
    if not path.is_file():
        path = DATA / "convert_ref" / f"{name}-{outtype}.json"
    return json.loads(path.read_text(encoding="utf-8"))


def model_dir(tmp_path: Path, name: str) -> Path:
    """The checkpoint under its own basename (general.name is derived from it)."""
    link = tmp_path / name
    link.symlink_to(DATA / "hf" / name, target_is_directory=True)
    return link




def assert_matches(ours: dict, ref: dict) -> None:
    assert list(ours["metadata"]) == list(ref["metadata"]), "metadata keys or their order differ"
    for key, want in ref["metadata"].items():
        got = ours["metadata"][key]
        assert (got["type"], got["item_type"]) == (want["type"], want["item_type"]), key
        if want["item_type"] == "FLOAT32" or want["type"] == "FLOAT32":
            np.testing.assert_array_equal(np.float32(got["value"]), np.float32(want["value"]), err_msg=key)
        else:
            assert got["value"] == want["value"], key
    assert ours["tensor_order"] == ref["tensor_order"]
    for name, want in ref["tensors"].items():
        got = ours["tensors"][name]
        assert (got["type"], got["shape"]) == (want["type"], want["shape"]), name
        assert got["sha256"] == want["sha256"], f"{name}: tensor bytes differ"
    assert ours["file_sha256"] == ref["file_sha256"], "whole file not byte-identical"


@pytest.mark.parametrize("outtype", ["f32", "f16"])
@pytest.mark.parametrize("name", TINY)
def test_matches_llama_cpp(tmp_path, name, outtype):
    out = tmp_path / "out.gguf"
    summary = convert(model_dir(tmp_path, name), out, outtype=outtype, pre=FORCED_PRE.get(name))
    assert_matches(gguf_record(out), reference(name, outtype))
    assert summary.tensors == len(reference(name, outtype)["tensors"])


@pytest.mark.parametrize("ref_name", CONVERT_REFS)
def test_matches_llama_cpp_other_outtypes(tmp_path, ref_name):
    name, outtype = ref_name.rsplit("-", 1)
    out = tmp_path / "out.gguf"
    convert(model_dir(tmp_path, name), out, outtype=outtype, pre=FORCED_PRE.get(name))
    assert_matches(gguf_record(out), reference(name, outtype))


def test_reference_set_covers_q8_0_bf16_and_auto():
    assert {"llama-q8_0", "mixtral-q8_0", "gemma3-q8_0", "phi3-q8_0", "qwen2-q8_0", "llama_bf16-bf16",
            "llama_bf16-auto", "llama-auto"} <= set(CONVERT_REFS)


def test_sharded_checkpoint_gives_the_same_file(tmp_path):
    """model.safetensors split in two shards + index: same bytes as llama.cpp's single-file result."""
    from safetensors.numpy import save_file

    from llmcli.convert.checkpoint import read_safetensors_header

    src = DATA / "hf" / "llama"
    d = tmp_path / "llama"
    d.mkdir()
    for f in src.iterdir():
        if f.is_file() and f.name != "model.safetensors":
            (d / f.name).write_bytes(f.read_bytes())
    tensors = read_safetensors_header(src / "model.safetensors")
    halves = [tensors[::2], tensors[1::2]]  # interleaved, so shard order and name order disagree
    weight_map = {}
    for i, part in enumerate(halves, start=1):
        fname = f"model-0000{i}-of-00002.safetensors"
        save_file({t.name: t.load() for t in part}, str(d / fname))
        weight_map.update({t.name: fname for t in part})
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    out = tmp_path / "out.gguf"
    convert(d, out, outtype="f16")
    ours = gguf_record(out)
    ref = reference("llama", "f16")
    # llama.cpp visits shard by shard (sorted file names), names sorted within a shard
    hf_to_gguf = dict(zip([t.name for t in tensors], ref["tensor_order"]))  # one file: sorted order
    assert ours["tensor_order"] == [hf_to_gguf[t.name] for part in halves for t in part]
    assert ours["tensor_order"] != ref["tensor_order"]
    for name, want in ref["tensors"].items():
        assert ours["tensors"][name] == {k: want[k] for k in ("type", "shape", "sha256")}
    assert list(ours["metadata"]) == list(ref["metadata"])


class Q8Quantizer:
    """A stand-in for the quantization engineer's mixes: every eligible matrix to Q8_0."""

    file_type = int(FileType.MOSTLY_Q8_0)

    def __init__(self):
        self.offered: list[tuple[str, tuple[int, ...], GGMLType]] = []
        self.quantized: list[str] = []

    def choose_type(self, name, gguf_shape, default):
        self.offered.append((name, gguf_shape, default))
        return GGMLType.Q8_0

    def quantize(self, name, rows, ggml_type):
        from llmcli.convert.pipeline import encode_q8_0

        assert rows.dtype == np.float32 and ggml_type == GGMLType.Q8_0
        self.quantized.append(name)
        return encode_q8_0(rows)


def test_quantizer_hook_plugs_in(tmp_path):
    """Choosing Q8_0 through the hook gives exactly llama.cpp's --outtype q8_0 file."""
    q = Q8Quantizer()
    out = tmp_path / "out.gguf"
    convert(model_dir(tmp_path, "mixtral"), out, outtype="f16", quantizer=q)
    assert_matches(gguf_record(out), reference("mixtral", "q8_0"))
    offered = {name for name, _, _ in q.offered}
    assert "blk.0.ffn_gate_exps.weight" in offered and "token_embd.weight" in offered
    assert not any(n.endswith("_norm.weight") or "ffn_gate_inp" in n for n in offered)
    assert all(default == GGMLType.F16 for _, _, default in q.offered)
    assert q.quantized == [name for name, _, _ in q.offered]  # every chosen tensor went through the hook


VARIANT_REFS = sorted((DATA / "convert_ref" / "variants").glob("*-f16.json"))


@pytest.mark.parametrize("ref_path", VARIANT_REFS, ids=lambda p: p.stem)
def test_config_variants_match_llama_cpp(tmp_path, ref_path):
    """Edited config.json files: keys removed (llama.cpp reads the config through transformers,
    which fills defaults; ours come from per-model_type tables), RoPE scaling variants (Llama 3
    rope_freqs, Gemma 3 linear scaling, Phi-3 LongRoPE factors), and a model-id-like directory name
    with _name_or_path and sampling defaults (general.* naming and general.sampling.* keys), and a
    model card (README.md front matter: license, tags, languages, base models, datasets)."""
    import shutil

    ref = json.loads(ref_path.read_text(encoding="utf-8"))
    name = ref_path.stem.split("-")[0]
    d = tmp_path / ref.get("dir_name", name)
    shutil.copytree(DATA / "hf" / name, d, ignore=shutil.ignore_patterns("reference"))
    for file, edits in (("config.json", ref["config_edits"]),
                        ("generation_config.json", ref.get("generation_config_edits", {}))):
        content = json.loads((d / file).read_text())
        for key, value in edits.items():
            if value is None:
                content.pop(key, None)
            else:
                content[key] = value
        (d / file).write_text(json.dumps(content, indent=2))
    for file, edits in ref.get("file_edits", {}).items():
        content = json.loads((d / file).read_text())
        content.update(edits)
        (d / file).write_text(json.dumps(content, indent=2))
    for file, text in ref.get("extra_files", {}).items():
        (d / file).write_text(text, encoding="utf-8")
    if ref.get("make_multimodal"):
        _reference_script().make_multimodal(d)  # the same rewrite the reference was made from
    if ref.get("make_f16_source"):
        _reference_script().make_f16_source(d)
    for file in ref.get("remove_files", []):
        (d / file).unlink()
    if ref.get("add_tokens"):
        _reference_script().add_tokens(d)
    out = tmp_path / "out.gguf"
    convert(d, out, outtype="f16", pre=FORCED_PRE.get(name))
    assert_matches(gguf_record(out), ref)


def test_variant_references_present():
    assert {p.stem for p in VARIANT_REFS} == {
        "llama-defaults-f16", "mistral-defaults-f16", "qwen2-defaults-f16", "gemma3-defaults-f16",
        "phi3-defaults-f16", "llama_bf16-llama3rope-f16", "gemma3-linearrope-f16", "phi3-longrope-f16",
        "llama-named-f16", "llama-card-f16", "gemma3-multimodal-f16", "llama-noprefix-f16",
        "llama-f16src-f16", "gemma3-f16src-f16", "llama-hfvocab-f16", "mistral-hfvocab-f16",
        "llama-hfvocab-added-f16"}


def _reference_script():
    import importlib.util

    path = Path(__file__).parents[1] / "scripts" / "make_convert_refs.py"
    spec = importlib.util.spec_from_file_location("make_convert_refs", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name,outtype", [("gemma3", "f16"), ("llama_bf16", "q8_0"), ("llama_bf16", "bf16"),
                                          ("phi3", "f32")])
def test_streaming_in_row_slices_gives_the_same_bytes(tmp_path, monkeypatch, name, outtype):
    """Big matrices are read and encoded a slice of rows at a time; force slices of 3 rows."""
    from llmcli.convert import pipeline

    monkeypatch.setattr(pipeline, "_ROWS_PER_CHUNK_BYTES", 3 * 64 * 4 * 2)
    out = tmp_path / "out.gguf"
    convert(model_dir(tmp_path, name), out, outtype=outtype, pre=FORCED_PRE.get(name))
    assert_matches(gguf_record(out), reference(name, outtype))


@pytest.mark.parametrize("name", sorted(FORCED_PRE))
def test_bpe_check_hash_matches_the_converters(name):
    """The pre-tokenizer hash, from the tokenizers library, equals what llama.cpp's converter computes
    through transformers' AutoTokenizer (recorded by scripts/make_convert_refs.py)."""
    from llmcli.vocab.hf import bpe_check_hash

    expected = json.loads((DATA / "convert_ref" / "bpe_check_hashes.json").read_text())[name]
    assert bpe_check_hash(DATA / "hf" / name) == expected
