"""The tool-call formats of model families: how a chat template is recognised, how the model writes
a call, how that text is read back, and the grammar that makes it write one.

    fmt = detect_format(template_source)      # HERMES, LLAMA3, MISTRAL, else GENERIC
    fmt.write([call])                          # the call as the model writes it
    fmt.openers / fmt.opening                  # where a call starts in a reply -> how to read it

* hermes — Qwen2.5, Qwen3, Hermes 2/3 (template holds `<tool_call>`): one block per call,
  `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, text around them;
* llama3 — Llama 3.1/3.2/3.3 (an `ipython` header): the reply is `{"name": ..., "parameters": {...}}`,
  or text then `<|python_tag|>` and that JSON or a built-in tool's `name.call(key="value")`;
* mistral — Mistral Nemo / Small (`[TOOL_CALLS]`): text, then
  `[TOOL_CALLS][{"name": ..., "arguments": {...}, "id": "<9 letters or digits>"}, ...]`;
* generic — any other template (the tools are described in a system instruction): the reply is
  `{"tool_call": {"name": ..., "arguments": {...}}}` or `{"tool_calls": [...]}`
  (`{"response": "..."}` or plain text: content).

The detection strings and shapes follow llama.cpp's `common/chat.cpp`; the first of FORMATS that
matches wins.
A reader gets the whole reply so far (a `ReplyText`) and where a call seems to start; it answers
with the `Block` read there, `NEED_MORE` (the text so far could still become one), or None (this is not a call: the
text stays content). Readers accept "arguments" and "parameters" alike, arguments given as an object
or as the JSON text of one, and a missing closing tag at the end of a reply. A call's arguments are
the object's text as the model wrote it (OpenAI's `arguments` are the model's own text too, and a
streamed call's fragments are cut from it); only a built-in `name.call(k=v)` is written anew as JSON.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from typing import Callable, NamedTuple

from .spec import ToolCall, openai_call_id, random_alnum


class RawCall(NamedTuple):
    """A call as read from a reply: the model's own id when its format carries one."""

    name: str
    arguments: str  # JSON text of an object
    id: str | None = None


@dataclass(frozen=True)
class Block:
    """What a reader found: the calls (or, generic format, the text) the reply's text up to `end`
    stands for."""

    end: int
    calls: tuple[RawCall, ...] = ()
    content: str = ""


@dataclass(frozen=True)
class CallLayout:
    """How a reply the grammar enforces writes its calls, to the letter: `before` the first call,
    `between` two calls (None: one call only), `after` the last, and each call
    `{"name": "<name>", "<args_key>": <arguments object>}` (CALL_NAME_OPEN, the name,
    `call_args_open(args_key)`, the object, "}"). A reader that knows where the arguments begin can
    hand their text over as it comes."""

    before: str
    between: str | None
    after: str


CALL_NAME_OPEN = '{"name": "'


def call_args_open(args_key: str) -> str:
    """What follows a called function's name, up to its arguments object."""
    return f'", "{args_key}": '


NEED_MORE = "need more"  # a reader's answer: the text so far is an unfinished call
Reader = Callable[["ReplyText", int, bool], "Block | str | None"]  # (reply, start, final) -> Block | NEED_MORE | None


@dataclass(frozen=True)
class ToolFormat:
    name: str
    detect: tuple[str, ...]  # a template whose source holds all of these speaks this format
    openers: dict[str, Reader]  # text that starts a call anywhere in a reply -> its reader
    opening: Reader | None  # reads a call that is the reply itself (its first non-blank char is "{")
    args_key: str  # the arguments' key in a call object, as this format writes it
    with_id: bool  # the call object carries the call's id
    write_calls: Callable[[list[dict]], str]  # call objects -> the reply text
    grammar_root: Callable[[bool], str]  # GBNF body of `root`, over a rule `call` (parallel or one call)
    new_id: Callable[[], str]
    preserved: tuple[str, ...] = ()  # special tokens the reply must show as text to be read
    # the grammar's layouts of a reply, when calls are required; () when calls are not streamed
    # (each is handed over whole once read)
    layouts: tuple[CallLayout, ...] = ()

    def call_object(self, call: ToolCall) -> dict:
        obj = {"name": call.name, self.args_key: call.arguments_object()}
        if self.with_id:
            obj["id"] = call.id
        return obj

    def write(self, calls: list[ToolCall]) -> str:
        """The calls as the model writes them (for conversations its template cannot show)."""
        return self.write_calls([self.call_object(c) for c in calls])

    def call_from(self, raw: RawCall) -> ToolCall:
        return ToolCall(raw.id or self.new_id(), raw.name, raw.arguments)


