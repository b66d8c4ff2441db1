"""GBNF text -> rules of grammar elements, with llama.cpp's syntax, rewrites and checks.

A grammar is a list of rules; a rule is a list of elements `(kind, value)` ending with END, its
alternatives separated by ALT. Element kinds and their values:

    END, ALT                      end of the rule / of an alternative (value 0)
    RULE_REF                      another rule (value: its id)
    CHAR, CHAR_NOT                a character class starts: its first character (CHAR_NOT: negated)
    CHAR_RNG_UPPER                turns the preceding character into a range up to this one
    CHAR_ALT                      one more character (or range start) of the same class
    CHAR_ANY                      `.`: any character
    TOKEN, TOKEN_NOT              `<[id]>` / `!<[id]>`: that token / any token but that one

The parse follows llama.cpp (src/llama-grammar.cpp, commit 0c1e570) so that the same text means the
same rules: a rule is `name ::= alternatives` ending at a newline (inside parentheses newlines are
free), names are letters, digits and `-`, `#` starts a comment, `"..."` a literal, `[...]` a class
(`[^...]` negated), `( )` a group that becomes a rule of its own (`name_N`), and repetitions
become rules too: S* -> `S' ::= S S' |`, S+ -> `S S'`, S? -> `S' ::= S |`, S{m,n} -> S repeated m
times and n-m nested optional rules. Beyond 2000 repetitions llama.cpp stops: a {m} above that is an
error, a {,n} above it is unbounded. Each failure raises GrammarError with a kind (the same kinds of
failure llama.cpp reports; see KINDS) and a message naming what is wrong and where.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import BadInputError

END, ALT, RULE_REF, CHAR, CHAR_NOT, CHAR_RNG_UPPER, CHAR_ALT, CHAR_ANY, TOKEN, TOKEN_NOT = range(10)

# Error kind -> what it means. The reference test data names llama.cpp's failures by these kinds.
KINDS = {
    "unterminated": "the text ends inside a literal, class or range",
    "bad-escape": "an unknown escape, or too few hex digits after \\x \\u \\U",
    "expected-name": "a rule name was expected",
    "expected-definition": "'::=' was expected after a rule name",
    "expected-newline": "something follows a rule on its line",
    "unclosed-group": "a group's ')' is missing",
    "nothing-to-repeat": "* + ? or {..} with nothing before it",
    "bad-repetition": "a malformed {m}, {m,} or {m,n}",
    "too-many-repetitions": "more repetitions than llama.cpp's limit of 2000",
    "bad-token": "a malformed <[id]> token reference",
    "undefined-rule": "a rule is used but never defined",
    "empty-grammar": "the grammar has no rules",
    "missing-root": "the start rule is not defined",
    "left-recursion": "a rule can reach itself without consuming a character",
}

MAX_REPETITIONS = 2000  # llama.cpp's MAX_REPETITION_THRESHOLD

# Escapes after a backslash: hex digit counts, and the characters standing for themselves.
HEX_ESCAPES = {"x": 2, "u": 4, "U": 8}
CHAR_ESCAPES = {"t": "\t", "r": "\r", "n": "\n", "\\": "\\", '"': '"', "[": "[", "]": "]", "-": "-"}


class GrammarError(BadInputError):
    """A grammar (or a JSON schema to turn into one) that cannot be used; `kind` is one of KINDS
    (or "schema" for a JSON schema)."""

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind


def _is_word_char(c: str) -> bool:
    return ("a" <= c <= "z") or ("A" <= c <= "Z") or ("0" <= c <= "9") or c == "-"


def _is_digit(c: str) -> bool:
    return "0" <= c <= "9"


@dataclass(frozen=True)
class ParsedGrammar:
    rules: tuple[tuple[tuple[int, int], ...], ...]  # rule id -> elements (kind, value), END last
    names: tuple[str, ...]  # rule id -> name (generated rules: base_N)

    @property
    def symbol_ids(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.names)}


class _Parser:
    def __init__(self, text: str):
        # llama.cpp reads a C string: a NUL ends the text
        self.src = text.split("\0", 1)[0] + "\0"
        self.symbols: dict[str, int] = {}
        self.rules: dict[int, list[tuple[int, int]]] = {}

    # -- errors ------------------------------------------------------------------------------

    def fail(self, pos: int, kind: str, what: str):
        line = self.src.count("\n", 0, pos) + 1
        column = pos - (self.src.rfind("\n", 0, pos) + 1) + 1
        raise GrammarError(f"grammar line {line}, column {column}: {what}", kind)

    def shown(self, pos: int) -> str:
        """A few characters from pos, to name what was found."""
        rest = self.src[pos:].split("\0", 1)[0]
        if not rest:
            return "the end of the grammar"
        text = rest.split("\n", 1)[0][:20]
        return repr(text) if text else "a line break"

    # -- lexing ------------------------------------------------------------------------------

    def space(self, pos: int, newline_ok: bool) -> int:
        src = self.src
        while True:
            c = src[pos]
            if c == "#":
                while src[pos] not in "\r\n\0":
                    pos += 1
            elif c == " " or c == "\t" or (newline_ok and (c == "\r" or c == "\n")):
                pos += 1
            else:
                return pos

    def name(self, pos: int) -> int:
        return self._run(pos, _is_word_char, "expected-name", "a rule name (letters, digits, '-')")

    def integer(self, pos: int) -> int:
        return self._run(pos, _is_digit, "bad-repetition", "a number")

    def _run(self, pos: int, accepts, kind: str, wanted: str) -> int:
        """The end of the characters from pos that `accepts`; at least one, else a `kind` error."""
        end = pos
        while accepts(self.src[end]):
            end += 1
        if end == pos:
            self.fail(pos, kind, f"{wanted} was expected, found {self.shown(pos)}")
        return end

    def char(self, pos: int) -> tuple[int, int]:
        """One character of a literal or class, escapes decoded: (code point, next position)."""
        src = self.src
        c = src[pos]
        if c == "\\":
            e = src[pos + 1]
            if e in HEX_ESCAPES:
                n = HEX_ESCAPES[e]
                digits = src[pos + 2:pos + 2 + n]
                if len(digits) < n or any(d not in "0123456789abcdefABCDEF" for d in digits):
                    self.fail(pos, "bad-escape", f"'\\{e}' needs {n} hex digits")
                return int(digits, 16), pos + 2 + n
            if e in CHAR_ESCAPES:
                return ord(CHAR_ESCAPES[e]), pos + 2
            self.fail(pos, "bad-escape", f"unknown escape {src[pos:pos + 2]!r}"
                      f" (known: \\x.. \\u.... \\U........ \\t \\r \\n \\\\ \\\" \\[ \\] \\-)")
        if c == "\0":
            self.fail(pos, "unterminated", "the grammar ends inside a literal or character class")
        return ord(c), pos + 1

    def token(self, pos: int) -> tuple[int, int]:
        """`<[id]>` -> (id, next position)."""
        src = self.src
        start = pos
        if src[pos] != "<":
            self.fail(pos, "bad-token", f"'<' was expected after '!', found {self.shown(pos)}")
        pos += 1
        if src[pos] != "[":
            self.fail(start, "bad-token", "tokens are written by id, as <[123]> (token text needs a vocabulary)")
        pos += 1
        end = pos
        while _is_digit(src[end]):
            end += 1
        if end == pos:
            self.fail(pos, "bad-token", f"a token id was expected in <[...]>, found {self.shown(pos)}")
        token_id = int(src[pos:end])
        if token_id > 0xFFFFFFFF:
            self.fail(pos, "bad-token", f"token id {token_id} is too big")
        if src[end] != "]" or src[end + 1] != ">":
            self.fail(end, "bad-token", f"']>' was expected to close the token, found {self.shown(end)}")
        return token_id, end + 2

    # -- symbols -----------------------------------------------------------------------------

    def symbol(self, name: str) -> int:
        return self.symbols.setdefault(name, len(self.symbols))

    def new_symbol(self, base: str) -> int:
        next_id = len(self.symbols)
        self.symbols[f"{base}_{next_id}"] = next_id
        return next_id

    # -- grammar -----------------------------------------------------------------------------

    def parse(self) -> ParsedGrammar:
        pos = self.space(0, True)
        while self.src[pos] != "\0":
            pos = self.rule(pos)
        n_rules = max(self.rules, default=-1) + 1
        # every rule used must be defined (llama.cpp checks after the whole text is read)
        names = {i: name for name, i in self.symbols.items()}
        for rule_id in range(n_rules):
            for kind, value in self.rules.get(rule_id, ()):
                if kind == RULE_REF and not self.rules.get(value):
                    raise GrammarError(f"grammar: rule '{names[value]}' is used but never defined", "undefined-rule")
            if not self.rules.get(rule_id):
                raise GrammarError(f"grammar: rule '{names[rule_id]}' is used but never defined", "undefined-rule")
        if not n_rules:
            raise GrammarError("grammar: it has no rules (a rule looks like: root ::= \"yes\" | \"no\")",
                               "empty-grammar")
        return ParsedGrammar(tuple(tuple(self.rules[i]) for i in range(n_rules)),
                             tuple(names[i] for i in range(n_rules)))

    def rule(self, pos: int) -> int:
        name_end = self.name(pos)
        name = self.src[pos:name_end]
        rule_id = self.symbol(name)
        pos = self.space(name_end, False)
        if self.src[pos:pos + 3] != "::=":
            self.fail(pos, "expected-definition", f"'::=' was expected after rule name '{name}', found {self.shown(pos)}")
        pos = self.alternates(self.space(pos + 3, True), name, rule_id, False)
        c = self.src[pos]
        if c == "\r":
            pos += 2 if self.src[pos + 1] == "\n" else 1
        elif c == "\n":
            pos += 1
        elif c != "\0":
            self.fail(pos, "expected-newline", f"the rule '{name}' should end here, found {self.shown(pos)}")
        return self.space(pos, True)

    def alternates(self, pos: int, rule_name: str, rule_id: int, nested: bool) -> int:
        rule: list[tuple[int, int]] = []
        pos = self.sequence(pos, rule_name, rule, nested)
        while self.src[pos] == "|":
            rule.append((ALT, 0))
            pos = self.sequence(self.space(pos + 1, True), rule_name, rule, nested)
        rule.append((END, 0))
        self.rules[rule_id] = rule
        return pos

    def sequence(self, pos: int, rule_name: str, rule: list, nested: bool) -> int:
        src = self.src
        last_start = len(rule)  # where the last item (what a repetition applies to) begins
        n_prev_rules = 1  # rules that item stands for, to bound what repeating it generates
        while True:
            c = src[pos]
            if c == '"':
                open_pos = pos
                pos += 1
                last_start, n_prev_rules = len(rule), 1
                while src[pos] != '"':
                    if src[pos] == "\0":
                        self.fail(open_pos, "unterminated", "this literal is not closed (a '\"' is missing)")
                    cp, pos = self.char(pos)
                    rule.append((CHAR, cp))
                pos = self.space(pos + 1, nested)
            elif c == "[":
                open_pos = pos
                pos += 1
                first_kind = CHAR
                if src[pos] == "^":
                    pos += 1
                    first_kind = CHAR_NOT
                last_start, n_prev_rules = len(rule), 1
                while src[pos] != "]":
                    if src[pos] == "\0":
                        self.fail(open_pos, "unterminated", "this character class is not closed (a ']' is missing)")
                    cp, pos = self.char(pos)
                    rule.append((CHAR_ALT if last_start < len(rule) else first_kind, cp))
                    if src[pos] == "-" and src[pos + 1] != "]":
                        if src[pos + 1] == "\0":
                            self.fail(open_pos, "unterminated", "this character class ends inside a range")
                        upper, pos = self.char(pos + 1)
                        rule.append((CHAR_RNG_UPPER, upper))
                pos = self.space(pos + 1, nested)
            elif c == "<" or c == "!":
                kind = TOKEN
                if c == "!":
                    kind = TOKEN_NOT
                    pos += 1
                token_id, pos = self.token(pos)
                last_start, n_prev_rules = len(rule), 1
                rule.append((kind, token_id))
                pos = self.space(pos, nested)
            elif _is_word_char(c):
                name_end = self.name(pos)
                ref = self.symbol(src[pos:name_end])
                pos = self.space(name_end, nested)
                last_start, n_prev_rules = len(rule), 1
                rule.append((RULE_REF, ref))
            elif c == "(":
                open_pos = pos
                pos = self.space(pos + 1, True)
                n_before = len(self.symbols)
                sub_id = self.new_symbol(rule_name)
                pos = self.alternates(pos, rule_name, sub_id, True)
                n_prev_rules = max(1, len(self.symbols) - n_before)
                last_start = len(rule)
                rule.append((RULE_REF, sub_id))
                if src[pos] != ")":
                    self.fail(pos, "unclosed-group", f"')' was expected to close the group opened at "
                              f"{self._where(open_pos)}, found {self.shown(pos)}")
                pos = self.space(pos + 1, nested)
            elif c == ".":
                last_start, n_prev_rules = len(rule), 1
                rule.append((CHAR_ANY, 0))
                pos = self.space(pos + 1, nested)
            elif c in "*+?":
                op_pos = pos
                pos = self.space(pos + 1, nested)
                low, high = {"*": (0, None), "+": (1, None), "?": (0, 1)}[c]
                n_prev_rules = self.repeat(op_pos, rule_name, rule, last_start, n_prev_rules, low, high)
            elif c == "{":
                op_pos = pos
                pos = self.space(pos + 1, nested)
                if not _is_digit(src[pos]):
                    self.fail(pos, "bad-repetition", f"a number was expected after '{{', found {self.shown(pos)}")
                end = self.integer(pos)
                low, high = int(src[pos:end]), None
                pos = self.space(end, nested)
                if src[pos] == "}":
                    high = low
                    pos = self.space(pos + 1, nested)
                elif src[pos] == ",":
                    pos = self.space(pos + 1, nested)
                    if _is_digit(src[pos]):
                        end = self.integer(pos)
                        high = int(src[pos:end])
                        pos = self.space(end, nested)
                    if src[pos] != "}":
                        self.fail(pos, "bad-repetition", f"'}}' was expected, found {self.shown(pos)}")
                    pos = self.space(pos + 1, nested)
                else:
                    self.fail(pos, "bad-repetition", f"',' or '}}' was expected, found {self.shown(pos)}")
                if low > MAX_REPETITIONS:
                    self.fail(op_pos, "too-many-repetitions",
                              f"{low} repetitions exceed the limit of {MAX_REPETITIONS}")
                if high is not None and high > MAX_REPETITIONS:
                    high = None  # as llama.cpp: a large maximum is no maximum
                n_prev_rules = self.repeat(op_pos, rule_name, rule, last_start, n_prev_rules, low, high)
            else:
                return pos

    def _where(self, pos: int) -> str:
        line = self.src.count("\n", 0, pos) + 1
        return f"line {line}, column {pos - (self.src.rfind(chr(10), 0, pos) + 1) + 1}"

    def repeat(self, op_pos: int, rule_name: str, rule: list, last_start: int, n_prev_rules: int,
               low: int, high: int | None) -> int:
        """Rewrite the last item S of `rule` as S{low,high} (high None: unbounded):
        S S ... (low times) then a chain of optional rules S'(k) ::= S S'(k-1) | (or S' ::= S S' |
        when unbounded). Returns the rules the repeated item now stands for."""
        if last_start == len(rule):
            self.fail(op_pos, "nothing-to-repeat", f"{self.src[op_pos]!r} has nothing before it to repeat")
        item = rule[last_start:]
        total = (high if high is not None and high > 0 else low if low > 0 else 1)
        if n_prev_rules * total > MAX_REPETITIONS:
            self.fail(op_pos, "too-many-repetitions", f"this repetition would generate more than "
                      f"{MAX_REPETITIONS} rules: reduce the counts or the repeated group")
        if low == 0:
            del rule[last_start:]
        else:
            for _ in range(1, low):
                rule.extend(item)
        n_optional = 1 if high is None else high - low
        last_rec = 0
        for i in range(n_optional):
            rec_id = self.new_symbol(rule_name)
            rec = list(item)
            if i > 0 or high is None:
                rec.append((RULE_REF, rec_id if high is None else last_rec))
            rec += [(ALT, 0), (END, 0)]
            self.rules[rec_id] = rec
            last_rec = rec_id
        if n_optional > 0:
            rule.append((RULE_REF, last_rec))
        return n_prev_rules * total


def parse_gbnf(text: str) -> ParsedGrammar:
    """Parse GBNF text (see the module docstring); GrammarError when it is malformed."""
    return _Parser(text).parse()


def _may_be_empty_alternative(rule) -> bool:
    """llama.cpp's test: does some alternative of the rule have no elements at all?"""
    at_start = True
    for kind, _ in rule:
        if kind in (END, ALT):
            if at_start:
                return True
            at_start = True
        else:
            at_start = False
    return False


