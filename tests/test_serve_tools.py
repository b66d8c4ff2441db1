"""Tool calls through `llmcli serve`, driven by the real `openai` client: a required call (and a
named one) comes back as OpenAI `tool_calls` whose arguments validate against the tool's schema,
streamed as OpenAI's deltas that the client's own accumulator reassembles into the same calls; a
two-step conversation (the call, the tool's result, the answer) streamed and not; tool_choice
"none" leaves the prompt as without tools. The tiny llama has random weights and a template without
tool support (the generic format): the grammar is what makes its calls valid.
"""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState

from tests.serve_process import ServerProcess

WEATHER_PARAMETERS = {
    "type": "object",
    "properties": {"city": {"type": "string", "enum": ["Paris", "Tokyo", "Lima"]},
                   "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                   "days": {"type": "integer", "minimum": 1, "maximum": 7}},
    "required": ["city", "unit", "days"],
    "additionalProperties": False,
}
TIME_PARAMETERS = {"type": "object", "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}},
                   "required": ["zone"], "additionalProperties": False}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "The weather forecast of a city",
                                      "parameters": WEATHER_PARAMETERS}},
    {"type": "function", "function": {"name": "get_time", "description": "The time in a time zone",
                                      "parameters": TIME_PARAMETERS}},
]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
QUESTION = [{"role": "user", "content": "What will the weather be in Paris for the next three days?"}]


@pytest.fixture(scope="module")
def client():
    with ServerProcess("-np", "2", "-c", "4096", "-t", "1") as server:
        yield openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def _check_calls(calls, names=None) -> list[tuple[str, dict]]:
    """Each call well formed, its arguments valid for its tool's schema: [(name, arguments)]."""
    out = []
    for call in calls:
        assert call.type == "function" and call.id.startswith("call_") and len(call.id) > len("call_")
        assert call.function.name in (names or SCHEMAS)
        arguments = json.loads(call.function.arguments)
        jsonschema.validate(arguments, SCHEMAS[call.function.name])
        out.append((call.function.name, arguments))
    return out


@pytest.mark.parametrize("tool_choice,names", [
    ("required", None),
    ({"type": "function", "function": {"name": "get_time"}}, ["get_time"]),
])
def test_required_calls_are_valid(client, tool_choice, names):
    for seed in (1, 2, 3):  # sampled: any draw must give a valid call
        reply = client.chat.completions.create(model="tiny", messages=QUESTION, tools=TOOLS, tool_choice=tool_choice,
                                               parallel_tool_calls=False, temperature=1.0, seed=seed, max_tokens=200)
        choice = reply.choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        assert len(choice.message.tool_calls) == 1
        _check_calls(choice.message.tool_calls, names)


def test_parallel_calls(client):
    counts = []
    for seed in (5, 6, 7):
        reply = client.chat.completions.create(model="tiny", messages=QUESTION, tools=TOOLS, tool_choice="required",
                                               temperature=1.0, seed=seed, max_tokens=400)
        calls = reply.choices[0].message.tool_calls
        assert reply.choices[0].finish_reason == "tool_calls" and len({c.id for c in calls}) == len(calls) >= 1
        _check_calls(calls)
        counts.append(len(calls))
    assert max(counts) >= 2  # the parallel form ({"tool_calls": [...]}) is read as several calls


