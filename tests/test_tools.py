"""Tool calls in the generation layer (llmcli.generation.tools): each family's replies read into
content and calls (whole and streamed piece by piece, the same), a chat template recognised and
given tools, calls and results (small templates written here in each family's format, and one
without tool support: the generic fallback), requests checked, grammar rules renamed, and a reply
read while the real engine decodes it."""

from __future__ import annotations

import json
import random
import re

import jsonschema
import pytest

from llmcli.errors import BadInputError
from llmcli.generation.chat import ChatTemplate
from llmcli.generation.tools import (GENERIC, HERMES, LLAMA3, MISTRAL, ArgumentsPart, CallHead, ReplyReader,
                                     TemplateCaps, ToolCall, ToolChat, ToolChoice, detect_format, parse_tool_choice,
                                     parse_tools, rename_rules, template_caps, tool_call_grammar)

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
TOOLS = [WEATHER, TIME]


def read_whole(fmt, text):
    reader = ReplyReader(fmt)
    items = reader.feed(text) + reader.finish()
    return reader, items


def read_in_pieces(fmt, text, cuts):
    reader = ReplyReader(fmt)
    items = []
    for a, b in zip([0, *cuts], [*cuts, len(text)]):
        items += reader.feed(text[a:b])
    return reader, items + reader.finish()


def calls_of(reader):
    return [(c.name, json.loads(c.arguments)) for c in reader.tool_calls]


# (format, reply, expected content, expected calls)
REPLIES = [
    # Hermes (Qwen2.5, Qwen3): blocks anywhere, text around them
    (HERMES, '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
     None, [("get_weather", {"city": "Paris"})]),
    (HERMES, 'Let me look.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
             '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>',
     "Let me look.", [("get_weather", {"city": "Paris"}), ("get_time", {})]),
    (HERMES, '<tool_call>{"name": "get_weather", "arguments": "{\\"city\\": \\"Oslo\\"}"}</tool_call>\nDone.',
     "Done.", [("get_weather", {"city": "Oslo"})]),  # arguments as JSON text, content after the call
    (HERMES, '<tool_call>\n{"name": "get_weather", "arguments": {"city": "a } in a string"}}',
     None, [("get_weather", {"city": "a } in a string"})]),  # no close tag at the end: still a call
    (HERMES, 'Try <tool_call>{"name": "get_weather", "arguments": {"city": }}</tool_call> later',
     'Try <tool_call>{"name": "get_weather", "arguments": {"city": }}</tool_call> later', []),  # malformed JSON
    (HERMES, '<tool_call>{"arguments": {}}</tool_call>', '<tool_call>{"arguments": {}}</tool_call>', []),  # no name
    (HERMES, "I like <tools> and <tool_", "I like <tools> and <tool_", []),  # a marker's beginning, never more
    (HERMES, "  just text  \n", "  just text  \n", []),
    # Llama 3.x: the reply is the call, or <|python_tag|> and the call
    (LLAMA3, '{"name": "get_weather", "parameters": {"city": "Paris"}}', None, [("get_weather", {"city": "Paris"})]),
    (LLAMA3, ' {"type": "function", "name": "get_time", "parameters": {}} ', None, [("get_time", {})]),
    (LLAMA3, '{"name": "get_weather", "parameters": {"city": "Paris"}}\n{"name": "get_time", "parameters": {}}',
     None, [("get_weather", {"city": "Paris"}), ("get_time", {})]),
    (LLAMA3, 'Checking.<|python_tag|>{"name": "get_weather", "parameters": {"city": "Rome"}}',
     "Checking.", [("get_weather", {"city": "Rome"})]),
    (LLAMA3, '<|python_tag|>brave_search.call(query="weather in Rome", count=3)',
     None, [("brave_search", {"query": "weather in Rome", "count": 3})]),
    (LLAMA3, '<|python_tag|>print(open("x").read())', '<|python_tag|>print(open("x").read())', []),  # not a call
    (LLAMA3, 'The JSON is {"name": "get_time", "parameters": {}}',
     'The JSON is {"name": "get_time", "parameters": {}}', []),  # JSON after text is not a call
    (LLAMA3, '{"name": "get_weather", "parameters": {"city": "Paris"}', '{"name": "get_weather", '
             '"parameters": {"city": "Paris"}', []),  # unclosed
    (LLAMA3, "{curly} but not JSON", "{curly} but not JSON", []),
    # Mistral: text, then [TOOL_CALLS] and a list of calls (their ids kept)
    (MISTRAL, '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Lima"}, "id": "a1b2c3d4e"}, '
              '{"name": "get_time", "arguments": {}}]', None, [("get_weather", {"city": "Lima"}), ("get_time", {})]),
    (MISTRAL, 'Sure. [TOOL_CALLS] [{"name": "get_time", "arguments": {}}]', "Sure.", [("get_time", {})]),
    (MISTRAL, '[TOOL_CALLS][{"name": "get_time", "arguments": [1]}]',
     '[TOOL_CALLS][{"name": "get_time", "arguments": [1]}]', []),  # arguments not an object
    # generic: the reply is one JSON object
    (GENERIC, '{"tool_call": {"name": "get_weather", "arguments": {"city": "Paris"}}}',
     None, [("get_weather", {"city": "Paris"})]),
    (GENERIC, '\n{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}, '
              '{"name": "get_time", "arguments": {}}]}', None, [("get_weather", {"city": "Paris"}), ("get_time", {})]),
    (GENERIC, '{"response": "It is sunny."}', "It is sunny.", []),
    (GENERIC, "It is sunny.", "It is sunny.", []),
    (GENERIC, '{"tool_call": {"name": "get_weather", "arguments": {"city": "Paris"}}', '{"tool_call": {"name": '
              '"get_weather", "arguments": {"city": "Paris"}}', []),  # one brace short
    (GENERIC, 'Answer: {"tool_call": {"name": "get_time", "arguments": {}}}',
     'Answer: {"tool_call": {"name": "get_time", "arguments": {}}}', []),
]


