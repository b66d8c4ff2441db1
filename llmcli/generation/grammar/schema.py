"""JSON schema -> GBNF, writing the grammar llama.cpp's json_schema_to_grammar writes.

Same rule names and shapes as llama.cpp (common/json-schema.cpp reads the schema, common/
json-schema-to-grammar.cpp writes rules, commit 0c1e570), so a schema constrains our output exactly
as it constrains llama.cpp's: `root`, one rule per property (`name`, `name-kv`), shared primitive
rules (`string`, `integer`, `value`, ...), `space` between tokens, rules sorted by name.

What is supported: type (one or a list), object properties/required/additionalProperties (true,
false, a schema; properties without additionalProperties admit no other key, as llama.cpp),
arrays (items, prefixItems or an items list as a tuple, minItems, maxItems), enum, const,
string/number/integer/boolean/null, integer minimum/maximum (exclusive too), strings' minLength/
maxLength, format date, time, date-time, uuid, anchored patterns of llama.cpp's regex subset,
anyOf/oneOf (oneOf as anyOf, as llama.cpp), allOf of object schemas (their properties merged, all
required) or of enums (their common values), local $ref (#/...), {} (any value).

Where llama.cpp would quietly accept more than the schema allows (a keyword it ignores, a pattern
it cannot convert, an allOf of strings, ...), we raise GrammarError naming the keyword instead:
a constraint is never silently weakened. Annotations (title, description, default, examples, ...)
and unknown keywords are ignored, as JSON Schema says.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from .parse import GrammarError

SPACE_RULE = '| " " | "\\n"{1,2} [ \\t]{0,20}'

# name -> (GBNF, rules it uses): the JSON primitives
PRIMITIVE_RULES = {
    "boolean": ('("true" | "false")', ()),
    "decimal-part": ("[0-9]{1,16}", ()),
    "integral-part": ("[0] | [1-9] [0-9]{0,15}", ()),
    "number": ('("-"? integral-part) ("." decimal-part)? ([eE] [-+]? integral-part)?',
               ("integral-part", "decimal-part")),
    "integer": ('("-"? integral-part)', ("integral-part",)),
    "value": ("object | array | string | number | boolean | null",
              ("object", "array", "string", "number", "boolean", "null")),
    "object": ('"{" space ( string ":" space value ("," space string ":" space value)* )? space "}"',
               ("string", "value")),
    "array": ('"[" space ( value ("," space value)* )? space "]"', ("value",)),
    "uuid": ('"\\"" [0-9a-fA-F]{8} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} "-" '
             '[0-9a-fA-F]{12} "\\""', ()),
    "char": ('[^"\\\\\\x7F\\x00-\\x1F] | [\\\\] (["\\\\bfnrt] | "u" [0-9a-fA-F]{4})', ()),
    "string": ('"\\"" char* "\\""', ("char",)),
    "null": ('"null"', ()),
}

# string formats: the rule of the bare value and of the JSON string holding it
STRING_FORMAT_RULES = {
    "date": ('[0-9]{4} "-" ( "0" [1-9] | "1" [0-2] ) "-" ( "0" [1-9] | [1-2] [0-9] | "3" [0-1] )', ()),
    "time": ('([01] [0-9] | "2" [0-3]) ":" [0-5] [0-9] ":" [0-5] [0-9] ( "." [0-9]{3} )? '
             '( "Z" | ( "+" | "-" ) ( [01] [0-9] | "2" [0-3] ) ":" [0-5] [0-9] )', ()),
    "date-time": ('date "T" time', ("date", "time")),
    "date-string": ('"\\"" date "\\""', ("date",)),
    "time-string": ('"\\"" time "\\""', ("time",)),
    "date-time-string": ('"\\"" date-time "\\""', ("date-time",)),
}
FORMATS = {"date": "date", "time": "time", "date-time": "date-time", "uuid": "uuid",
           **{f"uuid{i}": "uuid" for i in range(1, 6)}}

RESERVED_NAMES = {"root", *PRIMITIVE_RULES, *STRING_FORMAT_RULES}

# Keywords that constrain values, by the kind of value they apply to.
STRING_KEYWORDS = {"pattern", "format", "minLength", "maxLength"}
NUMBER_KEYWORDS = {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"}
OBJECT_KEYWORDS = {"properties", "required", "additionalProperties", "minProperties", "maxProperties",
                   "patternProperties", "propertyNames", "dependentRequired", "dependentSchemas",
                   "dependencies", "unevaluatedProperties"}
ARRAY_KEYWORDS = {"items", "prefixItems", "minItems", "maxItems", "uniqueItems", "contains", "minContains",
                  "maxContains", "additionalItems", "unevaluatedItems"}
GENERAL_KEYWORDS = {"type", "const", "enum", "allOf", "anyOf", "oneOf", "not", "if", "then", "else", "$ref",
                    "$dynamicRef", "$recursiveRef"}
ALL_KEYWORDS = STRING_KEYWORDS | NUMBER_KEYWORDS | OBJECT_KEYWORDS | ARRAY_KEYWORDS | GENERAL_KEYWORDS
JSON_TYPES = ("null", "boolean", "object", "array", "number", "integer", "string")

INT64_MIN, INT64_MAX = -(2 ** 63), 2 ** 63 - 1
UNBOUNDED = 2 ** 31 - 1  # llama.cpp's "no maximum" for counts (INT_MAX)

INVALID_RULE_CHARS = re.compile(r"[^a-zA-Z0-9-]+")
LITERAL_ESCAPES = {"\r": "\\r", "\n": "\\n", '"': '\\"', "\\": "\\\\"}
# regex syntax: characters that are not literals, and those a backslash makes literal
REGEX_SPECIAL = set("|.()[]{}*+?^$")
REGEX_ESCAPED_LITERALS = set("^$.[]()|{}*+?")
GBNF_ESCAPE_LENGTH = {"x": 4, "u": 6, "U": 10, **{c: 2 for c in 'trn\\"[]-'}}
MAX_PATTERN_DEPTH = 100


def format_literal(text: str) -> str:
    """A GBNF string literal for `text`."""
    return '"' + "".join(LITERAL_ESCAPES.get(c, c) for c in text) + '"'


def json_dump(value: Any) -> str:
    """Compact JSON as llama.cpp's json dump() writes it (keys in their order, UTF-8 as is)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _fits_type(value: Any, type_name: str) -> bool:
    kind = _json_type(value)
    return kind == type_name or (type_name == "number" and kind == "integer") or (
        type_name == "integer" and kind == "number" and float(value).is_integer())


