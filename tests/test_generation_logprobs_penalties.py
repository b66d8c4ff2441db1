"""What the server needs from the generation layer: presence/frequency penalties as llama.cpp's
penalties sampler applies them, per-token logprobs with the top alternatives, and a prompt too long
for the context reported with its numbers."""

from __future__ import annotations

import numpy as np
import pytest

import llmcli
from llmcli.errors import BadInputError
from llmcli.generation import ContextSizeError, Request, Sampler, SamplingParams

TINY = "gguf_ref/llama-f16.gguf"
GREEDY = SamplingParams(temp=0.0)


@pytest.fixture(scope="module")
def llm():
    from tests.conftest import DATA

    return llmcli.load(DATA / TINY, threads=1, ctx_size=64)


def _penalised_like_llama_cpp(logits, history, repeat, frequency, presence):
    """llama_sampler_penalties_apply written out token by token."""
    out = np.array(logits, np.float32)
    for token in set(history):
        count = history.count(token)
        value = out[token]
        value = value * np.float32(repeat) if value <= 0 else value / np.float32(repeat)
        out[token] = value - (np.float32(count) * np.float32(frequency) + np.float32(presence))
    return out


@pytest.mark.parametrize("repeat,frequency,presence", [(1.0, 0.3, 0.0), (1.0, 0.0, 0.5), (1.3, 0.7, -0.4)])
def test_penalties_follow_llama_cpp(repeat, frequency, presence):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=50).astype(np.float32)
    params = SamplingParams(repeat_penalty=repeat, frequency_penalty=frequency, presence_penalty=presence,
                            repeat_last_n=4)
    sampler = Sampler(params)
    for token in [9, 3, 3, 7, 3, 5]:  # the window keeps the last 4: 3, 7, 3, 5
        sampler.accept(token)
    expected = _penalised_like_llama_cpp(logits, [3, 7, 3, 5], repeat, frequency, presence)
    assert np.array_equal(sampler.apply_penalties(logits), expected)


def test_no_penalty_leaves_the_logits_alone():
    logits = np.arange(10, dtype=np.float32)
    sampler = Sampler(SamplingParams())
    sampler.accept(3)
    assert sampler.apply_penalties(logits) is logits


def test_penalties_must_be_finite():
    with pytest.raises(BadInputError, match="frequency_penalty"):
        SamplingParams(frequency_penalty=float("nan")).validate()
    with pytest.raises(BadInputError, match="presence_penalty"):
        SamplingParams(presence_penalty=float("inf")).validate()


def test_frequency_penalty_changes_greedy_output(llm):
    prompt = llm.tokenize("Once upon a time")
    plain = llm.complete(prompt, max_tokens=12, params=GREEDY).run()
    penalised = llm.complete(prompt, max_tokens=12, params=SamplingParams(temp=0.0, frequency_penalty=2.0,
                                                                           repeat_last_n=-1)).run()
    assert len(set(penalised.tokens)) >= len(set(plain.tokens))
    assert penalised.tokens != plain.tokens


def _log_softmax(row):
    row = np.asarray(row, np.float64)
    return row - (row.max() + np.log(np.exp(row - row.max()).sum()))


def test_logprobs_are_the_model_distribution(llm):
    prompt = llm.tokenize("Once upon a time")
    engine_llm = llmcli.load(llm.path, threads=1, ctx_size=64)
    engine = engine_llm.engine()
    try:
        events = list(engine.submit(Request(prompt, max_tokens=6, params=GREEDY, logprobs=3)))
    finally:
        engine_llm.close()
    tokens = [e.token for e in events if e.token is not None]
    assert len(tokens) == 6
    logits = llm.logits(prompt + tokens)
    for i, event in enumerate(e for e in events if e.token is not None):
        expected = _log_softmax(logits[len(prompt) - 1 + i])
        lp = event.logprob
        assert lp.token == event.token
        assert lp.logprob == pytest.approx(expected[event.token], abs=1e-3)
        assert len(lp.top) == 3 and lp.top[0][0] == event.token  # greedy: the best one was taken
        assert [t for t, _ in lp.top] == list(np.argsort(-expected, kind="stable")[:3])
        assert [v for _, v in lp.top] == pytest.approx([expected[t] for t, _ in lp.top], abs=1e-3)
    # the same tokens as without logprobs; none recorded unless asked
    plain = llm.complete(prompt, max_tokens=6, params=GREEDY).run()
    assert plain.tokens == tokens
    seq = llm.scheduler.new_sequence(Request(prompt, max_tokens=2, params=GREEDY))
    llm.scheduler.submit(seq)
    llm.scheduler.run_until(seq)
    assert all(piece.logprob is None for piece in seq.take_pieces())


def test_logprobs_zero_gives_the_chosen_token_only(llm):
    seq = llm.scheduler.new_sequence(Request(llm.tokenize("Once"), max_tokens=2, params=GREEDY, logprobs=0))
    llm.scheduler.submit(seq)
    llm.scheduler.run_until(seq)
    pieces = [p for p in seq.take_pieces() if p.token is not None]
    assert len(pieces) == 2 and all(p.logprob.top == () and p.logprob.logprob <= 0 for p in pieces)


def test_bad_requests_say_what_is_wrong(llm):
    with pytest.raises(BadInputError, match="logprobs must be >= 0"):
        llm.scheduler.new_sequence(Request([1, 2], logprobs=-1))
    with pytest.raises(ContextSizeError) as caught:
        llm.scheduler.new_sequence(Request([1] * 65))
    assert (caught.value.n_prompt_tokens, caught.value.n_ctx) == (65, 64)
    assert isinstance(caught.value, BadInputError)