@pytest.mark.parametrize("fmt,text,content,calls", REPLIES, ids=[f"{r[0].name}-{i}" for i, r in enumerate(REPLIES)])
def test_replies_read_whole_and_streamed_alike(fmt, text, content, calls):
    whole, items = read_whole(fmt, text)
    assert whole.content == content and calls_of(whole) == calls
    assert [i for i in items if isinstance(i, ToolCall)] == whole.tool_calls
    assert "".join(i for i in items if isinstance(i, str)) == (content or "")
    rng = random.Random(len(text))
    for cuts in [list(range(1, len(text))), sorted(rng.sample(range(1, len(text)), min(5, len(text) - 1)))]:
        streamed, pieces = read_in_pieces(fmt, text, cuts)
        assert streamed.content == content and calls_of(streamed) == calls
        assert "".join(i for i in pieces if isinstance(i, str)) == (content or "")


@pytest.mark.parametrize("fmt,text,arguments", [
    (HERMES, '<tool_call>\n{"name": "f", "arguments": {"a":1,\n  "b": ["}", "\\u00e9"]}}\n</tool_call>',
     ['{"a":1,\n  "b": ["}", "\\u00e9"]}']),
    (HERMES, '<tool_call>{"name": "f", "arguments": {"a": 1}, "arguments": {"b" : 2}}</tool_call>',
     ['{"b" : 2}']),  # a repeated key: the last, as json.loads reads it
    (LLAMA3, '{"name": "f", "parameters": {"q":  "x"}}', ['{"q":  "x"}']),
    (LLAMA3, '<|python_tag|>brave_search.call(query="x")', ['{"query": "x"}']),  # not JSON: written anew
    (MISTRAL, '[TOOL_CALLS] [ {"name": "f", "arguments": {"a":1}} , {"arguments": {"b":2}, "name": "g"}]',
     ['{"a":1}', '{"b":2}']),
    (GENERIC, '{"tool_calls": [ {"name": "f", "arguments": {"a":1}}, {"name": "g", "parameters": {"b" : 2}} ] }',
     ['{"a":1}', '{"b" : 2}']),
    (GENERIC, '{ "tool_call" : {"name": "f", "arguments": "{\\"a\\": 1}"}}', ['{"a": 1}']),  # JSON text in a string
    (GENERIC, '{"tool_call": {"name": "f"}}', ['{}']),
])
def test_arguments_are_the_text_the_model_wrote(fmt, text, arguments):
    reader, _ = read_whole(fmt, text)
    assert [c.arguments for c in reader.tool_calls] == arguments


# ---- enforced replies: calls announced, arguments streamed as they come ---------------------------

def read_enforced(fmt, text, cuts):
    """(reader, items) of `text` fed to an enforced reader in the pieces `cuts` makes."""
    reader = ReplyReader(fmt, enforced=True)
    items = []
    for a, b in zip([0, *cuts], [*cuts, len(text)]):
        items += reader.feed(text[a:b])
    return reader, items + reader.finish()


def streamed_calls(items) -> list[tuple[CallHead | None, list[str] | None, ToolCall]]:
    """Each call's head, argument fragments and finished call, checked to come in that order
    (None, None, call: a call handed over whole, not announced)."""
    calls, heads, parts = [], {}, {}
    for item in items:
        if isinstance(item, CallHead):
            assert item.index == len(calls) and item.index not in heads
            heads[item.index], parts[item.index] = item, []
        elif isinstance(item, ArgumentsPart):
            assert item.index == len(calls) and item.index in heads and item.text
            parts[item.index].append(item.text)
        elif isinstance(item, ToolCall):
            calls.append((heads.get(len(calls)), parts.get(len(calls)), item))
    return calls


LONG_ARGUMENTS = json.dumps({"city": "Paris", "note": "a } and a \" and ] in a string", "days": [1, 2, {"x": None}],
                             "unit": "celsius"})
ENFORCED = [  # (format, its enforced reply)
    (HERMES, HERMES.write([ToolCall("a", "get_weather", LONG_ARGUMENTS), ToolCall("b", "get_time", "{}")])),
    (LLAMA3, LLAMA3.write([ToolCall("a", "get_weather", LONG_ARGUMENTS)])),
    (GENERIC, GENERIC.write([ToolCall("a", "get_weather", LONG_ARGUMENTS)])),
    (GENERIC, GENERIC.write([ToolCall("a", "get_weather", LONG_ARGUMENTS),
                             ToolCall("b", "get_time", '{"zone": "UTC"}')])),
    (HERMES, '<tool_call>\n{"name": "get_weather", "arguments": {"city" :\n\t\t"Lima", "days" :5\n   }}\n</tool_call>'),
]


