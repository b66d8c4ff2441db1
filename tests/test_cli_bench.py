"""`llmcli bench` end to end on a tiny model: outputs, --compare exit codes, bad input."""

from __future__ import annotations

import json

import pytest

from llmcli.bench.compare import REGRESSION_EXIT_CODE

TINY = "gguf_ref/llama-f16.gguf"


@pytest.fixture(scope="module")
def bench_json(tmp_path_factory):
    """One real run, reused: 2 thread counts x (pp8, tg4, pp8+tg4)."""
    from tests.conftest import DATA, run_cli

    res = run_cli("bench", "-m", DATA / TINY, "-p", "8", "-n", "4", "-pg", "8,4", "-r", "2", "-t", "1,2",
                  "-o", "json")
    assert res.exit_code == 0, res.stderr
    path = tmp_path_factory.mktemp("bench") / "base.json"
    path.write_text(res.stdout)
    return path


def test_json_carries_every_field(bench_json):
    rows = json.loads(bench_json.read_text())
    assert [(r["test"], r["n_threads"]) for r in rows] == [
        ("pp8", 1), ("tg4", 1), ("pp8+tg4", 1), ("pp8", 2), ("tg4", 2), ("pp8+tg4", 2)]
    for r in rows:
        assert len(r["samples_ns"]) == 2 and len(r["samples_ts"]) == 2 and r["avg_ts"] > 0
        assert r["model_arch"] == "llama" and r["model_n_params"] > 0 and r["model_size"] > 0
        assert r["model_type_mix"] == {"F16": 16, "F32": 5}
        assert r["peak_rss_bytes"] > 0 and r["kv_cache_bytes"] > 0 and r["numba_version"]
        assert r["model_file_type"] == "MOSTLY_F16" and r["model_type"].endswith("F16")
        assert r["prompt_activations"] == "int8-gemm"  # the default prompt path


def test_compare_against_itself_passes_and_a_faster_base_fails(cli, data_dir, bench_json, tmp_path):
    rows = json.loads(bench_json.read_text())
    res = cli("bench", "-m", data_dir / TINY, "-p", "8", "-n", "0", "-r", "1", "-t", "1",
              "--compare", bench_json, "--threshold", "100000", "-o", "csv")
    assert res.exit_code == 0, res.stderr
    assert res.stdout.splitlines()[0].startswith("build_commit,")
    for r in rows:
        r["avg_ts"] *= 1000.0
    fast = tmp_path / "fast.json"
    fast.write_text(json.dumps(rows))
    res = cli("bench", "-m", data_dir / TINY, "-p", "8", "-n", "0", "-r", "1", "-t", "1",
              "--compare", fast, "-o", "jsonl")
    assert res.exit_code == REGRESSION_EXIT_CODE and "regression" in res.stderr


@pytest.mark.parametrize("args, message", [
    (["-p", "0", "-n", "0"], "nothing to measure"),
    (["-o", "xml"], "unknown format"),
    (["-t", "0"], "below the minimum"),
    (["-p", "x"], "not an integer"),
])
def test_bad_input(cli, data_dir, args, message):
    res = cli("bench", "-m", data_dir / TINY, *args)
    assert res.exit_code == 1 and message in res.stderr


def test_missing_model_and_unmatched_base(cli, data_dir, tmp_path):
    res = cli("bench", "-m", tmp_path / "nope.gguf")
    assert res.exit_code == 1 and "nope.gguf" in res.stderr
    other = tmp_path / "other.json"
    other.write_text(json.dumps([{"model_filename": "x.gguf", "n_prompt": 8, "n_gen": 0, "n_threads": 1,
                                  "n_batch": 512, "avg_ts": 1.0}]))
    res = cli("bench", "-m", data_dir / TINY, "-p", "8", "-n", "0", "-r", "1", "-t", "1", "--compare", other)
    assert res.exit_code == 1 and "no test matches" in res.stderr


