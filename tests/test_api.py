"""The Python API: load, tokenize/detokenize, logits, generate/chat, prefix reuse, Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import llmcli
from llmcli.generation.sampling import SamplingParams

TINY = "gguf_ref/llama-f16.gguf"


@pytest.fixture(scope="module")
def llm():
    from tests.conftest import DATA

    return llmcli.load(DATA / TINY, threads=1, ctx_size=128)


def test_logits_match_the_reference(llm, data_dir):
    prompt = json.loads((data_dir / "hf" / "llama" / "reference" / "prompt.json").read_text())
    reference = np.load(data_dir / "hf" / "llama" / "reference" / "logits.npy")
    logits = llm.logits(prompt["input_ids"])
    assert logits.shape == reference.shape and logits.dtype == np.float32
    assert np.abs(logits - reference).max() < 1e-2


def test_prompt_activations_reach_the_model(llm):
    # the default prompt path (integer GEMMs where the weight type has one), and the one asked for
    assert llm.model.prompt_activations == llmcli.api.DEFAULT_PROMPT_ACTIVATIONS == "int8-gemm"
    assert llm.model.output.gemm == "int8"
    from tests.conftest import DATA

    exact = llmcli.load(DATA / TINY, threads=1, ctx_size=128, prompt_activations="float")
    assert exact.model.prompt_activations == "float" and exact.model.output.gemm == "float"


def test_tokenize_and_detokenize(llm):
    ids = llm.tokenize("Once upon a time")
    assert ids[0] == 1 and llm.tokenize("Once upon a time", add_special=False) == ids[1:]
    assert llm.detokenize(ids[1:]) == "Once upon a time"
    assert llm.tokenize("<s>", add_special=False, parse_special=True) == [1]


def test_generate_streams_what_complete_returns(llm):
    pieces = list(llm.generate("Once upon a time", max_tokens=6, temp=0))
    completion = llm.complete("Once upon a time", max_tokens=6, params=SamplingParams(temp=0)).run()
    assert "".join(pieces) == completion.text and len(completion.tokens) == 6
    assert completion.stop_reason == "length"


def test_a_new_prompt_reuses_the_cached_prefix(llm):
    first = llm.complete("Once upon a time there", max_tokens=2, params=SamplingParams(temp=0)).run()
    longer = first.prompt_tokens + first.tokens + llm.tokenize(" and", add_special=False)
    second = llm.complete(longer, max_tokens=2, params=SamplingParams(temp=0)).run()
    # the first prompt and the first generated token are cached; only the rest is evaluated
    assert second.timings.prompt_n == len(longer) - len(first.prompt_tokens) - 1
    fresh = llmcli.load(llm.path, threads=1, ctx_size=128)
    again = fresh.complete(longer, max_tokens=2, params=SamplingParams(temp=0)).run()
    assert again.timings.prompt_n == len(longer) and again.tokens == second.tokens


def test_chat_turns_reuse_the_conversation(llm):
    messages = [{"role": "user", "content": "Hello"}]
    turn1 = llm.chat_completion(messages, max_tokens=3, params=SamplingParams(temp=0)).run()
    messages += [{"role": "assistant", "content": turn1.text}, {"role": "user", "content": "More"}]
    turn2 = llm.chat_completion(messages, max_tokens=3, params=SamplingParams(temp=0)).run()
    assert 0 < turn2.timings.prompt_n < len(turn2.prompt_tokens)
    assert "".join(llm.chat(messages, max_tokens=3, temp=0)) == turn2.text


def test_ignore_eos(llm):
    eos = llm.tokenizer.eos_id
    for seed in range(50):  # the first seed whose sample ends with EOS within 60 tokens
        params = SamplingParams(temp=1.5, top_k=0, top_p=1.0, min_p=0.0, seed=seed)
        plain = llm.complete("Once", max_tokens=60, params=params).run()
        if plain.stop_reason == "eos":
            break
    assert plain.stop_reason == "eos"
    forced = llm.complete("Once", max_tokens=len(plain.tokens) + 5, params=params, ignore_eos=True).run()
    assert forced.stop_reason == "length" and eos not in forced.tokens


def test_ctrl_c_stops_generation_and_still_prints_timings(data_dir):
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmcli.cli", "run", "-m", str(data_dir / TINY), "-p", "Once", "-n", "100000",
         "-c", "100000", "--temp", "1", "--seed", "1", "--ignore-eos"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1"},
        # a test run started in the background (`cmd &` in a script) ignores SIGINT, and a child
        # inherits that: give `run` the disposition a terminal's Ctrl-C meets
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert proc.stdout.read(1)  # generation has started
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:  # still running: SIGABRT makes faulthandler print where it is
            proc.send_signal(signal.SIGABRT)
            _, err = proc.communicate(timeout=30)
            raise AssertionError(f"Ctrl-C did not stop `run` within 120 s; its threads:\n{err[-6000:]}")
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "stop: interrupted" in err


def test_leaving_a_completion_early_frees_its_slot(llm):
    completion = llm.complete("Once upon a time", max_tokens=40, params=SamplingParams(temp=0))
    pieces = iter(completion)
    next(pieces)
    pieces.close()  # what leaving a for loop early does to the generator
    assert completion.stop_reason == "cancelled" and len(completion.tokens) < 40
    assert len(llm.scheduler.free) == llm.scheduler.n_parallel and not llm.scheduler.busy
    assert llm.complete("Once upon a time", max_tokens=3, params=SamplingParams(temp=0)).run().stop_reason == "length"
