"""`llmcli inspect`: tables, JSON and errors."""

from __future__ import annotations

import json


def test_inspect_json(cli, data_dir):
    res = cli("inspect", data_dir / "gguf_ref" / "qwen2-f16.gguf", "--json")
    assert res.exit_code == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["architecture"] == "qwen2" and info["file_type"] == "MOSTLY_F16"
    assert info["n_tensors"] == len(info["tensors"]) == 26
    tokens = info["metadata"]["tokenizer.ggml.tokens"]["value"]
    assert tokens["length"] == 1000 and len(tokens["head"]) == 8
    assert info["n_parameters"] == sum(
        __import__("math").prod(t["shape"]) for t in info["tensors"])


def test_inspect_table(cli, data_dir):
    res = cli("inspect", data_dir / "gguf_ref" / "llama-f16.gguf", "--tensors")
    assert res.exit_code == 0
    assert "token_embd.weight" in res.stdout and "llama" in res.stdout and "bits per weight" in res.stdout


def test_inspect_errors(cli, tmp_path):
    res = cli("inspect", tmp_path / "missing.gguf")
    assert res.exit_code == 1 and "missing.gguf" in res.stderr and "error" in res.stderr
    bad = tmp_path / "bad.gguf"
    bad.write_text("hello, this is not a model at all")
    res = cli("inspect", bad)
    assert res.exit_code == 1 and "not a GGUF file" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
