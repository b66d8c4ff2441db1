"""`llmcli convert DIR --outtype Q4_K_M`: HF checkpoint straight to a quantized GGUF in one pass,
byte-equal to `convert --outtype f16` + `quantize` - and so to llama.cpp's convert + llama-quantize
(file sha256 from tests/data/quantize_ref/files.json)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
FILES = json.loads((DATA / "quantize_ref" / "files.json").read_text())
PRE = {"qwen2": "qwen2"}


def _llama_sha(model: str, type_name: str) -> str:
    return next(r["file_sha256"] for r in FILES["runs"]
                if r["model"] == model and r["type"] == type_name and not r["options"] and "input" not in r)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("model,type_name", [("mixtral", "Q4_K_M"), ("qwen2", "Q3_K_L"), ("gemma3", "Q5_K_S"),
                                             ("gemma3", "Q4_0"), ("mixtral", "Q6_K")])
def test_convert_outtype_quantized_equals_llama_cpp(cli, tmp_path, model, type_name):
    out = tmp_path / "out.gguf"
    args = ["convert", DATA / "hf" / model, "-o", out, "--outtype", type_name.lower(), "--json"]
    if model in PRE:
        args += ["--pre", PRE[model]]
    res = cli(*args)
    assert res.exit_code == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["outtype"] == type_name and summary["bytes"] == out.stat().st_size
    assert _sha256(out) == _llama_sha(model, type_name)


def test_convert_outtype_matches_convert_then_quantize(cli, tmp_path):
    """The same on a model without a llama-quantize record: Llama-3-style BPE stored in bf16."""
    f16, direct, two_step = tmp_path / "f16.gguf", tmp_path / "direct.gguf", tmp_path / "two.gguf"
    hf = DATA / "hf" / "llama_bf16"
    assert cli("convert", hf, "-o", f16, "--outtype", "f16", "--pre", "llama-bpe").exit_code == 0
    assert cli("quantize", f16, two_step, "--type", "Q2_K").exit_code == 0
    res = cli("convert", hf, "-o", direct, "--outtype", "Q2_K", "--pre", "llama-bpe")
    assert res.exit_code == 0, res.stderr
    assert direct.read_bytes() == two_step.read_bytes()


def test_convert_outtype_errors(cli, tmp_path):
    out = tmp_path / "out.gguf"
    res = cli("convert", DATA / "hf" / "mixtral", "-o", out, "--outtype", "q9_k")
    assert res.exit_code == 1 and "unknown --outtype 'q9_k'" in " ".join(res.stderr.split())
    assert "Q4_K_M" in res.stderr and "f16" in res.stderr
    res = cli("convert", DATA / "hf" / "mixtral", "-o", out, "--outtype", "Q2_K_S")
    assert res.exit_code == 1 and "importance matrix" in " ".join(res.stderr.split())
    out.write_bytes(b"keep")
    res = cli("convert", DATA / "hf" / "mixtral", "-o", out, "--outtype", "Q4_K_M")
    assert res.exit_code == 1 and "already exists" in res.stderr and out.read_bytes() == b"keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.gguf"]


def test_quantize_does_not_import_convert():
    """Imports point down: convert/quantized.py builds on quantize, quantize never reaches up into convert."""
    import ast
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    tree = ast.parse((root / "llmcli" / "quantize.py").read_text())
    modules = [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    modules += [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    assert not [m for m in modules if m.startswith(("convert", "llmcli.convert"))], modules
    code = "import sys, llmcli.quantize; print(sorted(m for m in sys.modules if m.startswith('llmcli.convert')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
