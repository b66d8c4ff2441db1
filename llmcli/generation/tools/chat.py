"""A chat request with tools: rendered through the model's own template, constrained when calls are
required, read back into content and calls.

    chat = ToolChat.prepare(template, messages, tools=[...], tool_choice="auto")
    chat.prompt          # the text to tokenize
    chat.grammar_text    # GBNF the reply must follow (tool_choice "required" or a named function), or None
    reader = chat.reader()   # a ReplyReader in the template's format (plain text when no tool is callable;
                             # enforced when the grammar is: calls stream their arguments)

The template gets what transformers' `apply_chat_template` gives it: `tools` as OpenAI's tool dicts,
assistant messages with `tool_calls` (arguments as an object when the template shows them that way,
else as JSON text; content "" rather than null, as llama.cpp passes it, since templates such as
Qwen3's read it as a string) and `tool` messages with `tool_call_id` (and `name`, taken from the call
when the client leaves it out). What a template can show is found by rendering probes
(`template_caps`); what it cannot is written in for it, in the generic format (llama.cpp's generic
handler and minja's polyfills are the guide): the tools and the reply format as a system
instruction, earlier calls as the assistant's text, tool results as user messages.

tool_choice "none" does as llama.cpp does: the template still sees the tools (a conversation
that used them renders the same), nothing is constrained and the reply is not read for calls.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from typing import Any

from ...errors import BadInputError
from ..chat import ChatTemplate
from .formats import GENERIC, ToolFormat, detect_format
from .grammar import tool_call_grammar
from .reader import ReplyReader
from .spec import Tool, ToolCall, ToolChoice, arguments_text, parse_tool_choice, parse_tools

# Probe values: nothing a real conversation would hold.
_PROBE_TOOL, _PROBE_CALL = "llmcli_probe_tool_7f3a", "llmcli_probe_call_7f3a"
_PROBE_VALUE = "llmcli_probe_value_7f3a"
_PROBE_CALL_ID = "call00001"  # 9 letters or digits: Mistral's templates refuse any other id


@dataclass(frozen=True)
class TemplateCaps:
    """What a chat template shows of tools (found by rendering, as llama.cpp's jinja caps do)."""

    tools: bool  # the tool list given as `tools`
    tool_calls: bool  # assistant messages' tool_calls (and so tool messages)
    object_arguments: bool  # a tool call's arguments given as an object (else: as JSON text)
    system: bool = True  # a system message (Gemma 2's refuses it)


def template_caps(template: ChatTemplate) -> TemplateCaps:
    return _caps(template.source, template.bos_token, template.eos_token)


@functools.lru_cache(maxsize=16)
def _caps(source: str, bos: str, eos: str) -> TemplateCaps:
    template = ChatTemplate(source, bos, eos)
    probe_tool = Tool(_PROBE_TOOL, "probe", {"type": "object", "properties": {"arg": {"type": "string"}}})

    def shows(needle: str, messages: list[dict]) -> bool:
        try:
            return needle in template.render(messages, add_generation_prompt=True, tools=[probe_tool.to_openai()])
        except BadInputError:  # a template that refuses the probe does not show it
            return False

    def with_call(arguments) -> list[dict]:
        call = {"id": _PROBE_CALL_ID, "type": "function", "function": {"name": _PROBE_CALL, "arguments": arguments}}
        return [{"role": "user", "content": "a question"},
                {"role": "assistant", "content": "", "tool_calls": [call]},
                {"role": "tool", "content": "a result", "tool_call_id": _PROBE_CALL_ID, "name": _PROBE_CALL},
                {"role": "assistant", "content": "an answer"},
                {"role": "user", "content": "another question"}]

    tools = shows(_PROBE_TOOL, [{"role": "user", "content": "a question"}])
    # arguments given as an object must show as the template's own writing of them, not as the
    # Python dict a template that expects JSON text prints ({'arg': '...'})
    object_arguments = shows(_PROBE_VALUE, with_call({"arg": _PROBE_VALUE})) and \
        not shows(repr({"arg": _PROBE_VALUE}), with_call({"arg": _PROBE_VALUE}))
    tool_calls = object_arguments or shows(_PROBE_CALL, with_call(json.dumps({"arg": _PROBE_VALUE})))
    system = shows(_PROBE_VALUE, [{"role": "system", "content": _PROBE_VALUE},
                                  {"role": "user", "content": "a question"}])
    return TemplateCaps(tools, tool_calls, object_arguments, system)


@dataclass
class ToolChat:
    """One chat request made ready: its prompt text, the format the template speaks, the tools and
    choice, and the grammar text when calls are required."""

    prompt: str
    format: ToolFormat
    tools: list[Tool] = field(default_factory=list)
    choice: ToolChoice = ToolChoice("none")
    parallel: bool = True
    grammar_text: str | None = None

    @property
    def reads_calls(self) -> bool:
        return bool(self.tools) and self.choice.mode != "none"

    def reader(self) -> ReplyReader:
        """The reply's reader; a reply the grammar holds to the call syntax streams each call's
        arguments as they come (formats with layouts)."""
        return ReplyReader(self.format if self.reads_calls else None, enforced=self.grammar_text is not None)

    def read(self, text: str) -> ReplyReader:
        """A whole reply, read."""
        reader = self.reader()
        reader.feed(text)
        reader.finish()
        return reader

    @classmethod
    def prepare(cls, template: ChatTemplate, messages: list[dict], tools: Any = None, tool_choice: Any = None,
                parallel_tool_calls: bool = True, enforce: bool = True) -> "ToolChat":
        """Check the request, render the prompt and (enforce=True and calls required) the grammar."""
        if not isinstance(parallel_tool_calls, bool):
            raise BadInputError("parallel_tool_calls: must be true or false")
        tool_list = parse_tools(tools)
        choice = parse_tool_choice(tool_choice, tool_list)
        fmt = detect_format(template.source)
        uses_tools = bool(tool_list) or isinstance(messages, (list, tuple)) and any(
            isinstance(m, dict) and (m.get("tool_calls") or m.get("role") == "tool") for m in messages)
        # a plain chat renders as it always did, without probing the template
        caps = template_caps(template) if uses_tools else TemplateCaps(False, True, True)
        conversation = template_messages(messages, caps.object_arguments)
        if not caps.tool_calls:
            conversation = _write_in_calls_and_results(conversation, fmt)
        if tool_list and choice.mode != "none" and not caps.tools:
            instruction = tool_instruction(fmt, tool_list, choice, parallel_tool_calls)
            conversation = _with_instruction(conversation, instruction, caps.system)
        offered = [t.to_openai() for t in tool_list] or None
        prompt = template.render(conversation, add_generation_prompt=True, tools=offered)
        chat = cls(prompt, fmt, tool_list, choice, parallel_tool_calls)
        if enforce and tool_list and choice.calls_required:
            chat.grammar_text = tool_call_grammar(fmt, tool_list, choice, parallel_tool_calls)
        return chat


def template_messages(messages: list[dict], object_arguments: bool = True) -> list[dict]:
    """OpenAI messages as templates take them (see the module docstring); checked, copied."""
    if not isinstance(messages, (list, tuple)):
        raise BadInputError(f"messages: must be a list of messages, got {type(messages).__name__}")
    out: list[dict] = []
    call_names: dict[str, str] = {}
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise BadInputError(f"messages[{i}]: must be an object, got {type(message).__name__}")
        message = dict(message)
        calls = message.get("tool_calls")
        if calls is not None:
            if message.get("role") != "assistant":
                raise BadInputError(f"messages[{i}].tool_calls: only assistant messages make tool calls")
            if not isinstance(calls, (list, tuple)):
                raise BadInputError(f"messages[{i}].tool_calls: must be a list")
            message["tool_calls"] = [_template_call(c, f"messages[{i}].tool_calls[{j}]", object_arguments)
                                     for j, c in enumerate(calls)]
            call_names.update((c["id"], c["function"]["name"]) for c in message["tool_calls"])
            if message.get("content") is None:
                message["content"] = ""
            if not message["tool_calls"]:
                del message["tool_calls"]  # an empty list: as if none (`'tool_calls' in message` tests)
        elif "tool_calls" in message:
            del message["tool_calls"]
        if message.get("role") == "tool":
            call_id = message.get("tool_call_id")
            if not isinstance(call_id, str):
                raise BadInputError(f"messages[{i}].tool_call_id: a tool message needs the id of the call it answers")
            if message.get("name") is None and call_id in call_names:
                message["name"] = call_names[call_id]
        out.append(message)
    return out


def _template_call(call: Any, where: str, object_arguments: bool) -> dict:
    if not isinstance(call, dict):
        raise BadInputError(f"{where}: must be an object")
    if call.get("type", "function") != "function":
        raise BadInputError(f"{where}.type: must be \"function\", got {call.get('type')!r}")
    function = call.get("function")
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise BadInputError(f"{where}.function: needs the function's name and arguments")
    arguments = arguments_text(function.get("arguments", {}), f"{where}.function.arguments")
    call_id = call.get("id")
    if call_id is not None and not isinstance(call_id, str):
        raise BadInputError(f"{where}.id: must be a string")
    return {"id": call_id or "", "type": "function",
            "function": {"name": function["name"],
                         "arguments": json.loads(arguments) if object_arguments else arguments}}


# -- what a template cannot show, written in ---------------------------------------------------


def _write_in_calls_and_results(messages: list[dict], fmt: ToolFormat) -> list[dict]:
    """Assistant calls as the text the model writes them in; tool results as user messages."""
    out = []
    for m in messages:
        if "tool_calls" in m:
            calls = [ToolCall(c["id"], c["function"]["name"], _arguments_json(c["function"]["arguments"]))
                     for c in m["tool_calls"]]
            text = "\n".join(part for part in (m.get("content") or "", fmt.write(calls)) if part)
            out.append({k: v for k, v in m.items() if k != "tool_calls"} | {"content": text})
        elif m.get("role") == "tool":
            result = {"name": m.get("name"), "tool_call_id": m["tool_call_id"], "content": m.get("content")}
            out.append({"role": "user", "content": json.dumps({"tool_response": result}, ensure_ascii=False)})
        else:
            out.append(m)
    return out


def _arguments_json(arguments: Any) -> str:
    return arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)


