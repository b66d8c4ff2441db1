"""Tool calls through `llmcli serve`, driven by the real `openai` client: a required call (and a
named one) comes back as OpenAI `tool_calls` whose arguments validate against the tool's schema,
streamed as OpenAI's deltas (a required call's arguments in fragments as they are written) that the
client's own accumulator reassembles into the same calls; a two-step conversation (the call, the
tool's result, the answer) streamed and not; tool_choice "none" leaves the prompt as without tools.
The tiny llama has random weights and a template without tool support (the generic format): the
grammar is what makes its calls valid. In process, a written-out reply's stream: fragments when
enforced, one when not, a cut call kept.
"""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import jsonschema
import openai
import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletionChunk

from llmcli.generation import Event
from llmcli.generation.tools import HERMES, ReplyReader, ToolCall
from llmcli.server.app import _chat_events
from llmcli.server.responses import ChatShapes
from llmcli.server.schemas import ChatCompletionRequest
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


def _streamed(client, **kwargs):
    """A streamed reply: (its chunks, the client's own accumulation of them)."""
    state = ChatCompletionStreamState()
    chunks = []
    for chunk in client.chat.completions.create(stream=True, **kwargs):
        chunks.append(chunk)
        state.handle_chunk(chunk)
    return chunks, state.get_final_completion().choices[0]


def _as_sent(calls) -> list[tuple[str, str]]:
    """(name, arguments text) of each call: the text exactly as it came."""
    return [(c.function.name, c.function.arguments) for c in calls]


def test_parallel_calls(client):
    counts = []
    for seed in (5, 6, 7):
        kwargs = dict(model="tiny", messages=QUESTION, tools=TOOLS, tool_choice="required", temperature=1.0,
                      seed=seed, max_tokens=400)
        reply = client.chat.completions.create(**kwargs)
        calls = reply.choices[0].message.tool_calls
        assert reply.choices[0].finish_reason == "tool_calls" and len({c.id for c in calls}) == len(calls) >= 1
        _check_calls(calls)
        counts.append(len(calls))
        # streamed, the same seed: each call's deltas under its own index, reassembled to the same calls
        chunks, final = _streamed(client, **kwargs)
        heads = [d.index for c in chunks if c.choices for d in (c.choices[0].delta.tool_calls or []) if d.id]
        assert heads == list(range(len(calls))) and _as_sent(final.message.tool_calls) == _as_sent(calls)
    assert max(counts) >= 2  # the parallel form ({"tool_calls": [...]}) is read as several calls


@pytest.mark.parametrize("sampling", [{"temperature": 0}, {"temperature": 1.0, "seed": 4}])
def test_streamed_calls_reassemble(client, sampling):
    kwargs = dict(model="tiny", messages=QUESTION, tools=TOOLS, tool_choice="required", parallel_tool_calls=False,
                  max_tokens=200, **sampling)
    whole = client.chat.completions.create(**kwargs)
    chunks, final = _streamed(client, **kwargs)
    deltas = [d for c in chunks if c.choices for d in (c.choices[0].delta.tool_calls or [])]
    # OpenAI's order: the call's index, id, type and name with empty arguments, then the arguments'
    # text as the model writes it, a fragment at a time
    head, *fragments = deltas
    assert head.index == 0 and head.id.startswith("call_") and head.type == "function"
    assert head.function.name in SCHEMAS and head.function.arguments == ""
    assert len(fragments) > 1 and all(f.index == 0 and f.id is None and f.type is None and f.function.name is None
                                      and f.function.arguments for f in fragments)
    assert "".join(f.function.arguments for f in fragments) == whole.choices[0].message.tool_calls[0].function.arguments
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["tool_calls"]
    # the client's own accumulation of the deltas is the call the whole reply makes, to the letter
    assert final.finish_reason == "tool_calls" and not final.message.content
    assert _as_sent(final.message.tool_calls) == _as_sent(whole.choices[0].message.tool_calls)
    assert _check_calls(final.message.tool_calls) == _check_calls(whole.choices[0].message.tool_calls)
    assert final.message.tool_calls[0].id == head.id