@pytest.mark.parametrize("shared", [False, True])
def test_batched_mode_prints_llama_batched_bench_records(cli, data_dir, shared):
    args = ["bench", "-m", data_dir / TINY, "-npp", "8", "-ntg", "4,6", "-npl", "1,3", "-t", "1", "-o", "jsonl"]
    res = cli(*args, *(["-pps"] if shared else []))
    assert res.exit_code == 0, res.stderr
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert [(r["pp"], r["tg"], r["pl"]) for r in rows] == [(8, 4, 1), (8, 4, 3), (8, 6, 1), (8, 6, 3)]
    for r in rows:
        assert r["n_kv"] == r["pl"] * (r["pp"] + r["tg"])
        assert r["is_pp_shared"] == int(shared) and r["n_threads"] == 1
        # times are printed to 6 decimals (as llama-batched-bench does): a 0.4 ms t_pp is 0.1 % off
        assert r["speed_tg"] == pytest.approx(r["pl"] * r["tg"] / r["t_tg"], rel=1e-2)
        assert r["speed_pp"] == pytest.approx((1 if shared else r["pl"]) * r["pp"] / r["t_pp"], rel=1e-2)
        assert r["t"] == pytest.approx(r["t_pp"] + r["t_tg"], abs=2e-6)
        tokens = (1 if shared else r["pl"]) * r["pp"] + r["pl"] * r["tg"]
        assert r["speed"] == pytest.approx(tokens / r["t"], rel=1e-2)
    table = cli("bench", "-m", data_dir / TINY, "-npp", "8", "-ntg", "4", "-npl", "2", "-t", "1")
    assert table.exit_code == 0 and "S_TG t/s" in table.stdout and "llama-f16.gguf" in table.stdout


@pytest.mark.parametrize("args, message", [
    (["-npp", "8"], "give -npl too"),
    (["-npl", "2", "-o", "csv"], "batched mode prints table, json or jsonl"),
    (["-npl", "0"], "-npl: 0 is below the minimum 1"),
    (["-npl", "2", "-npp", "64", "-c", "32"], "--ctx-size 32 is per sequence"),
])
def test_batched_mode_bad_input(cli, data_dir, args, message):
    res = cli("bench", "-m", data_dir / TINY, *args)
    assert res.exit_code == 1 and message in res.stderr


def test_depth_runs_each_test_after_that_many_cached_tokens(cli, data_dir):
    """-d (llama-bench's --n-depth): each repetition continues a context of n_depth tokens, evaluated
    once and copied in, untimed; the json says n_depth and the label "@ d<n>" as llama-bench's."""
    res = cli("bench", "-m", data_dir / TINY, "-p", "4", "-n", "2", "-d", "0,8", "-r", "2", "-t", "1", "-o", "json",
              "--activations", "float")
    assert res.exit_code == 0, res.stderr
    rows = json.loads(res.stdout)
    assert {r["prompt_activations"] for r in rows} == {"float"}
    assert [(r["test"], r["n_depth"], r["n_ctx"]) for r in rows] == [
        ("pp4", 0, 4), ("tg2", 0, 2), ("pp4 @ d8", 8, 12), ("tg2 @ d8", 8, 10)]
    assert all(r["kv_cache_bytes"] == r["kv_cache_bytes_k"] + r["kv_cache_bytes_v"] > 0 for r in rows)


def test_depth_context_is_in_the_cache_the_test_continues():
    from llmcli.bench.runner import BenchRunner
    from llmcli.bench.spec import expand
    from tests.conftest import DATA

    runner = BenchRunner(1, warmup=False)
    (test,) = expand([str(DATA / TINY)], [0], [3], [], [1], [512], None, depths=(6,))
    model = runner._model(test)
    runner._run_once(model, test)
    _, sched, kept, ids = runner._context
    (work,) = sched.free
    assert kept.n_past == 6 and work.n_past == 6 + 1 + 3 - 1  # the last token generated is not evaluated
    assert work.tokens[:6].tolist() == ids == kept.tokens.tolist()