@pytest.mark.parametrize("fmt,text", ENFORCED, ids=[f"{f.name}-{i}" for i, (f, _) in enumerate(ENFORCED)])
def test_enforced_calls_stream_their_arguments(fmt, text):
    whole, items = read_enforced(fmt, text, [])
    expected = [(c.name, c.arguments) for c in whole.tool_calls]
    assert whole.content is None and expected and [n for n, _ in expected] == [n for n, _ in calls_of(whole)]
    assert all(len(parts) == 1 for _, parts, _ in streamed_calls(items))  # whole: one fragment a call
    assert [(c.name, c.arguments) for c in read_whole(fmt, text)[0].tool_calls] == expected  # as read unenforced
    rng = random.Random(len(text))
    for cuts in [list(range(1, len(text))), sorted(rng.sample(range(1, len(text)), 12))]:
        reader, items = read_enforced(fmt, text, cuts)
        assert not [i for i in items if isinstance(i, str)] and reader.content is None
        calls = streamed_calls(items)
        assert [(c.name, c.arguments) for _, _, c in calls] == expected == [(c.name, c.arguments)
                                                                             for c in reader.tool_calls]
        for head, parts, call in calls:
            assert (head.id, head.name) == (call.id, call.name) and "".join(parts) == call.arguments
        if len(cuts) == len(text) - 1:  # fed one character at a time: each one of the arguments, as it comes
            assert [len(parts) for _, parts, _ in calls] == [len(a) for _, a in expected]
    assert len(calls[0][1]) > 1  # in a dozen pieces, the long arguments still come in several


def test_unenforced_and_mistral_calls_are_handed_over_whole():
    """tool_choice "auto": a call is handed over once it reads as one (it could still turn out
    malformed); Mistral writes a call's id after its arguments: whole too, even enforced."""
    for fmt, enforced in [(HERMES, False), (MISTRAL, True)]:
        text = fmt.write([ToolCall("a1b2c3d4e", "get_weather", LONG_ARGUMENTS)])
        reader = ReplyReader(fmt, enforced=enforced)
        items = [item for ch in text for item in reader.feed(ch)] + reader.finish()
        assert [type(i) for i in items] == [ToolCall] and items[0].arguments == LONG_ARGUMENTS