def check_left_recursion(parsed: ParsedGrammar) -> None:
    """GrammarError when a rule can reach itself through leftmost rule references (following a
    reference past a rule that has an empty alternative), as llama.cpp refuses such grammars: its
    matcher would loop forever on them. llama.cpp's depth-first search, with an explicit stack."""
    rules = parsed.rules
    n = len(rules)
    visited, in_progress = [False] * n, [False] * n
    may_be_empty = [_may_be_empty_alternative(rule) for rule in rules]

    def search(root: int) -> int | None:
        """The rule found on its own leftmost path, or None."""
        in_progress[root] = True
        frames = [[root, 0, True]]  # rule, next element, still at the leftmost position
        while frames:
            frame = frames[-1]
            index, i, leftmost = frame
            rule = rules[index]
            if i == len(rule):
                in_progress[index] = False
                visited[index] = True
                frames.pop()
                if frames:  # back in the caller, after its reference to this rule
                    if not may_be_empty[index]:
                        frames[-1][2] = False
                continue
            kind, value = rule[i]
            frame[1] = i + 1
            if kind == RULE_REF and leftmost:
                if in_progress[value]:
                    return value
                in_progress[value] = True
                frames.append([value, 0, True])
            elif kind in (END, ALT):
                frame[2] = True
            else:
                frame[2] = False
        return None

    for i in range(n):
        if not visited[i]:
            culprit = search(i)
            if culprit is not None:
                raise GrammarError(f"grammar: rule '{parsed.names[culprit]}' is left-recursive (it can reach "
                                   f"itself before matching any character), which the matcher cannot follow",
                                   "left-recursion")