# -- reading JSON out of a reply -----------------------------------------------------------------


def skip_blank(text: str, i: int) -> int:
    n = len(text)
    while i < n and text[i].isspace():
        i += 1
    return i


_OUTSIDE_STRING = re.compile(r'["{}\[\]]')  # what changes the scan outside a string
_INSIDE_STRING = re.compile(r'["\\]')  # ... and inside one


class JsonScan:
    """Where the JSON object or array opening at `start` ends, found by following brackets and
    strings only (json.loads judges the rest); resumable, as a streamed reply grows piece by piece
    (scanning a long call again from its start at every piece would take quadratic time)."""

    __slots__ = ("pos", "depth", "in_string", "end")

    def __init__(self, start: int):
        self.pos, self.depth, self.in_string, self.end = start, 0, False, None

    def advance(self, text: str) -> int | None:
        """The end (after the closing bracket), or None if `text` (the same text, grown) ends first."""
        pos = self.pos
        while self.end is None:
            m = (_INSIDE_STRING if self.in_string else _OUTSIDE_STRING).search(text, pos)
            if m is None:
                pos = len(text)
                break
            c, pos = m.group(), m.end()
            if c == "\\":  # an escape: skip the escaped character (if it has come)
                if pos >= len(text):
                    pos -= 1
                    break
                pos += 1
            elif c == '"':
                self.in_string = not self.in_string
            elif c in "{[":
                self.depth += 1
            else:
                self.depth -= 1
                if self.depth == 0:
                    self.end = pos
        self.pos = pos
        return self.end


class ReplyText:
    """A reply read so far, with the JSON scans begun in it (kept while it grows)."""

    def __init__(self, text: str = ""):
        self.text = text
        self._scans: dict[int, JsonScan] = {}

    def grow(self, piece: str) -> None:
        self.text += piece

    def json_end(self, start: int) -> int | None:
        scan = self._scans.get(start)
        if scan is None:
            scan = self._scans[start] = JsonScan(start)
        return scan.advance(self.text)


def read_json(reply: ReplyText, start: int, final: bool):
    """(value, end) of the JSON object or array at `start`, NEED_MORE, or None."""
    text = reply.text
    if start >= len(text):
        return None if final else NEED_MORE
    if text[start] not in "{[":
        return None
    end = reply.json_end(start)
    if end is None:
        return None if final else NEED_MORE
    try:
        return json.loads(text[start:end]), end
    except ValueError:
        return None


_JSON_BLANK = re.compile(r"[ \t\n\r]*")  # what JSON (and json.loads) takes as blanks
_DECODER = json.JSONDecoder()


def member_spans(text: str, start: int) -> dict[str, tuple[int, int]]:
    """Where each member's value of the valid JSON object at `start` is written: key -> (start,
    end); a repeated key: its last (json.loads keeps the last value too)."""
    spans: dict[str, tuple[int, int]] = {}
    i = _JSON_BLANK.match(text, start + 1).end()
    while text[i] != "}":
        key, i = _DECODER.raw_decode(text, i)
        i = _JSON_BLANK.match(text, _JSON_BLANK.match(text, i).end() + 1).end()  # past the colon
        _, end = _DECODER.raw_decode(text, i)
        spans[key] = (i, end)
        i = _JSON_BLANK.match(text, end).end()
        if text[i] == ",":
            i = _JSON_BLANK.match(text, i + 1).end()
    return spans


def element_starts(text: str, start: int) -> list[int]:
    """Where each element of the valid JSON array at `start` begins."""
    starts: list[int] = []
    i = _JSON_BLANK.match(text, start + 1).end()
    while text[i] != "]":
        starts.append(i)
        _, i = _DECODER.raw_decode(text, i)
        i = _JSON_BLANK.match(text, i).end()
        if text[i] == ",":
            i = _JSON_BLANK.match(text, i + 1).end()
    return starts