@pytest.mark.parametrize("text,content,calls", [
    # cut inside the arguments (max_tokens): the announced call stands with what was written
    ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Pa', None, [("get_weather", '{"city": "Pa')]),
    ('<tool_call>\n{"name": "get_weather", "arguments": {', None, [("get_weather", "{")]),
    # cut after a call: the unfinished syntax is dropped
    ('<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>\n<tool_call>\n{"na', None,
     [("get_time", "{}")]),
    ('<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool', None, [("get_time", "{}")]),
    # cut before any call was announced: read as usual (content, as unenforced)
    ('<tool_call>\n{"name": "get_wea', '<tool_call>\n{"name": "get_wea', []),
    # departing from the layout (the grammar rules it out): read as usual from there
    ('Hi <tool_call>{"name": "get_time", "arguments": {}}</tool_call>', "Hi", [("get_time", "{}")]),
    ('<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call> and text', "and text", [("get_time", "{}")]),
    ('<tool_call>\n{"name": "get time", "arguments": {}}\n</tool_call>', None, [("get time", "{}")]),  # not a tool name
])
def test_enforced_replies_cut_short_or_departing_read_alike_whole_and_streamed(text, content, calls):
    for cuts in [[], list(range(1, len(text)))]:
        reader, items = read_enforced(HERMES, text, cuts)
        assert reader.content == content and [(c.name, c.arguments) for c in reader.tool_calls] == calls
        assert "".join(i for i in items if isinstance(i, str)) == (content or "")
        for head, parts, call in streamed_calls(items):
            assert head is None or "".join(parts) == call.arguments


def test_call_ids():
    hermes, _ = read_whole(HERMES, '<tool_call>{"name": "get_time", "arguments": {}}</tool_call>' * 2)
    ids = [c.id for c in hermes.tool_calls]
    assert all(re.fullmatch(r"call_[A-Za-z0-9]{24}", i) for i in ids) and ids[0] != ids[1]
    mistral, _ = read_whole(MISTRAL, '[TOOL_CALLS][{"name": "get_time", "arguments": {}, "id": "a1b2c3d4e"}, '
                                     '{"name": "get_time", "arguments": {}}]')
    # the model's own id is kept; a new one is 9 letters or digits, as Mistral's templates require
    assert mistral.tool_calls[0].id == "a1b2c3d4e" and re.fullmatch(r"[A-Za-z0-9]{9}", mistral.tool_calls[1].id)


def test_text_that_may_start_a_call_is_held_back():
    reader = ReplyReader(HERMES)
    assert reader.feed("It is") == ["It is"]
    assert reader.feed(" sunny <tool") == [" sunny"]  # the blank and the marker's beginning wait
    assert reader.feed("_ca") == []
    assert reader.feed("ll>\n{\"name\": \"get_time\", ") == []
    got = reader.feed("\"arguments\": {}}\n</tool_call>")
    assert [c.name for c in got] == ["get_time"]
    assert reader.feed("\nok") == ["ok"] and reader.finish() == []
    assert reader.content == "It is sunnyok"
    plain = ReplyReader(None)  # tools not read (tool_choice "none"): every piece as it is
    assert plain.feed(" <tool") == [" <tool"] and plain.finish() == [] and plain.content == " <tool"
    generic = ReplyReader(GENERIC)
    assert generic.feed(" ") == [] and generic.feed('{"tool') == []  # may be the call the reply is
    assert "".join(generic.feed('s": 1}')) == ' {"tools": 1}'  # not a call: all of it is content


@pytest.mark.parametrize("fmt", [HERMES, LLAMA3, MISTRAL, GENERIC])
def test_written_calls_read_back(fmt):
    calls = [ToolCall("a1b2c3d4e", "get_weather", '{"city": "Paris"}'), ToolCall("f5g6h7i8j", "get_time", "{}")]
    reader, _ = read_whole(fmt, fmt.write(calls))
    assert calls_of(reader) == [("get_weather", {"city": "Paris"}), ("get_time", {})] and reader.content is None
    if fmt.with_id:
        assert [c.id for c in reader.tool_calls] == ["a1b2c3d4e", "f5g6h7i8j"]


# ---- templates ---------------------------------------------------------------------------------
# Small templates in each family's format (not the real ones: the shapes are what matters).

HERMES_TEMPLATE = (
    "{% if tools %}<|im_start|>system\n{% if messages[0].role == 'system' %}{{ messages[0].content }}\n\n{% endif %}"
    "# Tools\n<tools>\n{% for tool in tools %}{{ tool | tojson }}\n{% endfor %}</tools>\n"
    "Call a function with <tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>"
    "<|im_end|>\n{% endif %}"
    "{% for message in messages %}"
    "{% if message.role == 'system' %}"
    "{% if not tools %}<|im_start|>system\n{{ message.content }}<|im_end|>\n{% endif %}"
    "{% elif message.role == 'assistant' and message.tool_calls %}<|im_start|>assistant\n{{ message.content }}"
    "{% for call in message.tool_calls %}<tool_call>\n{\"name\": \"{{ call.function.name }}\", \"arguments\": "
    "{{ call.function.arguments | tojson }}}\n</tool_call>{% endfor %}<|im_end|>\n"
    "{% elif message.role == 'tool' %}<|im_start|>user\n<tool_response>\n{{ message.content }}\n</tool_response>"
    "<|im_end|>\n"
    "{% else %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% if tools %}<|start_header_id|>system<|end_header_id|>\n\nEnvironment: ipython\n"
    "{% for t in tools %}{{ t | tojson }}\n{% endfor %}"
    "Respond with {\"name\": function name, \"parameters\": dictionary of arguments}.<|eot_id|>{% endif %}"
    "{% for m in messages %}"
    "{% if m.role == 'tool' %}<|start_header_id|>ipython<|end_header_id|>\n\n{{ m.content }}<|eot_id|>"
    "{% elif 'tool_calls' in m %}<|start_header_id|>assistant<|end_header_id|>\n\n"
    "{\"name\": \"{{ m.tool_calls[0].function.name }}\", \"parameters\": "
    "{{ m.tool_calls[0].function.arguments | tojson }}}<|eot_id|>"
    "{% else %}<|start_header_id|>{{ m.role }}<|end_header_id|>\n\n{{ m.content }}<|eot_id|>{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m.role == 'user' %}{% if tools and m is sameas (messages | selectattr('role', 'equalto', 'user') | first) %}"
    "[AVAILABLE_TOOLS]{{ tools | tojson }}[/AVAILABLE_TOOLS]"
    "{% endif %}[INST]{{ m.content }}[/INST]"
    "{% elif m.tool_calls %}[TOOL_CALLS][{% for call in m.tool_calls %}"
    "{% if call.id | length != 9 %}{{ raise_exception('Tool call IDs should be 9 letters or digits') }}{% endif %}"
    "{\"name\": \"{{ call.function.name }}\", \"arguments\": {{ call.function.arguments | tojson }}, "
    "\"id\": \"{{ call.id }}\"}{% if not loop.last %}, {% endif %}{% endfor %}]{{ eos_token }}"
    "{% elif m.role == 'tool' %}[TOOL_RESULTS]{\"content\": {{ m.content | tojson }}, "
    "\"call_id\": \"{{ m.tool_call_id }}\"}[/TOOL_RESULTS]"
    "{% else %}{{ m.content }}{{ eos_token }}{% endif %}{% endfor %}"
)
# the tiny test models' template: nothing of tools
PLAIN_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m.role == 'user' %}[INST] {{ m.content }} [/INST]"
    "{% elif m.role == 'system' %}<<SYS>>\n{{ m.content }}\n<</SYS>>\n\n"
    "{% else %} {{ m.content }}{{ eos_token }}{% endif %}{% endfor %}"
)
# writes a call's arguments as it gets them: it wants their JSON text, not an object
STRING_ARGS_TEMPLATE = (
    "{% for m in messages %}{{ m.role }}: {{ m.content }}"
    "{% for call in m.tool_calls or [] %}<call>{{ call.function.name }} {{ call.function.arguments }}</call>"
    "{% endfor %}\n{% endfor %}"
)
# refuses a system message (as Gemma 2's template does)
NO_SYSTEM_TEMPLATE = (
    "{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "<{{ m.role }}>{{ m.content }}</{{ m.role }}>{% endfor %}"
)

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "abcDEF123", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
    {"role": "tool", "tool_call_id": "abcDEF123", "content": "22 C, sunny"},
]
WEATHER_JSON = json.dumps(WEATHER)