# -- reading the schema (llama.cpp's common_chat_schema_from_json) ------------------------------


class Node:
    """One schema, read: `kind` is one of any, ref, any_of, all_of, const, enum, null, boolean,
    number, integer, string, array, tuple, object; the other fields as that kind needs them."""

    def __init__(self, kind: str, **fields):
        self.kind = kind
        self.__dict__.update(fields)


ANY = "any"


class _Reader:
    def __init__(self, root: Any):
        self.root = root
        self.refs: dict[str, Node | None] = {}

    def fail(self, path: str, what: str):
        raise GrammarError(f"JSON schema at {path}: {what}", "schema")

    def refuse(self, path: str, schema: dict, handled: set[str], kinds: set[str], why: str = "") -> None:
        """GrammarError for a keyword that constrains the values this node admits but that the
        grammar would not enforce."""
        relevant = set(GENERAL_KEYWORDS)
        for applies, keywords in (("string", STRING_KEYWORDS), ("number", NUMBER_KEYWORDS),
                                  ("object", OBJECT_KEYWORDS), ("array", ARRAY_KEYWORDS)):
            if applies in kinds:
                relevant |= keywords
        for key in schema:
            if key in relevant and key not in handled:
                self.fail(path, f"'{key}' is not supported{why}: a grammar could not enforce it")

    # -- helpers as llama.cpp reads fields ---------------------------------------------------

    def count(self, schema: dict, key: str, path: str, default: int) -> int:
        if key not in schema:
            return default
        value = schema[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            self.fail(path, f"'{key}' must be a non-negative integer")
        return value

    def bound(self, schema: dict, key: str, path: str, round_up: bool) -> int:
        value = schema[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(path, f"'{key}' must be a number")
        if isinstance(value, int):
            return value
        return int(math.ceil(value) if round_up else math.floor(value))

    def format(self, schema: dict, path: str) -> str | None:
        if "format" not in schema:
            return None
        value = schema["format"]
        if not isinstance(value, str):
            self.fail(path, "'format' must be a string")
        return value

    # -- nodes -------------------------------------------------------------------------------

    def node(self, schema: Any, path: str) -> Node:
        if not isinstance(schema, dict):
            self.fail(path, f"a schema must be a JSON object, got {json_dump(schema)[:40]}")
        if "$ref" in schema:
            self.refuse(path, schema, {"$ref"}, {"string", "number", "object", "array"}, " beside '$ref'")
            return self.ref(schema["$ref"], path)
        if "oneOf" in schema or "anyOf" in schema:
            key = "oneOf" if "oneOf" in schema else "anyOf"
            self.refuse(path, schema, {key}, {"string", "number", "object", "array"}, f" beside '{key}'")
            return Node("any_of", children=self.alternatives(schema[key], f"{path}/{key}"))
        type_ = schema.get("type")
        if isinstance(type_, list):
            if not type_:
                self.fail(path, "'type' must not be an empty list")
            for key, read in (("const", self.constant), ("enum", self.enum)):
                if key in schema:  # the values are checked against the whole list of types
                    node = read(schema, path)
                    return Node("any_of", children=[node] * len(type_))
            return Node("any_of", children=[self.node({**schema, "type": t}, f"{path}/type/{i}")
                                            for i, t in enumerate(type_)])
        if "const" in schema:
            return self.constant(schema, path)
        if "enum" in schema:
            return self.enum(schema, path)
        if type_ is not None and not isinstance(type_, str):
            self.fail(path, "'type' must be a string or a list of strings")
        has_properties = "properties" in schema or (
            "additionalProperties" in schema and schema["additionalProperties"] is not True)
        if type_ is None:  # the structural keywords decide, in llama.cpp's order
            if has_properties:
                return self.object(schema, path)
            if "allOf" in schema:
                return self.all_of(schema, path)
            if "items" in schema or "prefixItems" in schema:
                return self.array(schema, path)
            if ({"pattern", "minLength", "maxLength"} & set(schema)
                    or FORMATS.get(self.format(schema, path) or "")):
                return self.string(schema, path)
            self.refuse(path, schema, set(), {"string", "number", "object", "array"}, " (the schema has no type)")
            return Node(ANY)
        if type_ == "object":
            if not has_properties and "allOf" in schema:
                return self.all_of(schema, path)
            return self.object(schema, path)
        if type_ == "string":
            if "allOf" in schema:
                self.fail(path, "'allOf' of string schemas is not supported")
            return self.string(schema, path)
        if type_ == "array":
            return self.array(schema, path)
        if type_ == "integer":
            return self.integer(schema, path)
        if type_ in ("number", "boolean", "null"):
            self.refuse(path, schema, {"type"}, {"number"} if type_ == "number" else set(),
                        " (bounds are supported on integers only)" if type_ == "number" else "")
            return Node(type_)
        self.fail(path, f"unrecognized type {type_!r} (known: {', '.join(JSON_TYPES)})")

    def ref(self, ref: Any, path: str) -> Node:
        if not isinstance(ref, str):
            self.fail(path, "'$ref' must be a string")
        if not ref.startswith("#/"):
            self.fail(path, f"unsupported $ref {ref}: only references into the same document (#/...) are supported")
        if ref not in self.refs:
            self.refs[ref] = None  # reserved first, so that a cycle back to it stops here
            self.refs[ref] = self.node(self.resolve(ref, path), ref)
        return Node("ref", ref=ref, reader=self)

    def resolve(self, ref: str, path: str) -> Any:
        target = self.root
        for part in ref[1:].split("/")[1:]:
            if isinstance(target, dict) and part in target:
                target = target[part]
            elif isinstance(target, list):
                index = int(part) if part.isdigit() else len(target)
                if index >= len(target):
                    self.fail(path, f"cannot resolve $ref {ref}: {part} is out of range")
                target = target[index]
            else:
                self.fail(path, f"cannot resolve $ref {ref}: {part} not found")
        return target

    def alternatives(self, alternatives: Any, path: str) -> list[Node]:
        if not isinstance(alternatives, list):
            self.fail(path, "must be a list of schemas")
        if not alternatives:
            self.fail(path, "must not be empty")
        return [self.node(alt, f"{path}/{i}") for i, alt in enumerate(alternatives)]

    def constant(self, schema: dict, path: str) -> Node:
        value = schema["const"]
        self._check_values(schema, [value], path, "const")
        return Node("const", value=value)

    def enum(self, schema: dict, path: str) -> Node:
        values = schema["enum"]
        if not isinstance(values, list) or not values:
            self.fail(path, "'enum' must be a non-empty list")
        self._check_values(schema, values, path, "enum")
        return Node("enum", values=list(values))

    def _check_values(self, schema: dict, values: list, path: str, key: str) -> None:
        """const/enum decide alone in llama.cpp: other constraints beside them are refused, and
        a type beside them must fit every value."""
        self.refuse(path, schema, {key, "type"}, {"string", "number", "object", "array"}, f" beside '{key}'")
        types = schema.get("type")
        if types is not None:
            for value in values:
                if not any(_fits_type(value, t) for t in (types if isinstance(types, list) else [types])):
                    self.fail(path, f"{key} value {json_dump(value)[:40]} does not have the type {json_dump(types)}")

    def object(self, schema: dict, path: str) -> Node:
        self.refuse(path, schema, {"type", "properties", "required", "additionalProperties"}, {"object"})
        required = {name for name in schema.get("required", []) if isinstance(name, str)} \
            if isinstance(schema.get("required"), list) else set()
        properties = []
        if "properties" in schema:
            props = schema["properties"]
            if not isinstance(props, dict):
                self.fail(path, "'properties' must be an object")
            for name, prop in props.items():
                properties.append((name, self.node(prop, f"{path}/properties/{name}"), name in required))
        additional: Node | None = None
        if "additionalProperties" in schema:
            value = schema["additionalProperties"]
            if isinstance(value, bool):
                additional = Node(ANY) if value else None
            elif isinstance(value, dict):
                additional = self.node(value, f"{path}/additionalProperties")
            else:
                self.fail(path, "'additionalProperties' must be a boolean or a schema")
        elif "properties" not in schema:
            additional = Node(ANY)  # {"type": "object"} alone admits any object
        missing = sorted(required - {name for name, _, _ in properties})
        if missing:
            self.fail(path, f"required property '{missing[0]}' is not among the properties")
        return Node("object", properties=properties, additional=additional,
                    closed=schema.get("additionalProperties") is False)

    def array(self, schema: dict, path: str) -> Node:
        handled = {"type", "items", "prefixItems", "minItems", "maxItems"}
        key = "items" if "items" in schema else "prefixItems" if "prefixItems" in schema else None
        if key is not None and isinstance(schema[key], list):
            # a tuple admits exactly its items: whatever additionalItems allows beyond them, it is stricter
            self.refuse(path, schema, handled | {"additionalItems"}, {"array"})
            items = [self.node(item, f"{path}/{key}/{i}") for i, item in enumerate(schema[key])]
            low, high = self.count(schema, "minItems", path, 0), self.count(schema, "maxItems", path, -1)
            if len(items) < low or 0 <= high < len(items):
                self.fail(path, f"a tuple of {len(items)} items cannot have minItems {low} and maxItems {high}")
            return Node("tuple", items=items)
        if key == "items" and "prefixItems" in schema:
            self.fail(path, "'prefixItems' beside an 'items' schema is not supported")
        self.refuse(path, schema, handled, {"array"})
        items = self.node(schema[key], f"{path}/{key}") if key is not None else Node(ANY)
        return Node("array", items=items, min_items=self.count(schema, "minItems", path, 0),
                    max_items=self.count(schema, "maxItems", path, -1))

    def string(self, schema: dict, path: str) -> Node:
        pattern = schema.get("pattern")
        if pattern is not None and not isinstance(pattern, str):
            self.fail(path, "'pattern' must be a string")
        format_name = self.format(schema, path)
        if format_name is not None and format_name not in FORMATS:
            self.fail(path, f"format {format_name!r} is not supported (supported: date, time, date-time, uuid)")
        used = [key for key in ("pattern", "format") if key in schema]
        lengths = [key for key in ("minLength", "maxLength") if key in schema]
        if len(used) > 1 or (used and lengths):
            self.fail(path, f"'{(used + lengths)[1]}' beside '{used[0]}' is not supported")
        self.refuse(path, schema, {"type", "pattern", "format", "minLength", "maxLength"}, {"string"})
        return Node("string", pattern=pattern, format=FORMATS.get(format_name or ""),
                    min_length=self.count(schema, "minLength", path, 0),
                    max_length=self.count(schema, "maxLength", path, -1))

    def integer(self, schema: dict, path: str) -> Node:
        self.refuse(path, schema, {"type", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"},
                    {"number"})
        lows, highs = [INT64_MIN], [INT64_MAX]
        if "minimum" in schema:
            lows.append(self.bound(schema, "minimum", path, True))
        if "exclusiveMinimum" in schema:
            lows.append(self.bound(schema, "exclusiveMinimum", path, False) + 1)
        if "maximum" in schema:
            highs.append(self.bound(schema, "maximum", path, False))
        if "exclusiveMaximum" in schema:
            highs.append(self.bound(schema, "exclusiveMaximum", path, True) - 1)
        low, high = max(lows), min(highs)
        if not INT64_MIN <= low <= high <= INT64_MAX:
            self.fail(path, f"no integer fits between the bounds {low} and {high}")
        return Node("integer", minimum=low, maximum=high)

    def all_of(self, schema: dict, path: str) -> Node:
        self.refuse(path, schema, {"type", "allOf"}, {"object"}, " beside 'allOf'")
        children = self.alternatives(schema["allOf"], f"{path}/allOf")
        return Node("all_of", children=children, path=path, reader=self)

    def target(self, node: Node) -> Node | None:
        """A ref node's schema."""
        return self.refs.get(node.ref)


def read_schema(schema: Any) -> Node:
    reader = _Reader(schema)
    return reader.node(schema, "#")


# -- integer ranges as digits (llama.cpp's build_min_max_int) -----------------------------------


def _digit_range(low: str, high: str) -> str:
    return f"[{low}]" if low == high else f"[{low}-{high}]"


def _more_digits(low: int, high: int) -> str:
    """`[0-9]` repeated low..high times (high UNBOUNDED: no maximum)."""
    if low == high == 1:
        return "[0-9]"
    if low == high:
        return f"[0-9]{{{low}}}"
    return f"[0-9]{{{low},{'' if high == UNBOUNDED else high}}}"


def _same_length_range(low: str, high: str) -> str:
    """Decimal numbers from low to high, both written with the same number of digits."""
    i = 0
    while i < len(low) and i < len(high) and low[i] == high[i]:
        i += 1
    out = f'"{low[:i]}"' if i > 0 else ""
    if i < len(low) and i < len(high):
        if i > 0:
            out += " "
        rest = len(low) - i - 1
        if rest == 0:
            return out + f"[{low[i]}-{high[i]}]"
        low_rest, high_rest = low[i + 1:], high[i + 1:]
        zeros, nines = "0" * rest, "9" * rest
        reached_high = False
        out += "("
        if low_rest == zeros:
            out += _digit_range(low[i], chr(ord(high[i]) - 1)) + " " + _more_digits(rest, rest)
        else:
            out += f"[{low[i]}] (" + _same_length_range(low_rest, nines) + ")"
            if low[i] < chr(ord(high[i]) - 1):
                out += " | "
                if high_rest == nines:
                    out += _digit_range(chr(ord(low[i]) + 1), high[i])
                    reached_high = True
                else:
                    out += _digit_range(chr(ord(low[i]) + 1), chr(ord(high[i]) - 1))
                out += " " + _more_digits(rest, rest)
        if not reached_high:
            out += " | " + _digit_range(high[i], high[i]) + " " + _same_length_range(zeros, high_rest)
        out += ")"
    return out


def integer_range(low: int, high: int, decimals_left: int = 16, top_level: bool = True) -> str:
    """GBNF for the integers in [low, high] (INT64_MIN / INT64_MAX: unbounded), written as
    JSON numbers are (no leading zeros), at most 16 digits when unbounded above."""
    has_low, has_high = low != INT64_MIN, high != INT64_MAX
    if has_low and has_high:
        if low < 0 and high < 0:
            return '"-" (' + integer_range(-high, -low, decimals_left, True) + ")"
        out = ""
        if low < 0:
            out = '"-" (' + integer_range(0, -low, decimals_left, True) + ") | "
            low = 0
        low_s, high_s = str(low), str(high)
        for digits in range(len(low_s), len(high_s)):
            out += _same_length_range(low_s, "9" * digits) + " | "
            low_s = "1" + "0" * digits
        return out + _same_length_range(low_s, high_s)
    fewer = max(decimals_left - 1, 1)
    if has_low:
        if low < 0:
            return ('"-" (' + integer_range(INT64_MIN, -low, decimals_left, False) + ") | [0] | [1-9] "
                    + _more_digits(0, decimals_left - 1))
        if low == 0:
            return "[0] | [1-9] " + _more_digits(0, fewer) if top_level else _more_digits(1, decimals_left)
        if low <= 9:
            c = str(low)
            first = "1" if top_level else "0"
            out = ""
            if c > first:
                out = _digit_range(first, chr(ord(c) - 1)) + " " + _more_digits(1, fewer) + " | "
            return out + _digit_range(c, "9") + " " + _more_digits(0, fewer)
        low_s = str(low)
        c = low_s[0]
        out = ""
        if c > "1":
            out = _digit_range("1" if top_level else "0", chr(ord(c) - 1)) + " " + \
                _more_digits(len(low_s), fewer) + " | "
        out += _digit_range(c, c) + " (" + integer_range(int(low_s[1:]), INT64_MAX, fewer, False) + ")"
        if c < "9":
            out += " | " + _digit_range(chr(ord(c) + 1), "9") + " " + _more_digits(len(low_s) - 1, fewer)
        return out
    if has_high:
        if high >= 0:
            out = ('"-" [1-9] ' + _more_digits(0, fewer) + " | ") if top_level else ""
            return out + integer_range(0, high, decimals_left, True)
        return '"-" (' + integer_range(-high, INT64_MAX, decimals_left, False) + ")"
    raise ValueError("integer_range needs a bound")


def repetition(item: str, low: int, high: int, separator: str = "") -> str:
    """item{low,high} in GBNF (high UNBOUNDED: no maximum), with `separator` between items."""
    bounded = high != UNBOUNDED
    if high == 0:
        return ""
    if low == 0 and high == 1:
        return item + "?"
    if not separator:
        if low == 1 and not bounded:
            return item + "+"
        if low == 0 and not bounded:
            return item + "*"
        return item + "{" + str(low) + "," + (str(high) if bounded else "") + "}"
    out = item + " " + repetition(f"({separator} {item})", low - 1 if low > 0 else 0,
                                  high - 1 if bounded else high)
    return f"({out})?" if low == 0 else out


# -- writing the grammar (llama.cpp's common_chat_schema_converter) -----------------------------


def _stoi(text: str) -> int:
    """std::stoi: leading blanks, a sign, digits; the rest ignored; no digits is an error."""
    match = re.match(r"\s*([+-]?\d+)", text)
    if not match or not -2 ** 31 <= int(match.group(1)) < 2 ** 31:
        raise ValueError(text)
    return int(match.group(1))


def _gbnf_escape_length(pattern: str, i: int) -> int:
    """Length of the GBNF escape at pattern[i] (a backslash), 0 if it is not one GBNF knows."""
    if i + 1 >= len(pattern) or pattern[i] != "\\":
        return 0
    length = GBNF_ESCAPE_LENGTH.get(pattern[i + 1], 0)
    if length > 2:
        digits = pattern[i + 2:i + length]
        if len(digits) < length - 2 or any(d not in "0123456789abcdefABCDEF" for d in digits):
            return 0
    return length


class _Converter:
    def __init__(self):
        self.rules: dict[str, str] = {"space": SPACE_RULE}
        self.resolving: set[str] = set()

    def add_rule(self, name: str, rule: str) -> str:
        key = INVALID_RULE_CHARS.sub("-", name)
        if key not in self.rules or self.rules[key] == rule:
            self.rules[key] = rule
            return key
        i = 0
        while f"{key}{i}" in self.rules and self.rules[f"{key}{i}"] != rule:
            i += 1
        self.rules[f"{key}{i}"] = rule
        return f"{key}{i}"

    def add_primitive(self, name: str, builtin: tuple[str, tuple[str, ...]]) -> str:
        rule, deps = builtin
        added = self.add_rule(name, rule)
        for dep in deps:
            if dep not in self.rules:
                self.add_primitive(dep, PRIMITIVE_RULES.get(dep) or STRING_FORMAT_RULES[dep])
        return added

    def primitive(self, rule_name: str, type_name: str) -> str:
        return self.add_primitive("root" if rule_name == "root" else type_name, PRIMITIVE_RULES[type_name])

    def grammar(self) -> str:
        return "".join(f"{name} ::= {rule}\n" for name, rule in sorted(self.rules.items()))

    # -- nodes -------------------------------------------------------------------------------

    def visit(self, node: Node, name: str) -> str:
        rule_name = name + "-" if name in RESERVED_NAMES else name or "root"
        sub_name = name + "-" if name else ""
        kind = node.kind
        if kind == "ref":
            return self.add_rule(rule_name, self.resolve_ref(node))
        if kind == "any_of":
            prefix = name + "-" if name else "alternative-"
            return self.add_rule(rule_name, " | ".join(self.visit(child, f"{prefix}{i}")
                                                       for i, child in enumerate(node.children)))
        if kind == "all_of":
            return self.all_of(node, name, rule_name)
        if kind == "const":
            return self.add_rule(rule_name, format_literal(json_dump(node.value)))
        if kind == "enum":
            return self.add_rule(rule_name, "(" + " | ".join(format_literal(json_dump(v)) for v in node.values) + ")")
        if kind == "object":
            if not node.properties and node.additional is not None and node.additional.kind == ANY:
                return self.add_rule(rule_name, self.add_primitive("object", PRIMITIVE_RULES["object"]))
            return self.add_rule(rule_name, self.object_rule(node.properties, name, node.additional))
        if kind == "tuple":
            items = ' "," space '.join(self.visit(item, f"{sub_name}tuple-{i}") for i, item in enumerate(node.items))
            return self.add_rule(rule_name, f'"[" space {items} space "]"')
        if kind == "array":
            if node.items.kind == ANY and node.min_items == 0 and node.max_items < 0:
                return self.primitive(rule_name, "array")
            item = self.visit(node.items, f"{sub_name}item")
            high = UNBOUNDED if node.max_items < 0 else node.max_items
            return self.add_rule(rule_name, '"[" space ' + repetition(item, node.min_items, high, '"," space')
                                 + ' space "]"')
        if kind == "string":
            if node.pattern is not None:
                return self.pattern(node.pattern, rule_name)
            if node.format == "uuid":
                return self.primitive(rule_name, "uuid")
            if node.format is not None:
                name_ = f"{node.format}-string"
                return self.add_rule(rule_name, self.add_primitive(name_, STRING_FORMAT_RULES[name_]))
            if node.min_length > 0 or node.max_length >= 0:
                char = self.add_primitive("char", PRIMITIVE_RULES["char"])
                high = UNBOUNDED if node.max_length < 0 else node.max_length
                return self.add_rule(rule_name, '"\\"" ' + repetition(char, node.min_length, high) + ' "\\""')
            return self.primitive(rule_name, "string")
        if kind == "integer":
            if node.minimum == INT64_MIN and node.maximum == INT64_MAX:
                return self.primitive(rule_name, "integer")
            return self.add_rule(rule_name, "(" + integer_range(node.minimum, node.maximum) + ")")
        if kind in ("number", "boolean", "null"):
            return self.primitive(rule_name, kind)
        return self.add_rule(rule_name, self.add_primitive("value", PRIMITIVE_RULES["value"]))  # any

    def resolve_ref(self, node: Node) -> str:
        fragment = node.ref.split("#", 1)[1] if "#" in node.ref else node.ref
        ref_name = "ref" + INVALID_RULE_CHARS.sub("-", fragment)
        if ref_name not in self.rules and node.ref not in self.resolving:
            self.resolving.add(node.ref)
            ref_name = self.visit(node.reader.target(node), ref_name)
            self.resolving.discard(node.ref)
        return ref_name

    def object_rule(self, properties: list[tuple[str, Node, bool]], name: str, additional: Node | None) -> str:
        prefix = name + "-" if name else ""
        kv_rules: dict[str, str] = {}
        required, optional = [], []
        for prop_name, prop, is_required in properties:
            value_rule = self.visit(prop, prefix + prop_name)
            kv_rules[prop_name] = self.add_rule(f"{prefix}{prop_name}-kv",
                                                format_literal(json_dump(prop_name)) + ' space ":" space ' + value_rule)
            (required if is_required else optional).append(prop_name)
        if additional is not None:
            sub = prefix + "additional"
            value_rule = (self.visit(additional, sub + "-value") if additional.kind != ANY
                          else self.add_primitive("value", PRIMITIVE_RULES["value"]))
            key_rule = (self.add_primitive("string", PRIMITIVE_RULES["string"]) if not properties
                        else self.add_rule(sub + "-k", self.not_strings([p[0] for p in properties])))
            kv_rules["*"] = self.add_rule(sub + "-kv", key_rule + ' ":" space ' + value_rule)
            optional.append("*")
        if not required and not optional:
            return '"{" space "}"'
        rule = '"{" space ' + ' "," space '.join(kv_rules[k] for k in required)
        if optional:
            rule += " ("
            if required:
                rule += ' "," space ( '

            def chain(keys: list[str], first_optional: bool) -> str:
                """The optional keys in order, each present or not, with commas between."""
                key = keys[0]
                kv = kv_rules[key]
                comma = f'( "," space {kv} )'
                if first_optional:
                    out = comma + ("*" if key == "*" else "?")
                else:
                    out = kv + (f" {comma}*" if key == "*" else "")
                if len(keys) > 1:
                    out += " " + self.add_rule(f"{prefix}{key}-rest", chain(keys[1:], True))
                return out

            rule += " | ".join(chain(optional[i:], False) for i in range(len(optional)))
            if required:
                rule += " )"
            rule += " )?"
        return rule + ' space "}"'

    def not_strings(self, strings: list[str]) -> str:
        """A JSON string that is none of `strings` (the keys additional properties may have)."""
        trie: dict = {}
        ends: set[int] = set()
        for s in strings:
            node = trie
            for c in s:
                node = node.setdefault(c, {})
            ends.add(id(node))
        char = self.add_primitive("char", PRIMITIVE_RULES["char"])

        def visit(node: dict) -> str:
            parts = []
            for c in sorted(node):
                child = node[c]
                parts.append(f"[{c}]" + (f" ({visit(child)})" if child else f" {char}+"))
            out = " | ".join(parts)
            if node:
                out += f' | [^"{"".join(sorted(node))}] {char}*'
            return out

        return '["] ( ' + visit(trie) + " )" + ("" if id(trie) in ends else "?") + ' ["]'

    def all_of(self, node: Node, name: str, rule_name: str) -> str:
        reader: _Reader = node.reader
        properties: list[tuple[str, Node, bool]] = []
        enum_counts: dict[str, int] = {}
        closed: list[set[str]] = []  # property names of components that admit no others

        def add(component: Node, is_required: bool, path: str) -> None:
            if component.kind == "ref":
                target = reader.target(component)
                if target is not None:
                    add(target, is_required, path)
            elif component.kind == "object":
                if component.closed:
                    closed.append({p[0] for p in component.properties})
                for prop_name, prop, _ in component.properties:
                    if any(p[0] == prop_name for p in properties):
                        reader.fail(path, f"property '{prop_name}' appears in several allOf components")
                    properties.append((prop_name, prop, is_required))
            elif component.kind == "enum":
                for value in component.values:
                    key = format_literal(json_dump(value))
                    enum_counts[key] = enum_counts.get(key, 0) + 1
            else:
                reader.fail(path, f"allOf of a {component.kind} schema is not supported "
                                  f"(only object schemas, merged, or enums)")

        for i, child in enumerate(node.children):
            path = f"{node.path}/allOf/{i}"
            if child.kind == "any_of":
                for alt in child.children:
                    target = reader.target(alt) if alt.kind == "ref" else alt
                    if target is not None and target.kind == "object" and any(req for _, _, req in target.properties):
                        reader.fail(path, "anyOf inside allOf with required properties is not supported "
                                          "(its properties would all become optional)")
                    add(alt, False, path)
            else:
                add(child, True, path)
        if enum_counts:
            common = [key for key, count in sorted(enum_counts.items()) if count == len(node.children)]
            if not common:
                reader.fail(node.path, "allOf: no value is in every component (or enums mix with objects)")
            return self.add_rule(rule_name, "(" + " | ".join(common) + ")")
        names = {p[0] for p in properties}
        for allowed in closed:
            if names - allowed:
                reader.fail(node.path, f"allOf: a component with additionalProperties false does not "
                                       f"admit property '{sorted(names - allowed)[0]}' of another")
        return self.add_rule(rule_name, self.object_rule(properties, name, None))

    # -- regular expressions (llama.cpp's subset) --------------------------------------------

    def pattern(self, pattern: str, name: str) -> str:
        def unsupported(why: str):
            raise GrammarError(f"JSON schema: pattern {pattern!r} is not supported ({why})", "schema")

        def invalid(why: str):
            raise GrammarError(f"JSON schema: pattern {pattern!r} is not a valid regular expression ({why})",
                               "schema")

        if len(pattern) < 2 or pattern[0] != "^" or pattern[-1] != "$":
            unsupported("it must be anchored with '^' and '$'")
        sub = pattern[1:-1]
        length = len(sub)
        sub_rule_ids: dict[str, str] = {}
        pos = 0
        depth = 0

        def to_rule(item: tuple[str, bool]) -> str:
            text, is_literal = item
            return f'"{text}"' if is_literal else text

        def transform() -> tuple[str, bool]:
            nonlocal pos, depth
            seq: list[tuple[str, bool]] = []

            def join() -> tuple[str, bool]:
                merged: list[tuple[str, bool]] = []
                for item in seq:  # consecutive literals become one
                    if item[1] and merged and merged[-1][1]:
                        merged[-1] = (merged[-1][0] + item[0], True)
                    else:
                        merged.append(item)
                return " ".join(to_rule(item) for item in merged), False

            while pos < length:
                c = sub[pos]
                if c == ".":
                    seq.append((self.add_rule("dot", "[^\\x0A\\x0D]"), False))
                    pos += 1
                elif c == "(":
                    pos += 1
                    if pos < length and sub[pos] == "?":
                        if pos + 1 < length and sub[pos + 1] == ":":
                            pos += 2
                        else:
                            unsupported("lookarounds, named groups and flags are not")
                    depth += 1
                    if depth > MAX_PATTERN_DEPTH:
                        unsupported("groups nest too deep")
                    seq.append(("(" + to_rule(transform()) + ")", False))
                elif c == ")":
                    pos += 1
                    if depth == 0:
                        invalid("unbalanced parentheses")
                    depth -= 1
                    return join()
                elif c in "^$":
                    unsupported("an anchor inside the pattern")
                elif c == "[":
                    text = "["
                    pos += 1
                    while pos < length and sub[pos] != "]":
                        if sub[pos] == "\\":
                            n = _gbnf_escape_length(sub, pos)
                            if n == 0:
                                unsupported(f"the escape {sub[pos:pos + 2]} in a character class")
                            text += sub[pos:pos + n]
                            pos += n
                        else:
                            text += sub[pos]
                            pos += 1
                    if pos >= length:
                        invalid("an unterminated character class")
                    seq.append((text + "]", False))
                    pos += 1
                elif c == "|":
                    seq.append(("|", False))
                    pos += 1
                elif c in "*+?":
                    if not seq:
                        invalid("nothing to repeat")
                    seq[-1] = (to_rule(seq[-1]) + c, False)
                    pos += 1
                elif c == "{":
                    end = sub.find("}", pos + 1)
                    if end < 0:
                        unsupported("unterminated curly brackets")
                    numbers = sub[pos + 1:end].split(",")
                    pos = end + 1
                    if len(numbers) not in (1, 2):
                        unsupported("a repetition needs one or two numbers")
                    try:
                        if len(numbers) == 1:
                            low = high = _stoi(numbers[0])
                        else:
                            low = _stoi(numbers[0]) if numbers[0] else 0
                            high = _stoi(numbers[1]) if numbers[1] else UNBOUNDED
                    except ValueError:
                        unsupported("an invalid number in curly brackets")
                    if not seq:
                        invalid("nothing to repeat")
                    text, is_literal = seq[-1]
                    if not is_literal:
                        if text not in sub_rule_ids:
                            sub_rule_ids[text] = ""
                            sub_rule_ids[text] = self.add_rule(f"{name}-{len(sub_rule_ids)}", text)
                        text = sub_rule_ids[text]
                    seq[-1] = (repetition(f'"{text}"' if is_literal else text, low, high), False)
                else:
                    literal = ""
                    while pos < length:
                        ch = sub[pos]
                        if ch == "\\":
                            if pos == length - 1:
                                invalid("a trailing backslash")
                            if sub[pos + 1] in REGEX_ESCAPED_LITERALS:
                                literal += sub[pos + 1]
                                pos += 2
                            else:
                                n = _gbnf_escape_length(sub, pos)
                                if n == 0:
                                    unsupported(f"the escape {sub[pos:pos + 2]}")
                                literal += sub[pos:pos + n]
                                pos += n
                        elif ch == '"':
                            literal += '\\"'
                            pos += 1
                        elif ch not in REGEX_SPECIAL and (pos == length - 1 or not literal or sub[pos + 1] == "."
                                                          or sub[pos + 1] not in REGEX_SPECIAL):
                            literal += ch
                            pos += 1
                        else:
                            break
                    if not literal:
                        unsupported(f"the character {c!r} there")
                    seq.append((literal, True))
            return join()

        rule = to_rule(transform())
        if depth != 0:
            invalid("unbalanced parentheses")
        return self.add_rule(name, '"\\"" (' + rule + ') "\\""')


def schema_to_grammar(schema: dict) -> str:
    """GBNF text constraining output to JSON that `schema` validates (see the module docstring);
    GrammarError (a BadInputError) naming the keyword for what cannot be expressed."""
    converter = _Converter()
    converter.visit(read_schema(schema), "")
    return converter.grammar()


JSON_OBJECT_GBNF = schema_to_grammar({"type": "object"})  # OpenAI's json_object mode: any JSON object