def raw_call(obj, text: str, start: int, arg_keys: tuple[str, ...] = ("arguments", "parameters")) -> RawCall | None:
    """A call object {"name": ..., "arguments": {...}} (or "parameters"; "id" kept if a string),
    parsed from the valid JSON `text[start:]`. The arguments are the object's text as the model
    wrote it (as OpenAI hands them over; a streamed call's fragments are cut from the same text),
    or the text inside a JSON string that holds an object's JSON."""
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
        return None
    key = next((k for k in arg_keys if k in obj), None)
    args = {} if key is None else obj[key]
    if isinstance(args, str):  # the arguments' JSON text, as OpenAI's own messages carry it
        try:
            if not isinstance(json.loads(args), dict):
                return None
        except ValueError:
            return None
        arguments = args
    elif isinstance(args, dict):
        if key is None:
            arguments = "{}"
        else:
            a, b = member_spans(text, start)[key]
            arguments = text[a:b]
    else:
        return None
    call_id = obj.get("id")
    return RawCall(obj["name"], arguments, call_id if isinstance(call_id, str) and call_id else None)


def read_call_object(reply: ReplyText, start: int, final: bool):
    """A Block of the one call object at `start`."""
    found = read_json(reply, start, final)
    if found is None or found == NEED_MORE:
        return found
    call = raw_call(found[0], reply.text, start)
    return Block(found[1], (call,)) if call else None


def read_tagged(open_tag: str, close_tag: str) -> Reader:
    """`open_tag` {call object} `close_tag` (the close tag may be missing)."""
    def read(reply: ReplyText, start: int, final: bool):
        text = reply.text
        found = read_call_object(reply, skip_blank(text, start + len(open_tag)), final)
        if not isinstance(found, Block):
            return found
        j = skip_blank(text, found.end)
        if text.startswith(close_tag, j):
            return Block(j + len(close_tag), found.calls)
        if close_tag.startswith(text[j:]):  # the reply ends in (a beginning of) the close tag
            return Block(len(text), found.calls) if final else NEED_MORE
        return found  # no close tag: the call still counts; what follows is content

    return read


def read_call_list(marker: str) -> Reader:
    """`marker` then a JSON array of call objects (or one call object)."""
    def read(reply: ReplyText, start: int, final: bool):
        at = skip_blank(reply.text, start + len(marker))
        found = read_json(reply, at, final)
        if found is None or found == NEED_MORE:
            return found
        value, end = found
        if isinstance(value, list):
            calls = [raw_call(v, reply.text, i) for v, i in zip(value, element_starts(reply.text, at))]
        else:
            calls = [raw_call(value, reply.text, at)]
        if not calls or not all(calls):
            return None
        return Block(end, tuple(calls))

    return read


def read_python_tag(reply: ReplyText, start: int, final: bool):
    """Llama 3.x after `<|python_tag|>`: a JSON call object, or a built-in tool's `name.call(k=v, ...)`."""
    text = reply.text
    i = skip_blank(text, start + len(PYTHON_TAG))
    if i < len(text) and text[i] == "{":
        return read_call_object(reply, i, final)
    if not final:  # a built-in call runs to the end of the reply
        return NEED_MORE
    call = python_call(text[i:].strip())
    return Block(len(text), (call,)) if call else None


def python_call(source: str) -> RawCall | None:
    """`name.call(key=literal, ...)` read with Python's parser (nothing is evaluated but literals)."""
    try:
        node = ast.parse(source, mode="eval").body
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "call"
                and isinstance(node.func.value, ast.Name) and not node.args
                and all(kw.arg is not None for kw in node.keywords)):
            return None
        args = {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords}
        return RawCall(node.func.value.id, json.dumps(args, ensure_ascii=False))
    except Exception:  # SyntaxError, ValueError (not a literal), RecursionError, a non-JSON literal
        return None


def read_generic(reply: ReplyText, start: int, final: bool):
    """The generic format's whole reply: {"tool_call": {...}}, {"tool_calls": [...]} or {"response": "..."}."""
    found = read_json(reply, start, final)
    if found is None or found == NEED_MORE:
        return found
    value, end = found
    if not isinstance(value, dict):
        return None
    text = reply.text
    if isinstance(value.get("tool_calls"), list) and value["tool_calls"]:
        at = member_spans(text, start)["tool_calls"][0]
        calls = [raw_call(v, text, i) for v, i in zip(value["tool_calls"], element_starts(text, at))]
        return Block(end, tuple(calls)) if all(calls) else None
    if "tool_call" in value:
        call = raw_call(value["tool_call"], text, member_spans(text, start)["tool_call"][0])
        return Block(end, (call,)) if call else None
    if isinstance(value.get("response"), str):
        return Block(end, content=value["response"])
    return None


# -- the table -----------------------------------------------------------------------------------

TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"
PYTHON_TAG = "<|python_tag|>"
TOOL_CALLS_MARKER = "[TOOL_CALLS]"