EXPECTED_PROMPTS = {
    "hermes": (
        HERMES_TEMPLATE,
        "<|im_start|>system\nBe brief.\n\n# Tools\n<tools>\n" + WEATHER_JSON + "\n</tools>\n"
        "Call a function with <tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n"
        "</tool_call><|im_end|>\n<|im_start|>user\nWeather in Paris?<|im_end|>\n<|im_start|>assistant\n<tool_call>\n"
        "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call><|im_end|>\n<|im_start|>user\n"
        "<tool_response>\n22 C, sunny\n</tool_response><|im_end|>\n<|im_start|>assistant\n"),
    "llama3": (
        LLAMA3_TEMPLATE,
        "<s><|start_header_id|>system<|end_header_id|>\n\nEnvironment: ipython\n" + WEATHER_JSON + "\n"
        "Respond with {\"name\": function name, \"parameters\": dictionary of arguments}.<|eot_id|>"
        "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|><|start_header_id|>user<|end_header_id|>"
        "\n\nWeather in Paris?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
        "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}<|eot_id|>"
        "<|start_header_id|>ipython<|end_header_id|>\n\n22 C, sunny<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"),
    "mistral": (
        MISTRAL_TEMPLATE,
        "<s>Be brief.</s>[AVAILABLE_TOOLS][" + WEATHER_JSON + "][/AVAILABLE_TOOLS][INST]Weather in Paris?[/INST]"
        "[TOOL_CALLS][{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}, \"id\": \"abcDEF123\"}]</s>"
        "[TOOL_RESULTS]{\"content\": \"22 C, sunny\", \"call_id\": \"abcDEF123\"}[/TOOL_RESULTS]"),
}


@pytest.mark.parametrize("name", EXPECTED_PROMPTS)
def test_a_tool_aware_template_gets_tools_calls_and_results(name):
    source, expected = EXPECTED_PROMPTS[name]
    template = ChatTemplate(source, "<s>", "</s>")
    assert detect_format(source).name == name
    caps = template_caps(template)
    assert caps.tools and caps.tool_calls and caps.object_arguments
    chat = ToolChat.prepare(template, CONVERSATION, [WEATHER])
    assert chat.prompt == expected and chat.format.name == name and chat.choice == ToolChoice("auto")
    assert chat.grammar_text is None  # "auto" is not constrained


def test_a_template_without_tools_gets_the_generic_format_written_in():
    template = ChatTemplate(PLAIN_TEMPLATE, "<s>", "</s>")
    assert detect_format(PLAIN_TEMPLATE) is GENERIC
    assert template_caps(template) == TemplateCaps(tools=False, tool_calls=False, object_arguments=False, system=True)
    chat = ToolChat.prepare(template, CONVERSATION, [WEATHER], "auto", parallel_tool_calls=False)
    system, rest = chat.prompt.split("<</SYS>>\n\n")
    assert system.startswith("<s><<SYS>>\nBe brief.\n\nYou can use these tools") and WEATHER_JSON in system
    assert '{"tool_call": {"name": "get_weather", "arguments": {"argument": "value"}}}' in system
    assert "several calls" not in system and "To answer without a tool, reply with plain text." in system
    # the earlier call in the generic format, its result as a user message
    assert rest == ('[INST] Weather in Paris? [/INST] {"tool_call": {"name": "get_weather", "arguments": '
                    '{"city": "Paris"}}}</s>[INST] {"tool_response": {"name": "get_weather", "tool_call_id": '
                    '"abcDEF123", "content": "22 C, sunny"}} [/INST]')
    named = {"type": "function", "function": {"name": "get_time"}}
    required = ToolChat.prepare(template, CONVERSATION[1:], TOOLS, named, enforce=False)
    assert required.prompt.startswith("<s><<SYS>>\nYou can use these tools")  # a system message of its own
    assert "Reply by calling the tool get_time" in required.prompt and '{"tool_calls": [' in required.prompt
    assert "plain text" not in required.prompt
    none = ToolChat.prepare(template, CONVERSATION, [WEATHER], "none")
    assert "You can use these tools" not in none.prompt and not none.reads_calls


def test_arguments_as_text_for_a_template_that_wants_text():
    template = ChatTemplate(STRING_ARGS_TEMPLATE)
    caps = template_caps(template)
    assert caps.tool_calls and not caps.object_arguments
    chat = ToolChat.prepare(template, CONVERSATION[1:3], [WEATHER])
    assert '<call>get_weather {"city": "Paris"}</call>' in chat.prompt


