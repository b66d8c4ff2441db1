"""What a request says about tools, checked: OpenAI's function tools, `tool_choice`, and the calls
a reply makes.

    tools = parse_tools([{"type": "function", "function": {"name": "get_weather", "parameters": {...}}}])
    choice = parse_tool_choice("required", tools)          # ToolChoice("required")
    call = ToolCall("call_x1", "get_weather", '{"city": "Paris"}')
    call.to_openai()   # {"id": ..., "type": "function", "function": {"name": ..., "arguments": "..."}}

Errors are `BadInputError`s whose message starts with the field at fault (`tools[1].function.name:
...`), so a server can hand them on as they are.
"""

from __future__ import annotations

import json
import re
import secrets
import string
from dataclasses import dataclass, field
from typing import Any

from ...errors import BadInputError

# OpenAI's rule for function names; it also keeps names safe inside grammars and JSON literals.
TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
TOOL_CHOICE_MODES = ("none", "auto", "required")
EMPTY_PARAMETERS = {"type": "object", "properties": {}}
_ALNUM = string.ascii_letters + string.digits


@dataclass(frozen=True)
class Tool:
    """One function the model may call: its parameters are a JSON schema of the arguments object."""

    name: str
    description: str | None = None
    parameters: dict = field(default_factory=lambda: dict(EMPTY_PARAMETERS))

    def to_openai(self) -> dict:
        """The tool as OpenAI's API (and chat templates, as transformers passes them) write it."""
        function: dict[str, Any] = {"name": self.name}
        if self.description is not None:
            function["description"] = self.description
        function["parameters"] = self.parameters
        return {"type": "function", "function": function}


@dataclass(frozen=True)
class ToolChoice:
    """"none": tools are not called; "auto": the model decides; "required": at least one call;
    "function": a call of `name`."""

    mode: str
    name: str | None = None

    @property
    def calls_required(self) -> bool:
        return self.mode in ("required", "function")


@dataclass(frozen=True)
class ToolCall:
    """A call a reply makes: `arguments` is the arguments object as JSON text (OpenAI's shape)."""

    id: str
    name: str
    arguments: str

    def to_openai(self) -> dict:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}

    def arguments_object(self) -> dict:
        return json.loads(self.arguments)


def openai_call_id() -> str:
    """An id in OpenAI's style: call_ and 24 letters or digits."""
    return "call_" + random_alnum(24)


def random_alnum(n: int) -> str:
    return "".join(secrets.choice(_ALNUM) for _ in range(n))


def parse_tools(value: Any) -> list[Tool]:
    """`tools` of a request: None or a list of {"type": "function", "function": {name, description,
    parameters}}; names unique."""
    if value is None:
        return []
    if not isinstance(value, (list, tuple)):
        raise BadInputError(f"tools: must be a list of tools, got {type(value).__name__}")
    tools: list[Tool] = []
    seen: set[str] = set()
    for i, item in enumerate(value):
        where = f"tools[{i}]"
        if not isinstance(item, dict):
            raise BadInputError(f"{where}: must be an object, got {type(item).__name__}")
        if item.get("type") != "function":
            raise BadInputError(f"{where}.type: must be \"function\" (the only kind of tool), got {item.get('type')!r}")
        function = item.get("function")
        if not isinstance(function, dict):
            raise BadInputError(f"{where}.function: must be an object with the function's name and parameters")
        name = function.get("name")
        if not isinstance(name, str) or not TOOL_NAME.fullmatch(name):
            raise BadInputError(f"{where}.function.name: must be 1 to 64 letters, digits, '_' or '-', got {name!r}")
        if name in seen:
            raise BadInputError(f"{where}.function.name: {name!r} is the name of an earlier tool too")
        seen.add(name)
        description = function.get("description")
        if description is not None and not isinstance(description, str):
            raise BadInputError(f"{where}.function.description: must be a string")
        parameters = function.get("parameters")
        if parameters is None:
            parameters = dict(EMPTY_PARAMETERS)
        if not isinstance(parameters, dict):
            raise BadInputError(f"{where}.function.parameters: must be a JSON schema object, "
                                f"got {type(parameters).__name__}")
        if parameters.get("type", "object") != "object":
            raise BadInputError(f"{where}.function.parameters: the arguments are an object: the schema's type "
                                f"must be \"object\", got {parameters.get('type')!r}")
        tools.append(Tool(name, description, parameters))
    return tools


def parse_tool_choice(value: Any, tools: list[Tool]) -> ToolChoice:
    """`tool_choice`: "none", "auto" (the default when tools are given), "required", or
    {"type": "function", "function": {"name": ...}} naming one of `tools`."""
    if value is None:
        return ToolChoice("auto" if tools else "none")
    if isinstance(value, str):
        if value not in TOOL_CHOICE_MODES:
            raise BadInputError(f"tool_choice: must be one of {', '.join(TOOL_CHOICE_MODES)} or "
                                f"{{\"type\": \"function\", \"function\": {{\"name\": ...}}}}, got {value!r}")
        choice = ToolChoice(value)
    elif isinstance(value, dict):
        function = value.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if value.get("type") != "function" or not isinstance(name, str):
            raise BadInputError("tool_choice: an object must be {\"type\": \"function\", \"function\": "
                                "{\"name\": ...}}")
        if name not in {t.name for t in tools}:
            raise BadInputError(f"tool_choice: names the function {name!r}, which is not among the tools")
        choice = ToolChoice("function", name)
    else:
        raise BadInputError(f"tool_choice: must be a string or an object, got {type(value).__name__}")
    if choice.calls_required and not tools:
        raise BadInputError(f"tool_choice: {value!r} needs 'tools'")
    return choice


def arguments_text(value: Any, where: str) -> str:
    """A call's arguments as JSON text of an object: given as an object, or as its JSON text."""
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except ValueError as e:
            raise BadInputError(f"{where}: not valid JSON: {e}") from None
        if not isinstance(parsed, dict):
            raise BadInputError(f"{where}: must be a JSON object, got {type(parsed).__name__}")
        return value
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False)
    raise BadInputError(f"{where}: must be a JSON object or its JSON text, got {type(value).__name__}")
