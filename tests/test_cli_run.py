"""`llmcli run` / `llmcli chat` end to end: prompt from -p and -f, --stop, --json, chat over stdin,
the demo model default, and bad input."""

from __future__ import annotations

import json

import pytest

from tests.conftest import gguf_with_template

TINY = "gguf_ref/llama-f16.gguf"


def _run_json(cli, *args, input=None):
    res = cli("run", *args, "--json", input=input)
    assert res.exit_code == 0, res.stderr
    return json.loads(res.stdout)


def test_greedy_json_and_plain_text_agree(cli, data_dir):
    out = _run_json(cli, "-m", data_dir / TINY, "-p", "Once upon a time", "-n", "8", "--temp", "0")
    assert out["prompt_tokens"][0] == 1 and len(out["tokens"]) == 8 and out["stop_reason"] == "length"
    assert out["timings"]["prompt_n"] == len(out["prompt_tokens"]) and out["timings"]["predicted_n"] == 8
    res = cli("run", "-m", data_dir / TINY, "-p", "Once upon a time", "-n", "8", "--temp", "0")
    assert res.exit_code == 0 and res.stdout == out["text"] + "\n"
    assert "prompt:" in res.stderr and "generated: 8 tokens" in res.stderr


def test_prompt_file_and_special_parsing(cli, data_dir, tmp_path):
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("<s>Once upon a time", encoding="utf-8")
    parsed = _run_json(cli, "-m", data_dir / TINY, "-f", prompt, "-n", "1", "--temp", "0")
    plain = _run_json(cli, "-m", data_dir / TINY, "-f", prompt, "-n", "1", "--temp", "0", "--no-parse-special")
    assert parsed["prompt_tokens"][:2] == [1, 1]  # BOS added, then the <s> text parsed as BOS
    assert plain["prompt_tokens"][0] == 1 and plain["prompt_tokens"][1] != 1


def test_stop_string_cuts_the_text(cli, data_dir):
    full = _run_json(cli, "-m", data_dir / TINY, "-p", "Once upon a time", "-n", "12", "--temp", "0")
    text = full["text"]
    stop = text[len(text) // 2: len(text) // 2 + 2]
    cut = _run_json(cli, "-m", data_dir / TINY, "-p", "Once upon a time", "-n", "12", "--temp", "0", "--stop", stop)
    assert cut["stop_reason"] == "stop" and cut["text"] == text[: text.index(stop)]


def test_seed_makes_sampling_repeatable(cli, data_dir):
    a = _run_json(cli, "-m", data_dir / TINY, "-p", "Once", "-n", "10", "--seed", "42", "--temp", "1.5")
    b = _run_json(cli, "-m", data_dir / TINY, "-p", "Once", "-n", "10", "--seed", "42", "--temp", "1.5")
    assert a["tokens"] == b["tokens"] and a["seed"] == 42


def test_context_full_stops_generation(cli, data_dir):
    out = _run_json(cli, "-m", data_dir / TINY, "-p", "Once upon a time", "-c", "16", "--temp", "0")
    assert out["stop_reason"] == "context" and len(out["prompt_tokens"]) + len(out["tokens"]) == 17


def test_chat_over_stdin_keeps_and_resets_the_conversation(cli, data_dir):
    res = cli("run", "-m", data_dir / TINY, "--chat", "--temp", "0", "-n", "4",
              input="hello there\nand again\n/reset\nhello there\n/exit\nnot read\n")
    assert res.exit_code == 0, res.stderr
    replies = res.stdout.splitlines()
    assert len(replies) == 3 and replies[0] == replies[2]  # after /reset the same question, same answer
    assert "conversation reset" in res.stderr and res.stderr.count("generated: 4 tokens") == 3


def test_demo_model_is_the_default(cli, data_dir):
    ref = json.loads((data_dir / "demo" / "llamacpp.json").read_text())["prompts"][0]
    out = _run_json(cli, "-p", ref["prompt"], "-n", "4", "--temp", "0")
    assert out["prompt_tokens"] == ref["prompt_ids"]
    # the first 4 steps have llama.cpp top-two margins >= 0.5, so a float32 engine must agree
    assert out["tokens"] == ref["greedy_new_ids"][:4]


@pytest.mark.parametrize("args, message", [
    (["-p", "x", "--temp", "-1"], "--temp"),
    (["-p", "x", "--top-p", "2"], "--top-p"),
    (["-p", "Once upon a time it was", "--ctx-size", "4"], "raise --ctx-size"),
    (["-f", "/nonexistent/prompt.txt"], "cannot read the prompt file"),
    (["-p", "x", "-f", "y"], "not both"),
    ([], "no prompt"),
    (["-p", "x", "--activations", "half"], "--activations must be one of int8-gemm, float, int8"),
])
def test_bad_input(cli, data_dir, args, message):
    res = cli("run", "-m", data_dir / TINY, *args)
    assert res.exit_code == 1 and message in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_unknown_option_is_a_usage_error(cli, data_dir):
    assert cli("run", "-m", data_dir / TINY, "--frobnicate").exit_code == 2


def test_broken_chat_template(cli, data_dir, tmp_path):
    model = gguf_with_template(data_dir / TINY, tmp_path / "broken.gguf", "{{ messages[3].content.nope() }}")
    res = cli("run", "-m", model, "--chat", input="hi\n")
    assert res.exit_code == 1 and "chat template" in res.stderr