def test_the_instruction_goes_into_the_first_message_when_the_template_has_no_system_role():
    template = ChatTemplate(NO_SYSTEM_TEMPLATE)
    assert not template_caps(template).system
    chat = ToolChat.prepare(template, [{"role": "user", "content": "Hi"}], [WEATHER])
    assert chat.prompt.startswith("<user>You can use these tools") and chat.prompt.endswith("\n\nHi</user>")


def test_plain_chats_render_as_before():
    template = ChatTemplate(HERMES_TEMPLATE)
    messages = [{"role": "user", "content": "Hi"}]
    assert ToolChat.prepare(template, messages).prompt == template.render(messages)
    assert not ToolChat.prepare(template, messages).reads_calls


# ---- checking requests ---------------------------------------------------------------------------

@pytest.mark.parametrize("tools,choice,message", [
    ("f", None, "tools: must be a list"),
    ([{"type": "function"}], None, "tools[0].function: must be an object"),
    ([{"type": "code_interpreter"}], None, "tools[0].type: must be \"function\""),
    ([{"type": "function", "function": {"name": "a.b"}}], None, "tools[0].function.name: must be 1 to 64"),
    ([TIME, TIME], None, "tools[1].function.name: 'get_time' is the name of an earlier tool too"),
    ([{"type": "function", "function": {"name": "f", "parameters": []}}], None, "tools[0].function.parameters"),
    ([{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}], None, "must be \"object\""),
    ([{"type": "function", "function": {"name": "f", "description": 3}}], None, "description: must be a string"),
    ([], "required", "tool_choice: 'required' needs 'tools'"),
    ([TIME], "always", "tool_choice: must be one of none, auto, required"),
    ([TIME], {"type": "function", "function": {"name": "get_weather"}}, "not among the tools"),
    ([TIME], {"type": "function"}, "tool_choice: an object must be"),
    ([TIME], 3, "tool_choice: must be a string or an object"),
])
def test_bad_tools_and_tool_choice_name_the_field(tools, choice, message):
    with pytest.raises(BadInputError) as error:
        parse_tool_choice(choice, parse_tools(tools))
    assert message in str(error.value)


def test_tool_choice_defaults_and_kinds():
    tools = parse_tools(TOOLS)
    assert tools[1].parameters == {"type": "object", "properties": {}} and tools[0].to_openai() == WEATHER
    assert parse_tool_choice(None, tools) == ToolChoice("auto") and parse_tool_choice(None, []) == ToolChoice("none")
    named = parse_tool_choice({"type": "function", "function": {"name": "get_time"}}, tools)
    assert named == ToolChoice("function", "get_time") and named.calls_required
    assert parse_tool_choice("required", tools).calls_required and not parse_tool_choice("auto", tools).calls_required


