"""`llmcli perplexity` end to end: llama.cpp's lines, --json, the KL-divergence base file written and
read back, and bad input (one red line, exit 1; usage errors exit 2)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data" / "perplexity"
TEXT = DATA / "kjv-genesis-1-3.txt"
TINY = Path(__file__).parent / "data" / "gguf_ref" / "llama-f16.gguf"
OTHER_VOCAB = Path(__file__).resolve().parents[2] / "shared" / "reference" / "gguf" / "phi3-f16.gguf"
SMALL = ["-m", TINY, "-f", TEXT, "-c", "64", "--chunks", "4", "-t", "1"]


def _json(cli, *args) -> dict:
    res = cli("perplexity", *args, "--json")
    assert res.exit_code == 0, res.stderr
    return json.loads(res.stdout)


def test_lines_are_llama_cpps_and_json_has_every_figure(cli):
    res = cli("perplexity", *SMALL)
    assert res.exit_code == 0, res.stderr
    chunk_line, final_line = res.stdout.splitlines()
    assert re.fullmatch(r"(\[\d\]\d+\.\d{4},){4}", chunk_line)
    assert re.fullmatch(r"Final estimate: PPL = \d+\.\d{4} \+/- \d+\.\d{5}", final_line)
    assert "4 chunks of 64" in res.stderr and "tokens/s" in res.stderr

    out = _json(cli, *SMALL)
    assert {"model", "text_file", "activations", "n_ctx", "n_batch", "n_seq", "n_chunk", "n_text_tokens", "n_scored",
            "chunk_ppl", "ppl", "ppl_error", "seconds", "compile_seconds", "tokens_per_second",
            "base_file"} <= set(out)
    assert out["n_ctx"] == 64 and out["n_chunk"] == 4 and out["n_seq"] == 4 and out["n_scored"] == 4 * 31
    assert out["n_batch"] == 2048 and out["activations"] == "int8-gemm" and out["base_file"] is None
    assert chunk_line == "".join(f"[{i + 1}]{p:.4f}," for i, p in enumerate(out["chunk_ppl"]))
    assert final_line == f"Final estimate: PPL = {out['ppl']:.4f} +/- {out['ppl_error']:.5f}"
    assert out["tokens_per_second"] > 0


def test_kl_divergence_base_written_then_compared(cli, tmp_path):
    base = tmp_path / "base.kld"
    written = _json(cli, *SMALL, "--kl-divergence-base", base)
    assert written["base_file"] == str(base) and base.stat().st_size == (DATA / "llama-f32.c64.kld").stat().st_size
    again = cli("perplexity", *SMALL, "--kl-divergence-base", base)
    assert again.exit_code == 1 and "already exists (use --force to overwrite)" in again.stderr
    assert cli("perplexity", *SMALL, "--kl-divergence-base", base, "--force").exit_code == 0

    res = cli("perplexity", "-m", TINY, "--kl-divergence-base", base, "--kl-divergence", "-t", "1")
    assert res.exit_code == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].split() == ["chunk", "PPL", "ln(PPL(Q)/PPL(base))", "KL", "Divergence", "Δp", "RMS", "Same",
                                "top", "p"]
    assert all(re.match(r"^ {3}\d {4} *\d+\.\d{4} ± ", line) for line in lines[1:5])
    for heading in ("====== Perplexity statistics ======", "====== KL divergence statistics ======",
                    "====== Token probability statistics ======"):
        assert heading in lines
    # the model against its own log-probabilities: zero to the printed digits, of either sign (the
    # stored base is rounded to 16 bits; llama.cpp prints "-0.000000" the same way)
    assert any(re.fullmatch(r"Mean    KLD:  [ -]0\.000000 ±   0\.000000", line) for line in lines)
    assert "Same top p: 100.000 ± 0.000 %" in lines
    assert any(line.startswith(" 5.0%   KLD: ") for line in lines)
    assert any(line.startswith("Median  Δp: ") for line in lines)

    out = _json(cli, "-m", TINY, "--kl-divergence-base", base, "--kl-divergence", "-t", "1")
    assert out["n_chunk"] == 4 and len(out["chunks"]) == 4 and out["n_scored"] == 124
    stats = out["statistics"]
    assert stats["perplexity"]["ppl"] == pytest.approx(written["ppl"], rel=1e-4)
    assert stats["perplexity"]["ppl_base"] == pytest.approx(written["ppl"], rel=1e-5)  # 16-bit log-probs
    assert set(stats["kl_divergence"]) == {"mean", "mean_unc", "maximum", "99.9%", "99.0%", "95.0%", "90.0%",
                                           "median", "10.0%", "5.0%", "1.0%", "0.1%", "minimum"}
    assert stats["token_probability"]["same_top"] == 1.0

    few = _json(cli, "-m", TINY, "--kl-divergence-base", base, "--kl-divergence", "--chunks", "2", "-t", "1")
    assert few["n_chunk"] == 2 and few["statistics"] is None  # 62 tokens: under llama.cpp's 100


def _error(res, code: int = 1) -> str:
    assert res.exit_code == code, (res.exit_code, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
    errors = [line for line in res.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, res.stderr
    return errors[0]


@pytest.mark.parametrize("args, message", [
    (["-f", "missing.txt"], "missing.txt: cannot read the text file"),
    (["-f", TEXT, "-c", "8192"], "a context of 8192 needs at least 16384"),
    (["-f", TEXT, "-c", "2"], "-c/--ctx-size must be at least 4"),
    (["-f", TEXT, "--chunks", "0"], "--chunks must be -1 (all) or at least 1"),
    (["-f", TEXT, "-b", "0"], "-b/--batch-size must be positive"),
    (["-f", TEXT, "--activations", "half"], "--activations must be one of int8-gemm, float, int8"),
    ([], "no text: give the file to measure with -f FILE"),
    (["--kl-divergence"], "--kl-divergence needs --kl-divergence-base FILE"),
    (["--kl-divergence", "--kl-divergence-base", "missing.kld"], "missing.kld: cannot read the KL-divergence base"),
    (["--kl-divergence", "--kl-divergence-base", TEXT], "not a KL-divergence base file"),
    (["--kl-divergence", "--kl-divergence-base", DATA / "llama-f32.c64.kld", "-c", "32"],
     "computed with a context of 64; -c 32 is smaller"),
])
def test_bad_input_is_one_red_line(cli, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    line = _error(cli("perplexity", "-m", TINY, *args))
    assert line.startswith("error: ") and message in line


def test_bad_files_are_one_red_line(cli, tmp_path):
    truncated = tmp_path / "truncated.kld"
    truncated.write_bytes((DATA / "llama-f32.c64.kld").read_bytes()[:-100])
    assert "truncated" in _error(cli("perplexity", "-m", TINY, "--kl-divergence", "--kl-divergence-base", truncated))
    line = _error(cli("perplexity", "-m", OTHER_VOCAB, "--kl-divergence", "--kl-divergence-base",
                      DATA / "llama-f32.c64.kld"))
    assert "the model's vocabulary has 1024" in line and "same vocabulary" in line
    assert "missing.gguf" in _error(cli("perplexity", "-m", tmp_path / "missing.gguf", "-f", TEXT))
    assert "is a directory" in _error(cli("perplexity", *SMALL, "--kl-divergence-base", tmp_path))


def test_usage_errors_exit_2(cli):
    assert cli("perplexity", *SMALL, "--bogus").exit_code == 2
    assert cli("perplexity", "-m", TINY, "-f", TEXT, "-c", "many").exit_code == 2


def test_undefined_figures_print_as_c_does_and_are_null_in_json():
    from llmcli.cli.perplexity_cmd import _c_floats, _json_figures, _kld_chunk_line

    nan = float("nan")
    row = {"ppl": 1453.9336, "ppl_unc": 250.7422, "ln_ppl_ratio": 1e-5, "ln_ppl_ratio_unc": nan, "kld": -1e-7,
           "kld_unc": 0.0, "p_diff_rms": 0.0, "p_diff_rms_unc": nan, "same_top": 1.0, "same_top_unc": 0.0}
    assert _kld_chunk_line(1, row) == ("   1    1453.9336 ±  250.7422       0.00001 ±       -nan      -0.00000 ±"
                                       "    0.00000     0.000 ±   -nan %    100.000 ±  0.000 %")
    assert f"{_c_floats({'x': 2.5})['x']:6.3f}" == " 2.500"
    assert _json_figures({"a": [nan, 1.0], "b": {"c": float("inf")}}) == {"a": [None, 1.0], "b": {"c": None}}
