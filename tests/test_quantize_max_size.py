"""`llmcli quantize --max-size`: the most precise mix whose file fits, by llama-quantize's own sizes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from llmcli.cli.format import parse_size
from llmcli.quants.mixes import MIXES_BY_PRECISION

DATA = Path(__file__).parent / "data"
QWEN2 = DATA / "gguf_ref" / "qwen2-f16.gguf"
REFS = json.loads((DATA / "quantize_ref" / "files.json").read_text())


def _llama_quantize_sizes() -> dict[str, int]:
    """File sizes llama-quantize wrote for qwen2-f16.gguf, per type (no options)."""
    assert hashlib.sha256(QWEN2.read_bytes()).hexdigest() == REFS["models"]["qwen2"]["input_sha256"]
    return {r["type"]: r["file_bytes"] for r in REFS["runs"]
            if r["model"] == "qwen2" and not r["options"] and "file_bytes" in r}


def _expected(sizes: dict[str, int], limit: int) -> str | None:
    return next((name for name in MIXES_BY_PRECISION if name in sizes and sizes[name] <= limit), None)


def test_every_mix_has_a_llama_quantize_size():
    sizes = _llama_quantize_sizes()
    assert set(MIXES_BY_PRECISION) - {"Q2_K_S"} <= set(sizes)


@pytest.mark.parametrize("limit_at", sorted(set(_llama_quantize_sizes().values())))
@pytest.mark.parametrize("offset", [0, -1])
def test_choice_matches_llama_quantize_sizes(cli, limit_at, offset):
    sizes = _llama_quantize_sizes()
    limit = limit_at + offset
    expected = _expected(sizes, limit)
    res = cli("quantize", QWEN2, "--max-size", str(limit), "--dry-run", "--json")
    if expected is None:
        assert res.exit_code == 1 and "no quantization fits" in res.stderr
        return
    assert res.exit_code == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["type"] == expected
    assert info["totals"]["file_bytes_out"] == sizes[expected] <= limit
    assert all(info["size_choice"]["sizes"][name] == sizes[name] for name in info["size_choice"]["sizes"])


def test_writes_the_chosen_file(cli, tmp_path):
    sizes = _llama_quantize_sizes()
    out = tmp_path / "fit.gguf"
    res = cli("quantize", QWEN2, out, "--max-size", f"{sizes['Q5_K_M'] / 1000:.3f}KB", "--json")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["type"] == "Q5_K_M"
    run = next(r for r in REFS["runs"] if r["model"] == "qwen2" and r["type"] == "Q5_K_M" and not r["options"])
    assert hashlib.sha256(out.read_bytes()).hexdigest() == run["file_sha256"]


@pytest.mark.parametrize("args", [["--type", "Q4_0", "--max-size", "1GB"], []])
def test_type_or_size_not_both(cli, args):
    res = cli("quantize", QWEN2, "--dry-run", *args)
    assert res.exit_code == 2 and "--max-size" in res.stderr


def test_bad_size_is_a_usage_error(cli):
    res = cli("quantize", QWEN2, "--dry-run", "--max-size", "4.5XB")
    assert res.exit_code == 2 and "4.5XB" in res.stderr


@pytest.mark.parametrize("text, expected", [("4.5GB", 4_500_000_000), ("4500MB", 4_500_000_000),
                                            ("3.8GiB", int(3.8 * 2**30)), ("123456", 123456), ("2 kib", 2048)])
def test_parse_size(text, expected):
    assert parse_size(text, "--max-size") == expected


@pytest.mark.parametrize("text", ["", "GB", "-1GB", "0", "1.2.3G", "nan"])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError, match="--max-size"):
        parse_size(text, "--max-size")


def test_convert_max_size_is_convert_then_quantize(cli, tmp_path):
    """convert --max-size picks from the f16 conversion's plans: the same file llama-quantize
    wrote from llama.cpp's own f16 conversion."""
    sizes = _llama_quantize_sizes()
    out = tmp_path / "qwen2-fit.gguf"
    res = cli("convert", DATA / "hf" / "qwen2", "-o", out, "--pre", "qwen2", "--max-size", str(sizes["Q5_0"]), "--json")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["outtype"] == _expected(sizes, sizes["Q5_0"])
    run = next(r for r in REFS["runs"] if r["model"] == "qwen2" and r["type"] == "Q5_0" and not r["options"])
    assert hashlib.sha256(out.read_bytes()).hexdigest() == run["file_sha256"]


def test_convert_outtype_or_size_not_both(cli, tmp_path):
    res = cli("convert", DATA / "hf" / "qwen2", "-o", tmp_path / "x.gguf", "--outtype", "f16", "--max-size", "1GB")
    assert res.exit_code == 2 and "--max-size" in res.stderr
    assert not (tmp_path / "x.gguf").exists()
