"""`llmcli bench` plumbing that needs no model: test expansion, output formats, the --compare gate."""

from __future__ import annotations

import csv
import io
import json

import pytest

from llmcli.bench.compare import compare, has_regression
from llmcli.bench.report import load_results, render
from llmcli.bench.results import ALL_FIELDS, BenchResult, ModelInfo
from llmcli.bench.spec import BenchTest, expand, parse_int_list, parse_pg
from llmcli.errors import BadInputError


def test_expansion_covers_every_combination_in_order():
    tests = expand(["a.gguf", "b.gguf"], [512, 64], [128], [(512, 128)], [1, 2], [256], None)
    assert len(tests) == 2 * 2 * 1 * 4
    first = tests[:4]
    assert [t.name for t in first] == ["pp512", "pp64", "tg128", "pp512+tg128"]
    assert {(t.model, t.n_threads) for t in tests} == {("a.gguf", 1), ("a.gguf", 2), ("b.gguf", 1), ("b.gguf", 2)}
    assert first[3].n_ctx == 640


def test_zero_disables_a_test_kind_and_lists_parse():
    assert [t.name for t in expand(["m"], [0], [16], [], [1], [512], None)] == ["tg16"]
    assert parse_int_list("1, 2,4", "-t", minimum=1) == [1, 2, 4]
    assert parse_pg("512,128") == (512, 128)


@pytest.mark.parametrize("call, message", [
    (lambda: parse_int_list("1,x", "-t"), "not an integer"),
    (lambda: parse_int_list("0", "-t", minimum=1), "below the minimum"),
    (lambda: parse_pg("512"), "PROMPT,GEN"),
    (lambda: expand(["m"], [0], [0], [], [1], [512], None), "nothing to measure"),
    (lambda: expand(["m"], [512], [0], [], [1], [512], 256), "--ctx-size"),
])
def test_bad_specs(call, message):
    with pytest.raises(BadInputError, match=message):
        call()


def _result(n_prompt=512, n_gen=0, threads=1, samples=(1_000_000_000, 1_100_000_000), model="m.gguf"):
    test = BenchTest(model, n_prompt, n_gen, threads, 512, n_prompt + n_gen)
    info = ModelInfo(model, "gemma3", "gemma3 270M Q4_K - Medium", 253_000_000, 268_000_000, "MOSTLY_Q4_K_M",
                     {"Q4_K": 27, "F32": 109})
    return BenchResult(test, info, list(samples), "2026-11-22T01:00:00Z", 400_000_000,
                       {"type_k": "f16", "type_v": "f16", "n_ctx": 512, "n_seq": 1, "bytes_k": 4_500_000,
                        "bytes_v": 4_500_000, "bytes_per_sequence": 9_000_000, "bytes": 9_000_000}, 1.5, True,
                       {"git_commit": "abc123", "cpu_info": "Test CPU"})


def test_statistics_use_llama_bench_definitions():
    row = _result().to_dict()
    assert row["samples_ts"] == pytest.approx([512.0, 512 / 1.1])
    assert row["avg_ts"] == pytest.approx((512 + 512 / 1.1) / 2)
    assert row["stddev_ts"] == pytest.approx(abs(512 - 512 / 1.1) / 2**0.5)
    assert row["avg_ns"] == 1_050_000_000 and row["test"] == "pp512"


@pytest.mark.parametrize("fmt", ["json", "jsonl", "csv", "md"])
def test_every_format_parses_and_carries_every_field(fmt):
    rows = [_result().to_dict(), _result(0, 128, 2).to_dict()]
    text = render(rows, fmt)
    if fmt == "json":
        parsed = json.loads(text)
    elif fmt == "jsonl":
        parsed = [json.loads(line) for line in text.splitlines()]
    elif fmt == "csv":
        parsed = list(csv.DictReader(io.StringIO(text)))
        assert json.loads(parsed[0]["samples_ns"]) == rows[0]["samples_ns"]
    else:
        lines = text.strip().splitlines()
        assert lines[0].startswith("| model") and "t/s" in lines[0] and len(lines) == 4
        assert "pp512" in lines[2] and "tg128" in lines[3] and "±" in lines[2]
        return
    assert len(parsed) == 2
    for row in parsed:
        assert set(ALL_FIELDS) <= set(row)
    if fmt != "csv":  # what --compare reads back
        assert load_results(text, "x") == parsed


def _rows(ts_by_test):
    out = []
    for (n_prompt, n_gen), ts in ts_by_test.items():
        row = _result(n_prompt, n_gen).to_dict()
        row["avg_ts"] = ts
        out.append(row)
    return out


def test_compare_verdicts():
    base = _rows({(512, 0): 500.0, (0, 128): 100.0, (64, 0): 300.0, (0, 16): 50.0})
    now = _rows({(512, 0): 550.0, (0, 128): 100.0, (64, 0): 290.0, (0, 16): 40.0, (0, 32): 10.0})
    verdicts = {v.test: v for v in compare(now, base, threshold_pct=5)}
    assert verdicts["pp512"].status == "faster" and verdicts["pp512"].ratio == pytest.approx(1.1)
    assert verdicts["tg128"].status == "same"
    assert verdicts["pp64"].status == "slower"  # -3.3 %: within the threshold
    assert verdicts["tg16"].status == "regression"  # -20 %
    assert verdicts["tg32"].status == "new"
    assert has_regression(list(verdicts.values()))
    assert not has_regression(compare(now[:3], base, threshold_pct=5))


def test_compare_refuses_a_base_that_does_not_match():
    base = _rows({(512, 0): 500.0})
    for row in base:
        row["model_filename"] = "other.gguf"
    with pytest.raises(BadInputError, match="no test matches"):
        compare(_rows({(512, 0): 500.0}), base, 5, "base.json")


def test_load_results_errors():
    with pytest.raises(BadInputError, match="empty"):
        load_results("", "b.json")
    with pytest.raises(BadInputError, match="not JSON"):
        load_results("{oops", "b.json")
    with pytest.raises(BadInputError, match="lacks"):
        load_results('[{"x": 1}]', "b.json")
