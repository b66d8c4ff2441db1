"""The grammar (GBNF) a reply must follow when calls are required: the format's call syntax
around a JSON object matching the called tool's parameters schema.

    text = tool_call_grammar(HERMES, tools, ToolChoice("required"), parallel=False)
    # root ::= "<tool_call>\n" call "\n</tool_call>"
    # call ::= call-0 | call-1
    # call-0 ::= "{\"name\": \"get_weather\", \"arguments\": " tool0-root "}"
    # tool0-root ::= ...   (schema_to_grammar's rules for get_weather's parameters, renamed tool0-*)

Each schema's grammar comes from `llmcli.generation.grammar.schema_to_grammar`; its rules are
renamed with a per-tool prefix so that the rules of two schemas (both have a `root`, most a `space`)
cannot clash.
"""

from __future__ import annotations

import json
import re
from typing import Callable

from ...errors import BadInputError
from ..grammar import GrammarError
from ..grammar import schema_to_grammar as default_schema_to_grammar
from .formats import CALL_NAME_OPEN, ToolFormat, call_args_open
from .spec import Tool, ToolChoice

# GBNF's lexical pieces, in the order they are tried: a comment, a string literal, a character
# class (both with backslash escapes), a rule name, anything else one character at a time.
_GBNF_TOKEN = re.compile(r'#[^\n]*|"(?:\\.|[^"\\])*"|\[(?:\\.|[^\]\\])*\]|[A-Za-z0-9_-]+|.', re.S)
_DEFINITION = re.compile(r"([A-Za-z0-9_-]+)\s*::=")
CALL_ID_LENGTH = 9  # the formats whose calls carry an id (Mistral) want 9 letters or digits


def gbnf_literal(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def rename_rules(gbnf: str, prefix: str) -> str:
    """`gbnf` with every rule it defines renamed `prefix + name` (definitions and references;
    string literals, character classes and comments are left alone)."""
    defined = {m.group(1) for m in _DEFINITION.finditer(_strip_literals(gbnf))}
    return "".join(prefix + token if token in defined else token for token in _GBNF_TOKEN.findall(gbnf))


def _strip_literals(gbnf: str) -> str:
    """The text with literals, classes and comments blanked (so `"a ::= b"` defines nothing)."""
    return "".join(" " if token[:1] in ('"', "[", "#") else token for token in _GBNF_TOKEN.findall(gbnf))


def tool_call_grammar(fmt: ToolFormat, tools: list[Tool], choice: ToolChoice, parallel: bool,
                      schema_to_grammar: Callable[[dict], str] | None = None) -> str:
    """GBNF of a reply that is only calls in `fmt`'s syntax: of the tool `choice` names, else of
    any of `tools`; several when `parallel` and the format can write several."""
    schema_to_grammar = schema_to_grammar or default_schema_to_grammar
    allowed = [t for t in tools if choice.mode != "function" or t.name == choice.name]
    rules = [f"root ::= {fmt.grammar_root(parallel)}",
             "call ::= " + " | ".join(f"call-{i}" for i in range(len(allowed)))]
    for i, tool in enumerate(allowed):
        prefix = f"tool{i}-"
        head = gbnf_literal(CALL_NAME_OPEN + tool.name + call_args_open(fmt.args_key))  # names need no escapes
        parts = [head, prefix + "root"]
        if fmt.with_id:
            parts += [gbnf_literal(', "id": "'), "call-id", gbnf_literal('"')]
        parts.append(gbnf_literal("}"))
        rules.append(f"call-{i} ::= " + " ".join(parts))
        try:
            schema_rules = schema_to_grammar(tool.parameters)
        except GrammarError as e:
            index = tools.index(tool)
            raise BadInputError(f"tools[{index}].function.parameters: cannot be enforced ({choice.mode} call): "
                                f"{e}") from None
        rules.append(rename_rules(schema_rules.strip(), prefix))
    if fmt.with_id:
        rules.append("call-id ::= " + " ".join(["[a-zA-Z0-9]"] * CALL_ID_LENGTH))
    return "\n".join(rules) + "\n"