@pytest.mark.parametrize("message,error", [
    ({"role": "assistant", "content": None, "tool_calls": [{"type": "function", "function": {
        "name": "f", "arguments": "{nope"}}]}, "messages[1].tool_calls[0].function.arguments: not valid JSON"),
    ({"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "[1]"}}]},
     "messages[1].tool_calls[0].function.arguments: must be a JSON object"),
    ({"role": "assistant", "tool_calls": [{"type": "web", "function": {"name": "f"}}]}, "tool_calls[0].type"),
    ({"role": "assistant", "tool_calls": [{"function": {"arguments": "{}"}}]}, "tool_calls[0].function: needs"),
    ({"role": "user", "content": "x", "tool_calls": []}, "only assistant messages make tool calls"),
    ({"role": "tool", "content": "x"}, "messages[1].tool_call_id: a tool message needs"),
])
def test_bad_messages_name_the_field(message, error):
    with pytest.raises(BadInputError, match=re.escape(error)):
        ToolChat.prepare(ChatTemplate(HERMES_TEMPLATE), [{"role": "user", "content": "Hi"}, message], TOOLS)


# ---- grammars ------------------------------------------------------------------------------------

def test_rename_rules_leaves_literals_classes_and_comments_alone():
    gbnf = ('root ::= "{" space item ("," space item)* "}"  # root ::= comment\n'
            'item ::= [a-z]{1,5} | "item ::= root" | "\\"space\\"" | [\\]root]\n'
            'space ::= " "?\n')
    assert rename_rules(gbnf, "t0-") == (
        't0-root ::= "{" t0-space t0-item ("," t0-space t0-item)* "}"  # root ::= comment\n'
        't0-item ::= [a-z]{1,5} | "item ::= root" | "\\"space\\"" | [\\]root]\n'
        't0-space ::= " "?\n')


def _stub_schema_grammar(schema: dict) -> str:
    """Stands in for schema_to_grammar: one rule per property name, like it defines `root` and `space`."""
    props = list(schema.get("properties", {}))
    body = ' "," space '.join(f'"\\"{p}\\":" space value' for p in props)
    return f'root ::= "{{" space {body} "}}" space\nvalue ::= "1"\nspace ::= " "?\n' if props else \
        'root ::= "{}" space\nspace ::= " "?\n'


@pytest.mark.parametrize("fmt,parallel,root", [
    (HERMES, False, 'root ::= "<tool_call>\\n" call "\\n</tool_call>"'),
    (HERMES, True, 'root ::= "<tool_call>\\n" call "\\n</tool_call>" ( "\\n" "<tool_call>\\n" call '
                   '"\\n</tool_call>" )*'),
    (LLAMA3, True, "root ::= call"),
    (MISTRAL, True, 'root ::= "[TOOL_CALLS][" call ( ", " call )* "]"'),
    (GENERIC, False, 'root ::= "{\\"tool_call\\": " call "}"'),
    (GENERIC, True, 'root ::= "{\\"tool_call\\": " call "}" | "{\\"tool_calls\\": [" call ( ", " call )* "]}"'),
])
def test_call_grammar_text(fmt, parallel, root):
    text = tool_call_grammar(fmt, parse_tools(TOOLS), ToolChoice("required"), parallel, _stub_schema_grammar)
    lines = text.splitlines()
    assert lines[0] == root and lines[1] == "call ::= call-0 | call-1"
    key = fmt.args_key
    head0 = json.dumps('{"name": "get_weather", "' + key + '": ')
    assert lines[2].startswith(f"call-0 ::= {head0} tool0-root ")
    assert "tool0-space ::=" in text and "tool1-space ::=" in text and "\nspace ::=" not in text
    assert ("call-id ::= " + " ".join(["[a-zA-Z0-9]"] * 9) in text) == fmt.with_id
    named = tool_call_grammar(fmt, parse_tools(TOOLS), ToolChoice("function", "get_time"), parallel,
                              _stub_schema_grammar)
    assert "call ::= call-0\n" in named and "get_weather" not in named and "get_time" in named


# ---- through the engine ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def llm():
    import llmcli
    from tests.serve_process import TINY

    return llmcli.load(TINY, threads=1, ctx_size=2048)


def _scripted(ids: list[int]):
    """A sampler that picks `ids` in turn, whatever the logits."""
    picks = iter(ids)
    return lambda logits: next(picks)


@pytest.mark.parametrize("reply,content,calls", [
    ('{"tool_call": {"name": "get_weather", "arguments": {"city": "Paris"}}}', None,
     [("get_weather", {"city": "Paris"})]),
    ("Paris is sunny today.", " Paris is sunny today.", []),
])
def test_a_reply_is_read_as_the_engine_decodes_it(llm, reply, content, calls):
    from llmcli.generation.completion import ChatCompletion

    chat = llm.prepare_chat([{"role": "user", "content": "Weather in Paris?"}], tools=TOOLS)
    assert chat.tool_chat.format is GENERIC and "You can use these tools" in llm.detokenize(chat.prompt_ids)
    ids = llm.tokenize(reply, add_special=False) + [llm.tokenizer.eos_id]
    completion = ChatCompletion(llm.scheduler, llm.scheduler.new_sequence(chat.request(sampler=_scripted(ids))),
                                chat.reader())
    pieces = list(completion)  # the text as the detokenizer hands it out, token by token
    assert completion.text.strip() == reply and completion.stop_reason == "eos"
    assert "".join(pieces) == (content or "") and completion.content == content and calls_of(completion) == calls
    message = completion.message
    assert message["role"] == "assistant" and message["content"] == content
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in message.get("tool_calls", [])] \
        == calls


def test_preserved_tokens_show_in_the_text(llm):
    from llmcli.generation import Request

    hi = llm.tokenize("Hi", add_special=False)
    bos, eos = llm.tokenizer.bos_id, llm.tokenizer.eos_id
    texts = []
    for preserved in (frozenset(), frozenset({bos})):
        request = Request(llm.tokenize("Once"), sampler=_scripted([*hi, bos, *hi, eos]), preserved_tokens=preserved)
        texts.append(llm.scheduler.new_sequence(request))
        llm.scheduler.submit(texts[-1])
    llm.scheduler.run_all()
    assert [seq.text for seq in texts] == [" Hi Hi", " Hi<s> Hi"]  # a control token: nothing, unless preserved


# ---- enforced: each family's call syntax, by grammar, from a model with random weights -------------

CITY = {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Lima"]},
                                         "days": {"type": "integer", "minimum": 1, "maximum": 9}},
        "required": ["city", "days"], "additionalProperties": False}
ZONE = {"type": "object", "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}}, "required": ["zone"],
        "additionalProperties": False}
STRICT_TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": CITY}},
                {"type": "function", "function": {"name": "get_time", "parameters": ZONE}}]
STRICT_SCHEMAS = {"get_weather": CITY, "get_time": ZONE}

# the template, and how the raw reply of a required call starts
FAMILIES = {
    "hermes": (HERMES_TEMPLATE, "<tool_call>\n{"),
    "llama3": (LLAMA3_TEMPLATE, '{"name": "'),
    "mistral": (MISTRAL_TEMPLATE, '[TOOL_CALLS][{"name": "'),
    "generic": (PLAIN_TEMPLATE, '{"tool_call": {"name": "'),
}


@pytest.fixture(scope="module")
def family_models(tmp_path_factory):
    import llmcli
    from tests.conftest import gguf_with_template
    from tests.serve_process import TINY

    folder = tmp_path_factory.mktemp("families")
    return {name: llmcli.load(gguf_with_template(TINY, folder / f"{name}.gguf", template), threads=1, ctx_size=2048)
            for name, (template, _) in FAMILIES.items()}


