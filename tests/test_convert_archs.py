"""`llmcli convert` for Qwen3, Qwen2-MoE, Gemma 1, Gemma 2 and Baichuan against llama.cpp's converter.

The pack has no checkpoints of these architectures, so scripts/make_arch_references.py made tiny
random ones (tests/data/hf/<name>/) and converted them with llama.cpp's convert_hf_to_gguf.py at the
reference commit (Baichuan: with the converter's self-recursion bug fixed, see that script).
tests/data/gguf_ref/<name>-<f32|f16>.json record llama.cpp's output: file sha256, metadata (types,
values, order) and every tensor's type, shape and sha256.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from llmcli.convert import convert
from tests.conftest import gguf_record
from llmcli.errors import BadInputError
from llmcli.gguf import GGUFReader

DATA = Path(__file__).parent / "data"
ARCHS = {"qwen3": "qwen3", "qwen2moe": "qwen2moe", "gemma": "gemma", "gemma2": "gemma2", "baichuan": "baichuan"}
# byte-level BPE whose pre-tokenizer hash llama.cpp does not know: forced as for the references
FORCED_PRE = {"qwen3": "qwen2", "qwen2moe": "qwen2"}


def reference(name: str, outtype: str) -> dict:
    return json.loads((DATA / "gguf_ref" / f"{name}-{outtype}.json").read_text(encoding="utf-8"))


def checkpoint_copy(tmp_path: Path, name: str) -> Path:
    """The checkpoint under its own basename (general.name derives from it), as a writable copy."""
    dst = tmp_path / name
    shutil.copytree(DATA / "hf" / name, dst, ignore=shutil.ignore_patterns("reference"))
    return dst




def assert_tensors_match(ours: dict, ref: dict) -> None:
    assert ours["tensor_order"] == ref["tensor_order"]
    for name, want in ref["tensors"].items():
        got = ours["tensors"][name]
        assert (got["type"], got["shape"]) == (want["type"], want["shape"]), name
        assert got["sha256"] == want["sha256"], f"{name}: tensor bytes differ"


def assert_metadata_match(ours: dict, ref: dict) -> None:
    assert list(ours["metadata"]) == list(ref["metadata"]), "metadata keys or their order differ"
    for key, want in ref["metadata"].items():
        got = ours["metadata"][key]
        assert (got["type"], got["item_type"]) == (want["type"], want["item_type"]), key
        if FLOAT32 in (want["type"], want["item_type"]):
            np.testing.assert_array_equal(np.float32(got["value"]), np.float32(want["value"]), err_msg=key)
        else:
            assert got["value"] == want["value"], key


FLOAT32 = "FLOAT32"


@pytest.mark.parametrize("outtype", ["f32", "f16"])
@pytest.mark.parametrize("name", sorted(ARCHS))
def test_matches_llama_cpp(tmp_path, name, outtype):
    out = tmp_path / f"{name}-{outtype}.gguf"
    summary = convert(checkpoint_copy(tmp_path, name), out, outtype=outtype, pre=FORCED_PRE.get(name))
    ours, ref = gguf_record(out), reference(name, outtype)
    assert summary.architecture == ref["metadata"]["general.architecture"]["value"] == ARCHS[name]
    assert_metadata_match(ours, ref)
    assert_tensors_match(ours, ref)
    assert ours["file_sha256"] == ref["file_sha256"], "whole file not byte-identical"


@pytest.mark.parametrize("outtype", ["f16", "q8_0"])
def test_expert_stacks_stream_in_row_slices(tmp_path, monkeypatch, outtype):
    """A stack of experts is written a slice of rows at a time, slices crossing from one expert to
    the next, no expert tensor ever loaded whole (a real MoE layer's stack is ~1 GB of float32)."""
    from llmcli.convert import pipeline
    from llmcli.convert.checkpoint import SourceTensor

    whole = SourceTensor.load

    def load(self):
        assert ".experts." not in self.name, f"{self.name} loaded whole"
        return whole(self)

    monkeypatch.setattr(SourceTensor, "load", load)
    monkeypatch.setattr(pipeline, "_ROWS_PER_CHUNK_BYTES", 5 * 64 * 4 * 2)  # 5 rows of 64: never an expert's 32
    out = tmp_path / "out.gguf"
    convert(checkpoint_copy(tmp_path, "qwen2moe"), out, outtype=outtype, pre=FORCED_PRE["qwen2moe"])
    ours, ref = gguf_record(out), reference("qwen2moe", outtype)
    assert_tensors_match(ours, ref)
    assert ours["file_sha256"] == ref["file_sha256"]


# the other --outtype paths recorded with llama.cpp's converter (scripts/make_arch_references.py):
# 3-D expert tensors in BF16 / Q8_0, a float16 checkpoint to BF16 / Q8_0 / auto (-> f16)
EXTRA_OUTTYPES = [("qwen2moe", "bf16"), ("qwen2moe", "q8_0"), ("baichuan", "bf16"), ("baichuan", "q8_0"),
                  ("baichuan", "auto"), ("gemma2", "q8_0")]


@pytest.mark.parametrize("name,outtype", EXTRA_OUTTYPES)
def test_other_outtypes_match_llama_cpp(tmp_path, name, outtype):
    out = tmp_path / f"{name}-{outtype}.gguf"
    convert(checkpoint_copy(tmp_path, name), out, outtype=outtype, pre=FORCED_PRE.get(name))
    ours, ref = gguf_record(out), reference(name, outtype)
    assert_metadata_match(ours, ref)
    assert_tensors_match(ours, ref)
    assert ours["file_sha256"] == ref["file_sha256"], "whole file not byte-identical"


def test_qwen2moe_fused_expert_layout(tmp_path):
    """transformers' in-memory layout (experts.gate_up_proj / experts.down_proj, 3-D) converts to the
    same tensors as the per-expert files llama.cpp's record was made from."""
    src = checkpoint_copy(tmp_path, "qwen2moe")
    weights = load_file(src / "model.safetensors")
    n_expert = json.loads((src / "config.json").read_text())["num_experts"]
    for bid in (0, 1):
        pre = f"model.layers.{bid}.mlp.experts"
        per = {w: np.stack([weights.pop(f"{pre}.{x}.{w}.weight") for x in range(n_expert)])
               for w in ("gate_proj", "up_proj", "down_proj")}
        weights[f"{pre}.gate_up_proj"] = np.concatenate([per["gate_proj"], per["up_proj"]], axis=1)
        weights[f"{pre}.down_proj"] = per["down_proj"]
    save_file(weights, str(src / "model.safetensors"))
    out = tmp_path / "fused.gguf"
    convert(src, out, outtype="f16", pre="qwen2")
    ref = reference("qwen2moe", "f16")
    ours = gguf_record(out)
    assert sorted(ours["tensors"]) == sorted(ref["tensors"])
    for name, want in ref["tensors"].items():
        got = ours["tensors"][name]
        assert (got["type"], got["shape"], got["sha256"]) == (want["type"], want["shape"], want["sha256"]), name


def test_qwen2moe_missing_expert_is_an_error(tmp_path):
    src = checkpoint_copy(tmp_path, "qwen2moe")
    weights = load_file(src / "model.safetensors")
    del weights["model.layers.1.mlp.experts.2.up_proj.weight"]
    save_file(weights, str(src / "model.safetensors"))
    with pytest.raises(BadInputError, match="layer 1 has 11 expert tensors, expected 12"):
        convert(src, tmp_path / "out.gguf", outtype="f16", pre="qwen2")
    assert not (tmp_path / "out.gguf").exists()


def test_baichuan_w_pack_split_and_permutation(tmp_path):
    """Independent of the record: attn_q/attn_k/attn_v are W_pack's thirds, q and k rows interleaved
    per head (row 2i of a head = rotate-half row i, row 2i+1 = row i + head_dim/2)."""
    src = checkpoint_copy(tmp_path, "baichuan")
    cfg = json.loads((src / "config.json").read_text())
    n_embd, n_head = cfg["hidden_size"], cfg["num_attention_heads"]
    head_dim = n_embd // n_head
    w_pack = load_file(src / "model.safetensors")["model.layers.3.self_attn.W_pack.weight"]
    out = tmp_path / "b.gguf"
    convert(src, out, outtype="f16")
    with GGUFReader(out) as r:
        got = {p: np.array(r.tensor_array(f"blk.3.attn_{p}.weight")) for p in "qkv"}
    q, k, v = w_pack[:n_embd], w_pack[n_embd:2 * n_embd], w_pack[2 * n_embd:]
    np.testing.assert_array_equal(got["v"], v)
    for name, part in (("q", q), ("k", k)):
        for h in range(n_head):
            rows = part[h * head_dim:(h + 1) * head_dim]
            mine = got[name][h * head_dim:(h + 1) * head_dim]
            np.testing.assert_array_equal(mine[0::2], rows[: head_dim // 2])
            np.testing.assert_array_equal(mine[1::2], rows[head_dim // 2:])


@pytest.mark.parametrize("name", ["gemma", "gemma2"])
def test_gemma_norms_are_stored_plus_one(tmp_path, name):
    src = checkpoint_copy(tmp_path, name)
    weights = load_file(src / "model.safetensors")
    out = tmp_path / "g.gguf"
    convert(src, out, outtype="f32")
    with GGUFReader(out) as r:
        np.testing.assert_array_equal(np.array(r.tensor_array("blk.1.attn_norm.weight")),
                                      weights["model.layers.1.input_layernorm.weight"] + np.float32(1))
        np.testing.assert_array_equal(np.array(r.tensor_array("output_norm.weight")),
                                      weights["model.norm.weight"] + np.float32(1))
        assert "output.weight" not in {t.name for t in r.tensors}  # tied: llama.cpp reuses token_embd


def test_baichuan_w_pack_of_the_wrong_shape_is_an_error(tmp_path):
    src = checkpoint_copy(tmp_path, "baichuan")
    weights = load_file(src / "model.safetensors")
    name = "model.layers.5.self_attn.W_pack.weight"
    weights[name] = weights[name][:-16]  # a GQA-style pack (k/v narrower than q) is not Baichuan's
    save_file(weights, str(src / "model.safetensors"))
    with pytest.raises(BadInputError, match=r"model.safetensors: 'model.layers.5.self_attn.W_pack.weight' has shape "
                                            r"\[80, 32\], expected \[96, 32\]"):
        convert(src, tmp_path / "out.gguf", outtype="f16")
    assert not (tmp_path / "out.gguf").exists()
