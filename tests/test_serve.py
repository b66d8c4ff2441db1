"""`llmcli serve` driven over HTTP: raw requests and the real `openai` client against a subprocess
serving the tiny llama GGUF (4 slots).

Greedy output equals `llmcli run --temp 0`, streaming equals non-streaming, usage equals the
tokenizer's counts, concurrent requests equal their sequential results, logprobs and stop strings
behave, and /metrics parses with Prometheus' own parser.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

import llmcli
from llmcli.generation import SamplingParams
from tests.conftest import run_cli
from tests.serve_process import TINY, ServerProcess, post, request, sse_events

CTX = 256
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me a story"}]


@pytest.fixture(scope="module")
def server():
    with ServerProcess("-np", "4", "-c", str(CTX), "-t", "1", "--alias", "tiny") as proc:
        yield proc


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def llm():
    return llmcli.load(TINY, threads=1, ctx_size=CTX)


def test_health_models_props(server, client):
    for status, body in server.health_seen:  # polled from the moment the port opened
        assert (status, body) in [(200, {"status": "ok"}),
                                  (503, {"error": {"code": 503, "message": "Loading model",
                                                   "type": "unavailable_error"}})]
    models = client.models.list()
    assert [m.id for m in models.data] == ["tiny"] and models.data[0].owned_by == "llmcli"
    status, _, body = request("GET", server.url + "/props")
    props = json.loads(body)
    assert status == 200 and props["total_slots"] == 4 and props["default_generation_settings"]["n_ctx"] == CTX
    assert props["model_path"].endswith("llama-f16.gguf") and props["chat_template"]


def test_completion_equals_llmcli_run(server, client):
    cli = run_cli("run", "-m", TINY, "-p", "Once upon a time", "-n", "12", "--temp", "0", "-c", CTX, "--json")
    assert cli.exit_code == 0, cli.stderr
    expected = json.loads(cli.stdout)
    done = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=12, temperature=0)
    assert done.choices[0].text == expected["text"] and done.choices[0].finish_reason == "length"
    assert done.object == "text_completion" and done.id.startswith("cmpl-") and done.model == "tiny"
    assert done.usage.prompt_tokens == len(expected["prompt_tokens"])
    assert done.usage.completion_tokens == len(expected["tokens"]) == 12
    assert done.usage.total_tokens == done.usage.prompt_tokens + 12
    # the same prompt as token ids, and as a one-element list
    by_ids = post(server.url + "/v1/completions", {"prompt": expected["prompt_tokens"], "max_tokens": 12,
                                                  "temperature": 0})[1]
    assert by_ids["choices"][0]["text"] == expected["text"]
    listed = post(server.url + "/v1/completions", {"prompt": ["Once upon a time"], "max_tokens": 12,
                                                  "temperature": 0})[1]
    assert listed["choices"][0]["text"] == expected["text"]


def test_chat_usage_and_text_equal_the_api(client, llm):
    reply = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=10, temperature=0)
    expected = llm.chat_completion(MESSAGES, max_tokens=10, params=SamplingParams(temp=0)).run()
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == expected.text
    assert reply.object == "chat.completion" and reply.id.startswith("chatcmpl-")
    assert reply.usage.prompt_tokens == len(llm.chat_prompt_ids(MESSAGES))
    assert reply.usage.completion_tokens == len(expected.tokens)
    assert choice.finish_reason == {"eos": "stop", "length": "length"}[expected.stop_reason]


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_streaming_equals_non_streaming(client, endpoint):
    if endpoint == "chat":
        create, kwargs = client.chat.completions.create, {"messages": MESSAGES}
    else:
        create, kwargs = client.completions.create, {"prompt": "The little dog"}
    whole = create(model="tiny", max_tokens=16, temperature=0, **kwargs)
    chunks = list(create(model="tiny", max_tokens=16, temperature=0, stream=True,
                         stream_options={"include_usage": True}, **kwargs))
    assert len({c.id for c in chunks}) == 1 and chunks[0].id != whole.id
    assert chunks[-1].choices == []
    counts = lambda u: (u.prompt_tokens, u.completion_tokens, u.total_tokens)  # noqa: E731
    assert counts(chunks[-1].usage) == counts(whole.usage)
    with_choices = [c for c in chunks if c.choices]
    finish = [c.choices[0].finish_reason for c in with_choices if c.choices[0].finish_reason]
    assert finish == [whole.choices[0].finish_reason]
    if endpoint == "chat":
        assert with_choices[0].choices[0].delta.role == "assistant"
        text = "".join(c.choices[0].delta.content or "" for c in with_choices)
        assert text == whole.choices[0].message.content
    else:
        assert "".join(c.choices[0].text for c in with_choices) == whole.choices[0].text


def test_raw_sse_format(server):
    events, lines = sse_events(server.url + "/v1/chat/completions",
                               {"messages": MESSAGES, "max_tokens": 5, "temperature": 0, "stream": True})
    assert events[-1] == "[DONE]" and all(isinstance(e, dict) for e in events[:-1])
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert events[0]["object"] == "chat.completion.chunk" and "usage" not in events[0]
    assert events[-2]["choices"][0]["delta"] == {} and events[-2]["choices"][0]["finish_reason"] == "length"
    assert all(line == "" or line.startswith("data: ") or line.startswith(":") for line in lines)


def test_same_seed_same_text(client):
    def sample(seed):
        return client.completions.create(model="tiny", prompt="Once", max_tokens=16, temperature=1.0,
                                         seed=seed).choices[0].text

    first = sample(1234)
    assert sample(1234) == first
    assert any(sample(seed) != first for seed in (1, 2, 3))


def test_concurrent_greedy_requests_equal_sequential(server):
    prompts = [f"Story number {i}: once" for i in range(8)]

    def complete(prompt):
        return post(server.url + "/v1/completions", {"prompt": prompt, "max_tokens": 12, "temperature": 0})[1]

    sequential = [complete(p)["choices"][0]["text"] for p in prompts]
    with ThreadPoolExecutor(8) as pool:
        concurrent = [r["choices"][0]["text"] for r in pool.map(complete, prompts)]
    assert concurrent == sequential


def test_chat_logprobs_stream_and_whole_agree(client):
    kwargs = dict(model="tiny", messages=MESSAGES, max_tokens=8, temperature=0, logprobs=True, top_logprobs=3)
    whole = client.chat.completions.create(**kwargs)
    content = whole.choices[0].logprobs.content
    assert len(content) == whole.usage.completion_tokens == 8
    for entry in content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].token == entry.token  # greedy took the most likely token
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob)
        assert bytes(entry.bytes).decode("utf-8", "replace") == entry.token
    assert "".join(e.token for e in content) == whole.choices[0].message.content
    streamed = [e for c in client.chat.completions.create(stream=True, **kwargs)
                if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    # the second request reuses the cached prompt: logits within float rounding of the first's
    assert [e.token for e in streamed] == [e.token for e in content]
    assert [e.logprob for e in streamed] == pytest.approx([e.logprob for e in content], abs=1e-4)
    plain = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=8, temperature=0)
    assert plain.choices[0].logprobs is None


def test_completion_logprobs(client):
    done = client.completions.create(model="tiny", prompt="Once upon", max_tokens=6, temperature=0, logprobs=2)
    lp = done.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 6
    assert "".join(lp.tokens) == done.choices[0].text
    assert lp.text_offset[0] == 0 and all(len(top) <= 2 for top in lp.top_logprobs)
    assert all(max(top.values()) == pytest.approx(v) for top, v in zip(lp.top_logprobs, lp.token_logprobs))


@pytest.mark.parametrize("stream", [False, True])
def test_stop_strings(client, stream):
    base = client.completions.create(model="tiny", prompt="The little dog", max_tokens=20, temperature=0)
    text = base.choices[0].text
    stop = text[6:9]
    assert stop and stop in text
    kwargs = dict(model="tiny", prompt="The little dog", max_tokens=20, temperature=0, stop=[stop, "@@never"])
    if stream:
        chunks = [c for c in client.completions.create(stream=True, **kwargs) if c.choices]
        got = "".join(c.choices[0].text for c in chunks)
        finish = chunks[-1].choices[0].finish_reason
    else:
        done = client.completions.create(**kwargs)
        got, finish = done.choices[0].text, done.choices[0].finish_reason
    assert got == text[:text.index(stop)] and finish == "stop"


def test_penalties_change_the_output(client):
    plain = client.completions.create(model="tiny", prompt="Once", max_tokens=24, temperature=0)
    penalised = client.completions.create(model="tiny", prompt="Once", max_tokens=24, temperature=0,
                                          frequency_penalty=2.0, presence_penalty=1.0)
    assert penalised.choices[0].text != plain.choices[0].text


def test_tokenize_and_detokenize(server, llm):
    status, body = post(server.url + "/tokenize", {"content": "Hello world"})
    assert status == 200 and body["tokens"] == llm.tokenize("Hello world", add_special=False)
    with_bos = post(server.url + "/tokenize", {"content": "Hello world", "add_special": True})[1]["tokens"]
    assert with_bos == llm.tokenize("Hello world")
    pieces = post(server.url + "/tokenize", {"content": "Hello world", "with_pieces": True})[1]["tokens"]
    assert [p["id"] for p in pieces] == body["tokens"] and "".join(p["piece"] for p in pieces) == " Hello world"
    assert post(server.url + "/detokenize", {"tokens": body["tokens"]}) == (200, {"content": "Hello world"})


def test_metrics_parse(server, client):
    client.completions.create(model="tiny", prompt="Once", max_tokens=3, temperature=0)
    status, headers, body = request("GET", server.url + "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    values = {s.name: s.value for f in families.values() for s in f.samples}
    assert values["llmcli:tokens_predicted_total"] >= 3 and values["llmcli:prompt_tokens_total"] >= 1
    assert values["llmcli:requests_processing"] == 0 and values["llmcli:requests_deferred"] == 0
    assert 0 < values["llmcli:kv_cache_usage_ratio"] <= 1


def test_one_log_line_per_request(server, client):
    client.completions.create(model="tiny", prompt="Log me", max_tokens=2, temperature=0)
    lines = [line for line in server.lines if "POST /v1/completions 200" in line]
    assert lines and " tokens " in lines[-1] and lines[-1].endswith(" ms")


def test_chat_page(server):
    status, headers, body = request("GET", server.url + "/")
    page = body.decode()
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "/v1/chat/completions" in page and "getReader" in page  # it streams the reply
    assert "http://" not in page and "https://" not in page  # nothing fetched from elsewhere (no CDN)
