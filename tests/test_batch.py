"""`llmcli batch`: greedy records equal to generating each prompt alone, bad lines as error records,
resuming after a SIGKILL of a real process without duplicated, torn or missing lines."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import llmcli
from llmcli.generation.sampling import SamplingParams

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "data" / "gguf_ref" / "llama-f16.gguf"
PROMPTS = ["Once upon a time", "The sky is", "In the beginning", "Hello", "A B C D E F G", "the the the"]


@pytest.fixture(scope="module")
def llm():
    return llmcli.load(TINY, threads=1, ctx_size=128)


def _write_lines(path: Path, lines: list) -> Path:
    path.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    return path


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_greedy_records_equal_each_prompt_generated_alone(cli, llm, tmp_path):
    lines = [{"prompt": p, "max_tokens": 4 + 3 * i} for i, p in enumerate(PROMPTS)]
    lines.append({"messages": [{"role": "user", "content": "Hi there"}], "id": "chat", "metadata": {"k": [1]}})
    out = tmp_path / "out.jsonl"
    res = cli("batch", _write_lines(tmp_path / "in.jsonl", lines), out, "-m", TINY, "-np", "3", "-t", "1",
              "-c", "128", "--temp", "0", "--json")
    assert res.exit_code == 0, res.stderr
    summary = json.loads(res.stdout)
    records = _records(out)
    assert summary["done"] == len(lines) and summary["errors"] == 0 and summary["skipped"] == 0
    assert [r["line"] for r in records] == list(range(1, len(lines) + 1))
    assert [r["id"] for r in records] == [1, 2, 3, 4, 5, 6, "chat"]
    for record, line in zip(records, lines[:-1]):
        alone = llm.complete(line["prompt"], max_tokens=line["max_tokens"], params=SamplingParams(temp=0)).run()
        assert record["tokens"] == alone.tokens and record["text"] == alone.text
        assert record["stop_reason"] == alone.stop_reason and record["prompt_tokens"] == len(alone.prompt_tokens)
        assert record["finish_reason"] == {"length": "length", "eos": "stop"}[alone.stop_reason]
        assert record["timings"]["predicted_n"] == len(alone.tokens)
    reply = llm.chat_completion(lines[-1]["messages"], params=SamplingParams(temp=0)).run()
    assert records[-1]["tokens"] == reply.tokens and records[-1]["metadata"] == {"k": [1]}
    assert summary["generated_tokens"] == sum(len(r["tokens"]) for r in records)
    # and what `llmcli run` prints for the same prompt and options
    run = cli("run", "-m", TINY, "-t", "1", "-c", "128", "--temp", "0", "-n", "7", "-p", PROMPTS[1], "--json")
    assert json.loads(run.stdout)["tokens"] == records[1]["tokens"]


def test_bad_lines_become_error_records_with_their_line_numbers(cli, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text('"Once upon a time"\n'
                   'not json\n'
                   '\n'
                   '{"prompt": "x", "temperature": -1, "id": "neg"}\n'
                   '{"prompt": "x", "colour": "red"}\n'
                   '{"id": "none"}\n'
                   '[1, 2]\n'
                   '{"prompt": "The sky is", "id": "sky"}\n'
                   '{"prompt": "again", "id": "sky"}\n'
                   '{"prompt": "' + "word " * 200 + '"}\n', encoding="utf-8")
    with open(src, "ab") as f:
        f.write(b'"caf\xe9"\n')  # Latin-1, not UTF-8
    out = tmp_path / "out.jsonl"
    res = cli("batch", src, out, "-m", TINY, "-t", "1", "-c", "128", "-n", "3", "--temp", "0", "--json")
    assert res.exit_code == 0, res.stderr
    records = {r["line"]: r for r in _records(out)}
    assert sorted(records) == [1, 2, 4, 5, 6, 7, 8, 9, 10, 11]  # the blank line 3 is no job
    assert "tokens" in records[1] and "tokens" in records[8]
    expected_errors = {2: (2, "not valid JSON"), 4: ("neg", "--temp must be >= 0"), 5: (5, "unknown key 'colour'"),
                       6: ("none", "give one of prompt or messages"), 7: (7, "expected a prompt string"),
                       9: (None, 'id "sky" is already line 8\'s'), 10: (10, "the context holds 128"),
                       11: (11, "not UTF-8")}
    for line, (job_id, message) in expected_errors.items():
        assert records[line]["id"] == job_id and message in records[line]["error"], records[line]
        assert f"line {line}: " in res.stderr
    assert json.loads(res.stdout)["errors"] == len(expected_errors)
    # a rerun finds every line done, error records included: nothing is added
    again = cli("batch", src, out, "-m", TINY, "-t", "1", "-c", "128", "-n", "3", "--temp", "0", "--json")
    assert json.loads(again.stdout) | {"seconds": 0, "tokens_per_second": 0} == {
        "output": str(out), "done": 0, "errors": 0, "skipped": 10, "prompt_tokens": 0, "generated_tokens": 0,
        "seconds": 0, "tokens_per_second": 0}
    assert len(_records(out)) == 10


def test_usage_errors(cli, tmp_path):
    src = _write_lines(tmp_path / "in.jsonl", ["a"])
    assert "no such model file" in cli("batch", src, tmp_path / "o", "-m", tmp_path / "nope.gguf").stderr
    res = cli("batch", tmp_path / "missing.jsonl", tmp_path / "o", "-m", TINY)
    assert res.exit_code == 1 and "cannot read the input file" in res.stderr
    res = cli("batch", src, src, "-m", TINY)
    assert res.exit_code == 1 and "cannot be the input" in res.stderr
    (tmp_path / "other.jsonl").write_text('{"not": "a record"}\n')
    res = cli("batch", src, tmp_path / "other.jsonl", "-m", TINY)
    assert res.exit_code == 1 and "line 1 is not a batch record" in res.stderr
    res = cli("batch", src, tmp_path / "o", "-m", TINY, "--concurrency", "2")
    assert res.exit_code == 1 and "apply to --ray" in res.stderr


def test_resume_after_sigkill_has_no_duplicated_torn_or_missing_line(cli, tmp_path):
    n = 60
    src = _write_lines(tmp_path / "in.jsonl", [{"prompt": f"{PROMPTS[i % len(PROMPTS)]} {i}", "id": f"p{i}"}
                                               for i in range(n)])
    options = ["-m", TINY, "-t", "1", "-c", "128", "-np", "2", "-n", "24", "--temp", "0"]
    out = tmp_path / "out.jsonl"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "llmcli", "batch", str(src), str(out), *options],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if out.exists() and out.read_bytes().count(b"\n") >= 5:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the batch ended before it could be killed: " + proc.stderr.read().decode()
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    written = out.read_bytes()
    finished = written.count(b"\n")
    assert 5 <= finished < n
    # a kill can cut the line being written: add such a torn tail the way a cut write leaves it
    out.write_bytes(written + b'{"id": "p59", "line": 60, "text": "hal')
    res = cli("batch", src, out, *options, "--json")
    assert res.exit_code == 0, res.stderr
    assert "dropped a torn last line" in res.stderr
    summary = json.loads(res.stdout)
    assert summary["skipped"] == finished and summary["done"] == n - finished
    records = _records(out)
    assert [r["id"] for r in records] == [f"p{i}" for i in range(n)]  # each once, in input order
    fresh = tmp_path / "fresh.jsonl"
    assert cli("batch", src, fresh, *options).exit_code == 0
    assert [(r["id"], r["tokens"], r["text"]) for r in records] == \
        [(r["id"], r["tokens"], r["text"]) for r in _records(fresh)]


def test_ray_options_without_ray_say_how_to_install_it(cli, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as when it is not installed
    src = _write_lines(tmp_path / "in.jsonl", ["a"])
    for args in (["batch", src, tmp_path / "out.jsonl", "-m", TINY, "--ray"], ["serve", "-m", TINY, "--ray"]):
        res = cli(*args)
        assert res.exit_code == 1 and res.stderr.count("\n") == 1, res.stderr
        assert 'Ray is not installed: pip install "llmcli[ray]"' in res.stderr
    assert not (tmp_path / "out.jsonl").exists()


def test_cache_and_loading_options_as_run(cli, tmp_path):
    """-ctk/-ctv, --no-mmap and --mlock are run's options (one definition): the records are what a
    model loaded with them generates; a bad cache type is one line."""
    src = _write_lines(tmp_path / "in.jsonl", [{"prompt": p, "max_tokens": 3} for p in PROMPTS[:2]])
    out = tmp_path / "out.jsonl"
    res = cli("batch", src, out, "-m", TINY, "-t", "1", "-c", "64", "--temp", "0", "-ctk", "f32", "-ctv", "f32",
              "--no-mmap", "--mlock")
    assert res.exit_code == 0, res.stderr
    llm = llmcli.load(TINY, threads=1, ctx_size=64, cache_type_k="f32", cache_type_v="f32", use_mmap=False)
    for record, prompt in zip(_records(out), PROMPTS):
        assert record["tokens"] == llm.complete(prompt, max_tokens=3, params=SamplingParams(temp=0)).run().tokens
    res = cli("batch", src, tmp_path / "other.jsonl", "-m", TINY, "-ctv", "q5_9")
    lines = [line for line in res.stderr.strip().splitlines() if line.strip()]
    assert res.exit_code == 1 and len(lines) == 1 and "--cache-type-v" in lines[0], res.stderr