class _Replay:
    """Stands in for an EngineStream: a reply's text in the given pieces, then its end."""

    prompt_tokens = 1

    def __init__(self, pieces: list[str], stop_reason: str):
        self.pieces, self.stop_reason = pieces, stop_reason

    async def events(self, ping_interval=None):
        for piece in self.pieces:
            yield Event(text=piece)
        yield Event(done=True, stop_reason=self.stop_reason)

    def completion_tokens(self) -> int:
        return len(self.pieces)

    def cached_tokens(self) -> int:
        return 0

    def close(self) -> None:
        pass


def _sse_of(reader, text: str, stop_reason: str = "eos"):
    """The chunks `llmcli serve` streams for `text` coming a character at a time, as the openai
    client parses them, and the client's own accumulation of them."""
    body = ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": "Hi"}], "stream": True})
    request = SimpleNamespace(state=SimpleNamespace())

    async def run():
        return [event async for event in _chat_events(_Replay(list(text), stop_reason), ChatShapes("tiny"), body,
                                                      reader, None, request, 10.0)]

    raw = [line[len(b"data: "):] for event in asyncio.run(run()) for line in event.split(b"\n") if line]
    assert raw[-1] == b"[DONE]"
    chunks = [ChatCompletionChunk.model_validate(json.loads(r)) for r in raw[:-1]]
    state = ChatCompletionStreamState()
    for chunk in chunks:
        state.handle_chunk(chunk)
    deltas = [d for c in chunks for d in (c.choices[0].delta.tool_calls or [])]
    return deltas, state.current_completion_snapshot.choices[0]


def test_the_stream_of_an_enforced_reply_and_of_an_auto_one():
    """In process, a reply written out: the same calls come out of both streams, with the arguments
    in fragments as they come when the grammar holds the reply to the syntax (required, named), in
    one fragment when it does not (auto: a call that turned out malformed could not be taken back);
    a reply cut inside a call's arguments keeps the call as written, finish_reason "length"."""
    text = HERMES.write([ToolCall("a", "get_weather", '{"city": "Paris", "unit": "celsius", "days": 3}'),
                         ToolCall("b", "get_time", '{"zone": "UTC"}')])
    for enforced in (True, False):
        deltas, choice = _sse_of(ReplyReader(HERMES, enforced=enforced), text)
        heads = [d for d in deltas if d.id]
        assert [(h.index, h.type, h.function.name, h.function.arguments) for h in heads] == \
            [(0, "function", "get_weather", ""), (1, "function", "get_time", "")]
        fragments = [[d.function.arguments for d in deltas if not d.id and d.index == i] for i in (0, 1)]
        assert all(d.function.name is None and d.type is None for d in deltas if not d.id)
        if enforced:  # a fragment a character (the pieces here)
            assert [len(f) for f in fragments] == [len('{"city": "Paris", "unit": "celsius", "days": 3}'),
                                                   len('{"zone": "UTC"}')]
        else:
            assert [len(f) for f in fragments] == [1, 1]
        assert choice.finish_reason == "tool_calls" and not choice.message.content
        assert _as_sent(choice.message.tool_calls) == [("get_weather", '{"city": "Paris", "unit": "celsius", '
                                                                       '"days": 3}'), ("get_time", '{"zone": "UTC"}')]
        assert [c.id for c in choice.message.tool_calls] == [h.id for h in heads]
    cut = text[:text.index('"unit"')]  # max_tokens ran out inside the first call's arguments
    deltas, choice = _sse_of(ReplyReader(HERMES, enforced=True), cut, stop_reason="length")
    assert choice.finish_reason == "length" and _as_sent(choice.message.tool_calls) == \
        [("get_weather", '{"city": "Paris", ')]
    whole = ReplyReader(HERMES, enforced=True)  # the same reply, not streamed
    whole.feed(cut)
    whole.finish()
    assert [(c.name, c.arguments) for c in whole.tool_calls] == [("get_weather", '{"city": "Paris", ')]


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