def test_streamed_calls_reassemble(client):
    kwargs = dict(model="tiny", messages=QUESTION, tools=TOOLS, tool_choice="required", parallel_tool_calls=False,
                  temperature=0, max_tokens=200)
    whole = client.chat.completions.create(**kwargs)
    state = ChatCompletionStreamState()
    chunks = []
    for chunk in client.chat.completions.create(stream=True, **kwargs):
        chunks.append(chunk)
        state.handle_chunk(chunk)
    deltas = [d for c in chunks if c.choices for d in (c.choices[0].delta.tool_calls or [])]
    # OpenAI's order: the call's index, id, type and name with empty arguments, then the arguments
    head, *fragments = deltas
    assert head.index == 0 and head.id.startswith("call_") and head.type == "function"
    assert head.function.name in SCHEMAS and head.function.arguments == ""
    assert fragments and all(f.index == 0 and f.id is None and f.function.name is None for f in fragments)
    assert "".join(f.function.arguments for f in fragments) == whole.choices[0].message.tool_calls[0].function.arguments
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["tool_calls"]
    final = state.get_final_completion().choices[0]  # the client's own accumulation of the deltas
    assert final.finish_reason == "tool_calls" and not final.message.content
    assert _check_calls(final.message.tool_calls) == _check_calls(whole.choices[0].message.tool_calls)
    assert final.message.tool_calls[0].id == head.id


@pytest.mark.parametrize("stream", [False, True])
def test_a_two_step_conversation(client, stream):
    first = client.chat.completions.create(model="tiny", messages=QUESTION, tools=TOOLS, tool_choice="required",
                                           parallel_tool_calls=False, temperature=0, max_tokens=200)
    call = first.choices[0].message.tool_calls[0]
    (name, _), = _check_calls([call])
    result = {"get_weather": "Sunny, 24 C", "get_time": "12:00"}[name]
    conversation = QUESTION + [
        first.choices[0].message.model_dump(exclude_none=True),  # the assistant's calls, content null
        {"role": "tool", "tool_call_id": call.id, "content": result},
    ]
    assert conversation[1]["tool_calls"][0]["id"] == call.id and "content" not in conversation[1]
    kwargs = dict(model="tiny", messages=conversation, tools=TOOLS, temperature=0, max_tokens=8)
    if stream:
        state = ChatCompletionStreamState()
        chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
        for chunk in chunks:
            state.handle_chunk(chunk)
        answer = state.current_completion_snapshot  # (get_final_completion refuses a reply cut by max_tokens)
        usage = chunks[-1].usage
    else:
        answer = client.chat.completions.create(**kwargs)
        usage = answer.usage
    choice = answer.choices[0]
    assert choice.finish_reason in ("stop", "length") and not choice.message.tool_calls
    assert isinstance(choice.message.content, str) and choice.message.content
    # the call and its result are in the prompt
    assert usage.prompt_tokens > first.usage.prompt_tokens
    again = client.chat.completions.create(**kwargs)
    assert again.choices[0].message.content == choice.message.content  # greedy: streamed or not, the same


def test_tool_choice_none_prompts_as_without_tools(client):
    plain = client.chat.completions.create(model="tiny", messages=QUESTION, temperature=0, max_tokens=6)
    none = client.chat.completions.create(model="tiny", messages=QUESTION, tools=TOOLS, tool_choice="none",
                                          temperature=0, max_tokens=6)
    auto = client.chat.completions.create(model="tiny", messages=QUESTION, tools=TOOLS, temperature=0, max_tokens=6)
    # this template shows no tools: "none" adds nothing, "auto" adds the tool instruction
    assert none.usage.prompt_tokens == plain.usage.prompt_tokens < auto.usage.prompt_tokens
    assert none.choices[0].message.content == plain.choices[0].message.content
    assert none.choices[0].message.tool_calls is None and none.choices[0].finish_reason in ("stop", "length")


def test_bad_tool_requests(client):
    with pytest.raises(openai.BadRequestError, match="tool_choice: names the function 'nope'"):
        client.chat.completions.create(model="tiny", messages=QUESTION, tools=TOOLS,
                                       tool_choice={"type": "function", "function": {"name": "nope"}})
    with pytest.raises(openai.BadRequestError, match=r"messages\[1\].tool_calls\[0\].function.arguments"):
        client.chat.completions.create(model="tiny", tools=TOOLS, messages=QUESTION + [
            {"role": "assistant", "tool_calls": [{"id": "c", "type": "function",
                                                  "function": {"name": "get_time", "arguments": "{zone"}}]}])
