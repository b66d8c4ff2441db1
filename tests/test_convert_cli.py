"""`llmcli convert` end to end: default output name, --json, --force, and every bad-input case
(one red line naming the file, exit 1, nothing left behind)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"


def ref_sha(name: str, outtype: str) -> str:
    return json.loads((DATA / "gguf_ref" / f"{name}-{outtype}.json").read_text())["file_sha256"]


def copy_model(tmp_path: Path, name: str) -> Path:
    dst = tmp_path / "models" / name
    shutil.copytree(DATA / "hf" / name, dst, ignore=shutil.ignore_patterns("reference"))
    return dst


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.suffix in (".gguf", ".tmp") or p.name.startswith("."))


def test_default_output_name_and_summary(cli, tmp_path, monkeypatch):
    src = copy_model(tmp_path, "llama")
    monkeypatch.chdir(tmp_path)
    res = cli("convert", src)
    assert res.exit_code == 0, res.stderr
    out = tmp_path / "llama-f16.gguf"
    assert hashlib.sha256(out.read_bytes()).hexdigest() == ref_sha("llama", "f16")
    assert "llama-f16.gguf" in res.stdout and "21 tensors" in res.stdout


def test_json_summary(cli, tmp_path):
    out = tmp_path / "q.gguf"
    res = cli("convert", copy_model(tmp_path, "qwen2"), "-o", out, "--outtype", "f32", "--pre", "qwen2", "--json")
    assert res.exit_code == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["output"] == str(out)
    assert info["architecture"] == "qwen2" and info["hf_architecture"] == "Qwen2ForCausalLM"
    assert info["outtype"] == "f32" and info["file_type"] == 0
    ref = json.loads((DATA / "gguf_ref" / "qwen2-f32.json").read_text())
    assert info["tensors"] == len(ref["tensors"]) == 26
    assert info["bytes"] == out.stat().st_size == ref["file_size"]
    assert info["type_counts"] == {"F32": 26}
    n_params = sum(int(__import__("math").prod(t["shape"])) for t in ref["tensors"].values())
    assert info["parameters"] == n_params and info["seconds"] >= 0
    assert hashlib.sha256(out.read_bytes()).hexdigest() == ref_sha("qwen2", "f32")


def test_existing_output_needs_force(cli, tmp_path):
    src = copy_model(tmp_path, "llama")
    out = tmp_path / "out.gguf"
    out.write_bytes(b"keep me")
    res = cli("convert", src, "-o", out)
    assert res.exit_code == 1
    assert str(out) in res.stderr and "--force" in res.stderr
    assert out.read_bytes() == b"keep me"
    res = cli("convert", src, "-o", out, "--force")
    assert res.exit_code == 0, res.stderr
    assert hashlib.sha256(out.read_bytes()).hexdigest() == ref_sha("llama", "f16")


def test_readme_first_command(cli, tmp_path, monkeypatch):
    """README: `llmcli convert tests/data/hf/llama -o llama-f16.gguf --force && llmcli inspect llama-f16.gguf`."""
    monkeypatch.chdir(tmp_path)
    for _ in range(2):  # the second run replaces the file thanks to --force
        res = cli("convert", DATA / "hf" / "llama", "-o", "llama-f16.gguf", "--force")
        assert res.exit_code == 0, res.stderr
    res = cli("inspect", "llama-f16.gguf")
    assert res.exit_code == 0 and "MOSTLY_F16" in res.stdout


# -- bad input --------------------------------------------------------------------------------------


def _edit_config(d: Path, **changes) -> None:
    cfg = json.loads((d / "config.json").read_text())
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (d / "config.json").write_text(json.dumps(cfg))


def _no_config(d: Path) -> str:
    (d / "config.json").unlink()
    return "config.json"


def _unknown_arch(d: Path) -> str:
    _edit_config(d, architectures=["FancyNewForCausalLM"])
    return "FancyNewForCausalLM"


def _missing_key(d: Path) -> str:
    _edit_config(d, num_hidden_layers=None)
    return "num_hidden_layers"


def _missing_shard(d: Path) -> str:
    from llmcli.convert.checkpoint import read_safetensors_header

    names = [t.name for t in read_safetensors_header(d / "model.safetensors")]
    (d / "model.safetensors").rename(d / "model-00001-of-00002.safetensors")
    weight_map = {n: f"model-0000{1 + i % 2}-of-00002.safetensors" for i, n in enumerate(names)}
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return "model-00002-of-00002.safetensors"


def _missing_shard_no_index(d: Path) -> str:
    (d / "model.safetensors").rename(d / "model-00001-of-00002.safetensors")
    return "model-00002-of-00002.safetensors"


def _truncated_shard(d: Path) -> str:
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])
    return "model.safetensors"


def _unknown_tensor(d: Path) -> str:
    import numpy as np
    from safetensors.numpy import save_file

    from llmcli.convert.checkpoint import read_safetensors_header

    tensors = {t.name: t.load() for t in read_safetensors_header(d / "model.safetensors")}
    tensors["model.layers.0.mlp.mystery_proj.weight"] = np.zeros((4, 64), dtype=np.float32)
    save_file(tensors, str(d / "model.safetensors"))
    return "model.layers.0.mlp.mystery_proj.weight"


def _shape_mismatch(d: Path) -> str:
    _edit_config(d, intermediate_size=96)
    return "shape mismatch"


def _no_tokenizer(d: Path) -> str:
    for f in ("tokenizer.model", "tokenizer.json"):
        (d / f).unlink(missing_ok=True)
    return "no tokenizer files"


def _bad_json_config(d: Path) -> str:
    (d / "config.json").write_text("{not json")
    return "config.json"


BAD_INPUTS = {
    "no_config": ("llama", _no_config),
    "unknown_arch": ("llama", _unknown_arch),
    "missing_key": ("llama", _missing_key),
    "missing_shard": ("llama", _missing_shard),
    "missing_shard_no_index": ("llama", _missing_shard_no_index),
    "truncated_shard": ("llama", _truncated_shard),
    "unknown_tensor": ("llama", _unknown_tensor),
    "shape_mismatch": ("mistral", _shape_mismatch),
    "no_tokenizer": ("llama", _no_tokenizer),
    "bad_json_config": ("gemma3", _bad_json_config),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_one_line_error(cli, tmp_path, case):
    name, breaker = BAD_INPUTS[case]
    src = copy_model(tmp_path, name)
    expected = breaker(src)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    res = cli("convert", src, "-o", out_dir / "x.gguf")
    assert res.exit_code == 1, res.stdout
    line = " ".join(res.stderr.split())
    assert line.startswith("error:") and "Traceback" not in res.stderr
    assert expected in line
    assert str(src) in line  # names the directory or a file in it
    assert leftovers(out_dir) == []
    if case == "unknown_arch":
        assert "LlamaForCausalLM" in line and "Gemma3ForCausalLM" in line and "Phi3ForCausalLM" in line


def test_unknown_bpe_pre_tokenizer_says_how_to_choose(cli, tmp_path):
    src = copy_model(tmp_path, "llama_bf16")
    res = cli("convert", src, "-o", tmp_path / "x.gguf")
    assert res.exit_code == 1
    line = " ".join(res.stderr.split())
    assert "tokenizer.json" in line and "--pre NAME" in line and "llama-bpe" in line and "qwen2" in line
    assert not (tmp_path / "x.gguf").exists()


def test_unknown_pre_name_is_refused(cli, tmp_path):
    res = cli("convert", copy_model(tmp_path, "qwen2"), "-o", tmp_path / "x.gguf", "--pre", "no-such-pre")
    assert res.exit_code == 1 and "no-such-pre" in res.stderr
    assert not (tmp_path / "x.gguf").exists()


def test_unknown_outtype_is_refused(cli, tmp_path):
    res = cli("convert", copy_model(tmp_path, "llama"), "-o", tmp_path / "x.gguf", "--outtype", "q9_z")
    assert res.exit_code == 1 and "q9_z" in res.stderr.lower()
