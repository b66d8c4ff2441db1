"""`llmcli quantize`: report, dry run, options, and one-line errors that leave nothing behind."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from gguf import GGUFReader as OracleReader  # gguf-py: an independent reader + dequantizer
from gguf.quants import dequantize as oracle_dequantize

DATA = Path(__file__).parent / "data"
KQ = DATA / "kq" / "kq-f16.gguf"


def _record(name: str) -> dict:
    return json.loads((DATA / "kq" / "types" / f"{name}.json").read_text())


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def test_dry_run_json_is_the_plan_and_writes_nothing(cli, tmp_path):
    out = tmp_path / "never.gguf"
    res = cli("quantize", KQ, out, "--type", "Q4_K_M", "--dry-run", "--json")
    assert res.exit_code == 0, res.stderr
    info = json.loads(res.stdout)
    record = _record("Q4_K_M")
    assert not out.exists() and not list(tmp_path.iterdir())
    assert info["dry_run"] and info["type"] == "Q4_K_M" and info["file_type"] == 15
    assert [t["name"] for t in info["tensors"]] == list(record["tensors"])
    for t in info["tensors"]:
        expected = record["tensors"][t["name"]]
        assert (t["to_type"], t["shape"], t["bytes"]) == (expected["type"], expected["shape"], expected["n_bytes"])
        assert "rmse" not in t
    assert info["totals"]["file_bytes_out"] == record["file_bytes"]
    # llama-quantize's own summary line: "quant size = 3.95 MiB (4.87 BPW)"
    assert f"{info['totals']['tensor_bytes_out'] / 2**20:.2f} MiB" in record["quantize_summary"][2]
    assert f"({info['totals']['bits_per_weight_out']:.2f} BPW)" in record["quantize_summary"][2]


def test_dry_run_needs_no_output_argument(cli):
    res = cli("quantize", KQ, "--type", "q6_k", "--dry-run")
    assert res.exit_code == 0, res.stderr
    assert "blk.7.ffn_down.weight" in res.stdout and "would be" in res.stdout


def test_quantize_json_report_and_rmse_against_gguf_py(cli, tmp_path):
    out = tmp_path / "kq-q8_0.gguf"
    res = cli("quantize", KQ, out, "--type", "Q8_0", "--json", "--threads", "1")
    assert res.exit_code == 0, res.stderr
    info = json.loads(res.stdout)
    assert hashlib.sha256(out.read_bytes()).hexdigest() == _record("Q8_0")["file_sha256"]
    assert info["totals"]["file_bytes_out"] == out.stat().st_size and info["threads"] == 1
    src, dst = OracleReader(KQ), OracleReader(out)
    src_t = {t.name: t for t in src.tensors}
    checked = 0
    for t in dst.tensors:
        entry = next(e for e in info["tensors"] if e["name"] == t.name)
        if entry["from_type"] == entry["to_type"]:
            assert "rmse" not in entry
            continue
        x = np.asarray(src_t[t.name].data, dtype=np.float32).reshape(-1)
        y = oracle_dequantize(t.data, t.tensor_type).astype(np.float32).reshape(-1)
        expected = np.sqrt(np.sum((y - x).astype(np.float64) ** 2) / np.sum(x.astype(np.float64) ** 2))
        assert abs(entry["rmse"] - expected) <= 1e-3 * expected, t.name
        checked += 1
    assert checked == 58


def test_human_report(cli, tmp_path):
    res = cli("quantize", KQ, tmp_path / "out.gguf", "--type", "Q4_0")
    assert res.exit_code == 0, res.stderr
    assert "F16 -> Q4_0" in res.stdout and "Q6_K" in res.stdout and "bpw" in res.stdout


def test_options_reach_the_plan(cli, tmp_path):
    res = cli("quantize", KQ, "--type", "Q4_K_S", "--dry-run", "--json", "--output-tensor-type", "q8_0",
              "--token-embedding-type", "F16", "--tensor-type", "ffn_up=q5_0", "--tensor-type", "ffn_.*=q5_1")
    assert res.exit_code == 0, res.stderr
    types = {t["name"]: t["to_type"] for t in json.loads(res.stdout)["tensors"]}
    assert types["output.weight"] == "Q8_0" and types["token_embd.weight"] == "F16"
    assert types["blk.3.ffn_up.weight"] == "Q5_0" and types["blk.3.ffn_gate.weight"] == "Q5_1"
    res = cli("quantize", KQ, "--type", "Q4_K_M", "--dry-run", "--json", "--leave-output-tensor")
    assert json.loads(res.stdout)["tensors"][0] == {**json.loads(res.stdout)["tensors"][0],
                                                    "name": "output.weight", "to_type": "F16"}
    res = cli("quantize", KQ, "--type", "Q4_K_M", "--dry-run", "--json", "--pure")
    types = {t["name"]: t["to_type"] for t in json.loads(res.stdout)["tensors"]}
    assert types == _record("Q4_K-pure")["tensor_types"]


def _fails(res, *fragments):
    assert res.exit_code == 1, (res.stdout, res.stderr)
    lines = [line for line in res.stderr.strip().splitlines() if line.strip()]
    assert lines and lines[0].startswith("error:"), res.stderr
    text = " ".join(res.stderr.split())
    for fragment in fragments:
        assert fragment in text, text


def test_errors_are_one_line_and_leave_nothing(cli, tmp_path):
    out = tmp_path / "out.gguf"
    _fails(cli("quantize", KQ, out, "--type", "Q9_9"), "unknown quantization type", "Q4_K_M")
    _fails(cli("quantize", KQ, out, "--type", "Q2_K_S"), "importance matrix")
    _fails(cli("quantize", KQ, out, "--type", "IQ2_XXS"), "needs an importance matrix", "--imatrix")
    _fails(cli("quantize", KQ, "--type", "Q4_0"), "OUTPUT")
    _fails(cli("quantize", KQ, out, "--type", "Q4_0", "--tensor-type", "attn_v"), "REGEX=TYPE")
    _fails(cli("quantize", KQ, out, "--type", "Q4_0", "--output-tensor-type", "Q7_0"), "unknown ggml type")
    _fails(cli("quantize", KQ, out, "--type", "Q4_0", "--threads", "0"), "--threads")
    _fails(cli("quantize", tmp_path / "missing.gguf", out, "--type", "Q4_0"), "missing.gguf")
    assert not out.exists() and _leftovers(tmp_path) == []


def test_existing_output_needs_force(cli, tmp_path):
    out = tmp_path / "out.gguf"
    out.write_bytes(b"precious")
    _fails(cli("quantize", KQ, out, "--type", "Q8_0"), "already exists", "--force")
    assert out.read_bytes() == b"precious"
    assert cli("quantize", KQ, out, "--type", "Q8_0", "--force").exit_code == 0
    assert hashlib.sha256(out.read_bytes()).hexdigest() == _record("Q8_0")["file_sha256"]
    _fails(cli("quantize", out, out, "--type", "Q8_0", "--force"), "input file")


def test_corrupt_input(cli, tmp_path):
    bad = tmp_path / "truncated.gguf"
    bad.write_bytes(KQ.read_bytes()[: 3_000_000])
    out = tmp_path / "out.gguf"
    _fails(cli("quantize", bad, out, "--type", "Q4_0"), "truncated.gguf")
    assert not out.exists() and _leftovers(tmp_path) == []


def test_nan_weights_are_refused(cli, tmp_path):
    from llmcli.gguf import GGUFReader, GGUFWriter

    src = tmp_path / "nan.gguf"
    with GGUFReader(KQ) as reader:
        w = GGUFWriter(src)
        for key, mv in reader.metadata.items():
            w.add(key, mv)
        w.add_tensor_infos_from(reader.tensors)
        with w.open():
            for t, data in reader.iter_tensors():
                if t.name == "blk.2.attn_q.weight":
                    data = data.copy()
                    data.view(np.float16)[5, 7] = np.nan
                w.write_tensor_data(t.name, data)
    out = tmp_path / "out.gguf"
    _fails(cli("quantize", src, out, "--type", "Q4_0"), "blk.2.attn_q.weight", "NaN")
    assert not out.exists() and _leftovers(tmp_path) == []


def test_requantizing_needs_the_flag(cli, tmp_path):
    q8 = tmp_path / "q8.gguf"
    assert cli("quantize", KQ, q8, "--type", "Q8_0").exit_code == 0
    out = tmp_path / "q4.gguf"
    _fails(cli("quantize", q8, out, "--type", "Q4_0"), "already quantized", "--allow-requantize")
    assert not out.exists()
    # llama-quantize's --dry-run shows the plan anyway; we add a warning
    res = cli("quantize", q8, "--type", "Q4_0", "--dry-run", "--json")
    assert res.exit_code == 0 and "--allow-requantize" in json.loads(res.stdout)["warnings"][0]
    res = cli("quantize", q8, out, "--type", "Q4_0", "--allow-requantize", "--json")
    assert res.exit_code == 0, res.stderr
    tensors = {t["name"]: t for t in json.loads(res.stdout)["tensors"]}
    assert tensors["blk.0.attn_q.weight"]["from_type"] == "Q8_0"
    assert tensors["blk.0.attn_q.weight"]["to_type"] == "Q4_0"
    assert tensors["output.weight"]["to_type"] == "Q6_K" and tensors["output.weight"]["rmse"] > 0
    # a tensor whose type does not change is copied, so Q8_0 -> Q8_0 needs no flag and is the same file
    same = tmp_path / "q8-again.gguf"
    assert cli("quantize", q8, same, "--type", "Q8_0").exit_code == 0
    assert same.read_bytes() == q8.read_bytes()
