"""`llmcli serve` with structured output: OpenAI's response_format (json_object, json_schema) and
llama.cpp's grammar / json_schema fields on /v1/chat/completions and /v1/completions, streamed or
not; a bad grammar or schema is a 400 naming the field, and the server keeps serving."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest

from tests.serve_process import ServerProcess, post, sse_events

SCHEMA = {"type": "object", "properties": {"word": {"type": "string", "maxLength": 6},
                                           "n": {"type": "integer", "minimum": 0, "maximum": 50}},
          "required": ["word", "n"]}
CHAT = [{"role": "user", "content": "Give me a word and a number."}]


@pytest.fixture(scope="module")
def server():
    with ServerProcess("-np", "2", "-c", "512", "-t", "1") as proc:
        yield proc


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def test_response_format_json_schema_with_the_openai_client(client):
    for seed in range(3):
        reply = client.chat.completions.create(
            model="m", messages=CHAT, seed=seed, temperature=1.0, max_tokens=300,
            response_format={"type": "json_schema", "json_schema": {"name": "pair", "schema": SCHEMA, "strict": True}})
        assert reply.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(reply.choices[0].message.content), SCHEMA)


def test_response_format_json_schema_streamed_with_the_openai_client(client):
    whole = client.chat.completions.create(
        model="m", messages=CHAT, seed=5, temperature=1.0, max_tokens=300,
        response_format={"type": "json_schema", "json_schema": {"name": "pair", "schema": SCHEMA}})
    chunks = list(client.chat.completions.create(
        model="m", messages=CHAT, seed=5, temperature=1.0, max_tokens=300, stream=True,
        response_format={"type": "json_schema", "json_schema": {"name": "pair", "schema": SCHEMA}}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1  # it did stream
    assert text == whole.choices[0].message.content  # same seed, same text
    jsonschema.validate(json.loads(text), SCHEMA)


def test_response_format_json_object(client):
    reply = client.chat.completions.create(model="m", messages=CHAT, seed=1, temperature=1.0, max_tokens=400,
                                           response_format={"type": "json_object"})
    text = reply.choices[0].message.content
    assert text.startswith("{")
    if reply.choices[0].finish_reason == "stop":  # an object of any size may still be open at max_tokens
        assert isinstance(json.loads(text), dict)


@pytest.mark.parametrize("endpoint", ["/v1/completions", "/v1/chat/completions"])
@pytest.mark.parametrize("field", ["grammar", "json_schema"])
def test_llamacpp_fields_streamed_and_whole(server, endpoint, field):
    value = 'root ::= "[" [a-z]{2,5} "]"' if field == "grammar" else SCHEMA
    body = {"max_tokens": 300, "temperature": 0.7, "seed": 5, field: value}
    body.update({"prompt": "Hello"} if endpoint == "/v1/completions" else {"messages": CHAT})
    status, whole = post(server.url + endpoint, body)
    assert status == 200, whole
    choice = whole["choices"][0]
    text = choice["text"] if "text" in choice else choice["message"]["content"]
    if field == "grammar":
        assert text.startswith("[") and text.endswith("]") and 4 <= len(text) <= 7, text
    else:
        jsonschema.validate(json.loads(text), SCHEMA)
    events, _ = sse_events(server.url + endpoint, {**body, "stream": True})
    streamed = "".join((e["choices"][0].get("text") or e["choices"][0].get("delta", {}).get("content") or "")
                       for e in events if e != "[DONE]" and e.get("choices"))
    assert streamed == text


@pytest.mark.parametrize("body,message", [
    ({"grammar": 'root ::= "a" | undefined-thing'}, "grammar: grammar: rule 'undefined-thing' is used but never defined"),
    ({"json_schema": {"type": "string", "format": "email"}}, "json_schema: JSON schema at #: format 'email'"),
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "number", "minimum": 1}}}},
     "response_format.json_schema.schema"),
    ({"response_format": {"type": "yaml"}}, "response_format.type must be text, json_object or json_schema"),
    ({"grammar": 'root ::= "a"', "json_schema": {}}, "not grammar and json_schema"),
    ({"json_schema": "not an object"}, "json_schema"),
])
def test_bad_grammars_are_400s_and_the_server_goes_on(server, body, message):
    status, error = post(server.url + "/v1/chat/completions", {"messages": CHAT, "max_tokens": 4, **body})
    assert status == 400 and error["error"]["type"] == "invalid_request_error"
    assert message in error["error"]["message"] and "\n" not in error["error"]["message"]
    status, fine = post(server.url + "/v1/completions", {"prompt": "Hi", "max_tokens": 2})
    assert status == 200 and fine["choices"][0]["text"] is not None


def test_text_response_format_is_free_text(server):
    status, reply = post(server.url + "/v1/completions", {"prompt": "Hi", "max_tokens": 3, "temperature": 0,
                                                         "response_format": {"type": "text"}})
    status2, plain = post(server.url + "/v1/completions", {"prompt": "Hi", "max_tokens": 3, "temperature": 0})
    assert status == status2 == 200 and reply["choices"][0]["text"] == plain["choices"][0]["text"]


@pytest.mark.parametrize("field", ["grammar", "json_schema"])
def test_llama_servers_own_completion_endpoint(server, field):
    value = 'root ::= "[" [a-z]{2,5} "]"' if field == "grammar" else SCHEMA
    body = {"prompt": "Hello", "n_predict": 300, "temperature": 0.7, "seed": 9, field: value}
    status, whole = post(server.url + "/completion", body)
    assert status == 200, whole
    assert whole["stop"] is True and whole["stop_type"] == "eos" and whole["tokens_predicted"] > 0
    if field == "grammar":
        assert whole["content"][0] == "[" and whole["content"][-1] == "]"
    else:
        jsonschema.validate(json.loads(whole["content"]), SCHEMA)
    events, _ = sse_events(server.url + "/completion", {**body, "stream": True})
    assert all(e["stop"] is False for e in events[:-1]) and events[-1]["stop"] is True
    assert "".join(e["content"] for e in events) == whole["content"]
    status, limited = post(server.url + "/completion", {"prompt": "Hello", "n_predict": 2, "temperature": 0})
    assert status == 200 and limited["tokens_predicted"] == 2 and limited["stop_type"] == "limit"
    status, error = post(server.url + "/completion", {"prompt": "Hello", "grammar": "root ::= ("})
    assert status == 400 and "grammar" in error["error"]["message"]