@pytest.mark.parametrize("family", FAMILIES)
def test_required_calls_follow_the_family_syntax_and_the_schema(family_models, family):
    llm, start = family_models[family], FAMILIES[family][1]
    assert llm.prepare_chat([{"role": "user", "content": "Hi"}], STRICT_TOOLS).tool_chat.format.name == family
    question = [{"role": "user", "content": "Weather in Paris?"}]
    named = {"type": "function", "function": {"name": "get_time"}}
    for seed, choice in [(1, "required"), (2, "required"), (3, named)]:
        reply = llm.chat(question, tools=STRICT_TOOLS, tool_choice=choice, parallel_tool_calls=False,
                         max_tokens=200, temp=1.0, seed=seed)
        pieces = list(reply)
        assert reply.stop_reason == "eos" and reply.text.lstrip().startswith(start), reply.text
        assert pieces == [] and reply.content is None and len(reply.tool_calls) == 1
        call = reply.tool_calls[0]
        assert call.name == "get_time" if choice is named else call.name in STRICT_SCHEMAS
        jsonschema.validate(json.loads(call.arguments), STRICT_SCHEMAS[call.name])
        # what the grammar made fits the format's layout: read a character at a time, the call is
        # announced and its arguments come in fragments (Mistral: whole, its id comes last)
        _, items = read_enforced(reply.reader.fmt, reply.text, list(range(1, len(reply.text))))
        (head, parts, streamed), = streamed_calls(items)
        assert (streamed.name, streamed.arguments) == (call.name, call.arguments)
        if family == "mistral":
            assert head is None
        else:
            assert head.name == call.name and "".join(parts) == call.arguments and len(parts) == len(call.arguments)
        # the next turn: the call and its result go back through the template (Mistral's checks the ids)
        following = question + [reply.message, {"role": "tool", "tool_call_id": call.id, "content": "sunny"}]
        answer = llm.chat(following, tools=STRICT_TOOLS, max_tokens=3, temp=0).run()
        assert answer.stop_reason in ("eos", "length") and answer.message["role"] == "assistant"


def test_a_schema_that_cannot_be_enforced_names_the_tool(llm):
    tools = [WEATHER, {"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"not": {"type": "string"}}}}}}]
    with pytest.raises(BadInputError, match=r"tools\[1\]\.function\.parameters: cannot be enforced"):
        llm.prepare_chat([{"role": "user", "content": "Hi"}], tools, "required")
    assert llm.prepare_chat([{"role": "user", "content": "Hi"}], tools, "auto").grammar is None  # not enforced


@pytest.mark.parametrize("fmt", [HERMES, LLAMA3, MISTRAL, GENERIC])
@pytest.mark.parametrize("parallel", [False, True])
def test_call_grammars_compile_with_real_schemas(fmt, parallel):
    from llmcli.generation.grammar import compile_grammar

    search = {"type": "function", "function": {"name": "search", "parameters": {"type": "object", "properties": {
        "query": {"type": "string"}, "limit": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string"}}}}}}
    for choice in (ToolChoice("required"), ToolChoice("function", "get_time")):
        text = tool_call_grammar(fmt, parse_tools(STRICT_TOOLS + [search]), choice, parallel)
        compile_grammar(text)  # every rule it uses is defined (GrammarError otherwise)
        defined = re.findall(r"^([A-Za-z0-9-]+) ::=", text, re.M)
        assert len(defined) == len(set(defined))  # and once: the tools' schemas do not clash


@pytest.mark.parametrize("family,reply", [
    ("hermes", 'Let me look that up.\n<tool_call>\n{"name": "get_time", "arguments": {"zone": "UTC"}}\n'
               '</tool_call>'),
    ("mistral", 'Let me look that up. [TOOL_CALLS][{"name": "get_time", "arguments": {"zone": "UTC"}, '
                '"id": "a1b2c3d4e"}]'),
    ("llama3", 'Let me look that up.<|python_tag|>{"name": "get_time", "parameters": {"zone": "UTC"}}'),
])
def test_text_then_a_call_streams_the_text_only(family_models, family, reply):
    """Through the engine and the detokenizer: the text before the call comes out as content,
    the call does not (a scripted sampler writes the reply token by token)."""
    from llmcli.generation.completion import ChatCompletion

    llm = family_models[family]
    chat = llm.prepare_chat([{"role": "user", "content": "Time?"}], STRICT_TOOLS)
    ids = llm.tokenize(reply, add_special=False) + [llm.tokenizer.eos_id]
    completion = ChatCompletion(llm.scheduler, llm.scheduler.new_sequence(chat.request(sampler=_scripted(ids))),
                                chat.reader())
    pieces = list(completion)
    assert len(pieces) > 1 and "".join(pieces) == completion.content == " Let me look that up."
    assert calls_of(completion) == [("get_time", {"zone": "UTC"})]
    assert completion.message["content"] == completion.content


def test_tools_and_a_reply_grammar_do_not_combine(llm):
    with pytest.raises(BadInputError, match="tools cannot be combined"):
        llm.chat([{"role": "user", "content": "Hi"}], tools=[WEATHER], json_schema={"type": "object"})
    reply = llm.chat([{"role": "user", "content": "Hi"}], max_tokens=8, temp=0, json_schema={"type": "object"})
    assert "".join(reply).lstrip().startswith("{")  # the schema alone constrains the chat reply