def tool_instruction(fmt: ToolFormat, tools: list[Tool], choice: ToolChoice, parallel: bool) -> str:
    """The system instruction for a template that does not show tools: the tools, and how to call."""
    described = "\n".join(json.dumps(t.to_openai(), ensure_ascii=False) for t in tools)
    example = ToolCall("call_1", tools[0].name if choice.mode != "function" else choice.name,
                       json.dumps({"argument": "value"}))
    how = {
        "auto": "To call a tool, reply with only this, the arguments matching the tool's parameters schema:",
        "required": "Reply with a tool call, and only with it, the arguments matching the tool's parameters "
                    "schema:",
        "function": f"Reply by calling the tool {choice.name}, and only with that call, the arguments matching "
                    f"its parameters schema:",
    }[choice.mode]
    several = ("" if not parallel or fmt is not GENERIC else
               f"\nTo make several calls at once: {fmt.write([example, example])}")
    after = "\nTo answer without a tool, reply with plain text." if choice.mode == "auto" else ""
    return (f"You can use these tools (functions); each one's parameters are a JSON schema:\n{described}\n\n"
            f"{how}\n{fmt.write([example])}{several}{after}")


def _with_instruction(messages: list[dict], instruction: str, system_role: bool) -> list[dict]:
    """The instruction in the system message (after the one the conversation has), or, for a
    template without a system role, at the start of the first message (as llama.cpp folds a system
    message into the next one)."""
    first = messages[0] if messages else None
    if first is not None and isinstance(first.get("content"), str) and \
            (first.get("role") == "system" or not system_role):
        joined = first["content"] + "\n\n" + instruction if first.get("role") == "system" else \
            instruction + "\n\n" + first["content"]
        return [dict(first, content=joined), *messages[1:]]
    return [{"role": "system", "content": instruction}, *messages]