def _dumps(value) -> str:
    return json.dumps(value, ensure_ascii=False)


def _lit(text: str) -> str:
    """A GBNF string literal."""
    return json.dumps(text, ensure_ascii=False)


def _repeated(first: str, separator: str, parallel: bool) -> str:
    """GBNF: `first`, then (parallel) any more `separator first`."""
    return f"{first} ( {separator} {first} )*" if parallel else first


HERMES = ToolFormat(
    name="hermes",
    detect=(TOOL_CALL_OPEN,),
    openers={TOOL_CALL_OPEN: read_tagged(TOOL_CALL_OPEN, TOOL_CALL_CLOSE)},
    opening=None,
    args_key="arguments",
    with_id=False,
    write_calls=lambda objs: "\n".join(f"{TOOL_CALL_OPEN}\n{_dumps(o)}\n{TOOL_CALL_CLOSE}" for o in objs),
    grammar_root=lambda parallel: _repeated(
        f"{_lit(TOOL_CALL_OPEN + chr(10))} call {_lit(chr(10) + TOOL_CALL_CLOSE)}", _lit("\n"), parallel),
    new_id=openai_call_id,
    preserved=(TOOL_CALL_OPEN, TOOL_CALL_CLOSE),
    layouts=(CallLayout(TOOL_CALL_OPEN + "\n", f"\n{TOOL_CALL_CLOSE}\n{TOOL_CALL_OPEN}\n", "\n" + TOOL_CALL_CLOSE),),
)

LLAMA3 = ToolFormat(
    name="llama3",
    detect=("<|start_header_id|>ipython<|end_header_id|>",),
    openers={PYTHON_TAG: read_python_tag},
    opening=read_call_object,
    args_key="parameters",
    with_id=False,
    write_calls=lambda objs: "\n".join(_dumps(o) for o in objs),
    # Llama 3.1's template shows one call per assistant turn: the grammar asks for one
    grammar_root=lambda parallel: "call",
    new_id=openai_call_id,
    preserved=(PYTHON_TAG,),
    layouts=(CallLayout("", None, ""),),  # the JSON call is the reply (a built-in's call is never enforced)
)

MISTRAL = ToolFormat(
    name="mistral",
    detect=(TOOL_CALLS_MARKER,),
    openers={TOOL_CALLS_MARKER: read_call_list(TOOL_CALLS_MARKER)},
    opening=None,
    args_key="arguments",
    with_id=True,
    write_calls=lambda objs: TOOL_CALLS_MARKER + _dumps(objs),
    grammar_root=lambda parallel: f"{_lit(TOOL_CALLS_MARKER + '[')} {_repeated('call', _lit(', '), parallel)} "
                                  f"{_lit(']')}",
    # Mistral's templates refuse call ids that are not 9 letters or digits
    new_id=lambda: random_alnum(9),
    preserved=(TOOL_CALLS_MARKER,),
    # no layouts: a call's id, which the first delta of a streamed call carries, is written after
    # its arguments, so each call is handed over whole
)

def _generic_root(parallel: bool) -> str:
    """One call; with parallel calls, also the list form. Both stay open: a model given only the
    list form (llama.cpp's choice) may repeat its call until max_tokens (the Gemma 3 270M demo
    model does), while with both it writes one call as the instruction shows."""
    one = " ".join([_lit('{"tool_call": '), "call", _lit("}")])
    if not parallel:
        return one
    return one + " | " + " ".join([_lit('{"tool_calls": ['), _repeated("call", _lit(", "), True), _lit("]}")])


GENERIC = ToolFormat(
    name="generic",
    detect=(),
    openers={},
    opening=read_generic,
    args_key="arguments",
    with_id=False,
    write_calls=lambda objs: _dumps({"tool_call": objs[0]} if len(objs) == 1 else {"tool_calls": objs}),
    grammar_root=_generic_root,
    new_id=openai_call_id,
    layouts=(CallLayout('{"tool_call": ', None, "}"), CallLayout('{"tool_calls": [', ", ", "]}")),
)

# Detection order matters: llama.cpp's (a Hermes template may also hold Llama 3 headers).
FORMATS = (HERMES, LLAMA3, MISTRAL)
FORMATS_BY_NAME = {f.name: f for f in (*FORMATS, GENERIC)}


def detect_format(template_source: str) -> ToolFormat:
    """The tool-call format a chat template speaks: the first of FORMATS whose strings it holds,
    else GENERIC."""
    return next((f for f in FORMATS if all(s in template_source for s in f.detect)), GENERIC)
