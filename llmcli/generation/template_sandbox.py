"""A Jinja2 sandbox with time and size limits, for chat templates read from model files.

Jinja2's `ImmutableSandboxedEnvironment` keeps a template away from Python's internals, but not
from the CPU or memory: `{% for a in r %}{% for b in r %}...` can run for days and `'x' * 10**10`
allocates 10 GB. `LimitedEnvironment` adds a budget to every render:

* time: a deadline, checked on every loop iteration, call, filter, operator, attribute or item
  lookup and piece of output; rendering past it raises `TemplateLimitError`;
* size: no value built by an operator, call, filter or `~` may exceed `max_chars` characters (or
  items; nested containers count their contents), and neither may all the output produced,
  including into `{% set %}` blocks and macro bodies; operations that could build far more than
  their inputs in one step (`*` and `**` on big operands, `%` and format widths, `replace`, `join`,
  `indent`, `center`, `wordwrap`, `expandtabs`, `translate`, `batch`, `slice`, `tojson`, integer
  arguments beyond the limit) are refused before they run.

The checks sit where Jinja2 lets an environment intercept: `call`, `call_binop`, `getattr`,
`getitem`, the filter table, and a code generator that routes `~`, loop iterables and output
through the environment.
"""

from __future__ import annotations

import functools
import itertools
import math
import re
import string
import threading
import time
import types
from typing import Any, Iterable, Iterator

from jinja2 import nodes
from jinja2.compiler import CodeGenerator
from jinja2.runtime import Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace

_monotonic = time.monotonic
MAX_INT_BITS = 1 << 16   # an integer a template computes: at most 65,536 bits (~20,000 digits)


class TemplateLimitError(Exception):
    """A render went past its time or size budget."""


class _Budget:
    __slots__ = ("deadline", "seconds", "max_chars", "produced")

    def __init__(self, seconds: float, max_chars: int):
        self.deadline = time.monotonic() + seconds if math.isfinite(seconds) else math.inf
        self.seconds = seconds
        self.max_chars = max_chars
        self.produced = 0

    def tick(self) -> None:
        if _monotonic() > self.deadline:
            raise TemplateLimitError(f"still rendering after the {self.seconds:g} s limit")

    def too_big(self, what: str, size: int) -> TemplateLimitError:
        """`size`: the size found, or a bound of what the operation would build."""
        return TemplateLimitError(f"{what} goes past the size limit of {self.max_chars:,} characters")

    def check(self, value: Any, what: str = "a value") -> Any:
        size = measure(value, self.max_chars)[0]
        if size > self.max_chars:
            raise self.too_big(what, size)
        return value

    def check_bound(self, bound: int, what: str) -> None:
        if bound > self.max_chars:
            raise self.too_big(what, bound)

    def check_ints(self, values: Iterable[Any], what: str) -> None:
        for v in values:
            if isinstance(v, int) and abs(v) > self.max_chars:
                raise TemplateLimitError(f"{what} gets the number {_short_int(v)}, past the size "
                                         f"limit of {self.max_chars:,} characters")


_STRINGS = (str, bytes, bytearray)
_CONTAINERS = (list, tuple, set, frozenset, dict, Namespace)
_PLAIN_STRINGS = frozenset({str, bytes})
_PLAIN_SCALARS = frozenset({int, float, bool, type(None)})


def measure(value: Any, cap: float = math.inf) -> tuple[int, int]:
    """(size, depth) of a value: characters of strings plus one per item, through nested lists,
    tuples, sets, dicts and namespaces; stops counting once past `cap`. Shared references count
    each time, as str() or tojson would write them out each time."""
    if isinstance(value, _STRINGS):
        return len(value) + 1, 0
    if not isinstance(value, _CONTAINERS):
        return 1, 0
    size, depth = 1, 0
    stack = [(value, 1)]
    while stack and size <= cap:
        v, d = stack.pop()
        depth = max(depth, d)
        if isinstance(v, Namespace):
            v = object.__getattribute__(v, "_Namespace__attrs")
        parts = (v.keys(), v.values()) if isinstance(v, dict) else (v,)
        for part in parts:
            size += len(part)
            if size > cap:
                break
            kinds = set(map(type, part))  # at C speed: most lists hold only str, or only numbers
            if kinds <= _PLAIN_STRINGS:
                size += sum(map(len, part))
            elif not kinds <= _PLAIN_SCALARS:
                size += sum([len(x) for x in part if isinstance(x, _STRINGS)])
                stack.extend([(x, d + 1) for x in part if isinstance(x, _CONTAINERS)])
    return size, depth


def _short_int(v: int) -> str:
    return str(v) if v.bit_length() < 64 else f"of {v.bit_length()} bits"


# -- operations that can build much more than they are given ---------------------------------------

_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?(.)", re.S)


def _percent_bound(fmt: str, args: Any, budget: _Budget) -> int:
    """Upper bound of `fmt % args`, widths and precisions included."""
    bound = len(fmt)
    star_args = [a for a in (args if isinstance(args, tuple) else (args,)) if isinstance(a, int)]
    star = max((abs(a) for a in star_args), default=0)
    for m in _PERCENT_SPEC.finditer(fmt):
        for part in (m.group(1), m.group(2)):
            if part == "*":
                bound += star
            elif part:
                bound += int(part)
    return bound + measure(args, budget.max_chars)[0] * 12


def _format_bound(fmt: str, args: tuple, kwargs: dict, budget: _Budget) -> int:
    """Upper bound of `fmt.format(*args, **kwargs)`: fields, widths and nested widths."""
    nested = max((abs(a) for a in itertools.chain(args, kwargs.values()) if isinstance(a, int)), default=0)
    bound = len(fmt) + measure((args, kwargs), budget.max_chars)[0] * 12
    try:
        fields = list(string.Formatter().parse(fmt))
    except ValueError:
        return bound  # str.format raises the same error
    for _, field, spec, _ in fields:
        if field is None:
            continue
        spec = spec or ""
        bound += sum(int(n) for n in re.findall(r"\d+", spec)) + (nested if "{" in spec else 0)
        bound += measure((args, kwargs), budget.max_chars)[0] * 12  # whichever argument it shows
    return bound


def _replace_bound(s: Any, old: Any, new: Any, count: Any = -1) -> int:
    if not isinstance(s, (str, bytes)) or not isinstance(old, type(s)) or not isinstance(new, type(s)):
        return 0
    n = s.count(old) if old else len(s) + 1
    if isinstance(count, int) and count >= 0:
        n = min(n, count)
    return len(s) + n * max(0, len(new) - len(old))


def _materialize(value: Any, budget: _Budget) -> Any:
    """A list of an iterable that has no length (a generator from another filter), counted."""
    if isinstance(value, (str, bytes, list, tuple, dict, set, frozenset)) or isinstance(value, Undefined):
        return value
    items = []
    for item in value:
        budget.tick()
        items.append(item)
        if len(items) > budget.max_chars:
            raise budget.too_big("a sequence", len(items))
    return items


def _join_bound(items: Any, sep: Any, budget: _Budget) -> int:
    n = len(items) if hasattr(items, "__len__") else 0
    sep_len = len(sep) if isinstance(sep, (str, bytes)) else len(str(sep))
    return measure(items, budget.max_chars)[0] * 12 + n * sep_len


_STR_TYPES = (str, bytes)


def _is_guarded(node: nodes.Node) -> bool:
    return isinstance(node, nodes.Call) and isinstance(node.node, nodes.EnvironmentAttribute) \
        and node.node.name == "guard_iter"


class _LimitedCodeGenerator(CodeGenerator):
    """Jinja2's code generator with three detours through the environment: loop iterables
    (`environment.guard_iter(...)`, put in the tree before code is made), the `~` operator
    (`guard_concat`) and every piece of output (`guard_output`)."""

    def visit_Template(self, node: nodes.Template, frame: Any = None) -> None:
        for loop in node.find_all(nodes.For):
            if not _is_guarded(loop.iter):
                loop.iter = nodes.Call(nodes.EnvironmentAttribute("guard_iter"), [loop.iter], [], None, None,
                                       lineno=loop.iter.lineno)
        super().visit_Template(node, frame)

    def visit_Concat(self, node: nodes.Concat, frame: Any) -> None:
        self.write("environment.guard_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")

    def _output_const_repr(self, group: Iterable[Any]) -> str:
        return f"environment.guard_output({super()._output_const_repr(group)})"

    def _output_child_pre(self, node: nodes.Expr, frame: Any, finalize: Any) -> None:
        self.write("environment.guard_output(")
        super()._output_child_pre(node, frame, finalize)

    def _output_child_post(self, node: nodes.Expr, frame: Any, finalize: Any) -> None:
        super()._output_child_post(node, frame, finalize)
        self.write(")")


class _GuardedIterable:
    """Iterates like the wrapped iterable, checking the deadline at each item; keeps `len()`."""

    __slots__ = ("_items", "_budget")

    def __init__(self, items: Any, budget: _Budget):
        self._items, self._budget = items, budget

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Any]:
        budget = self._budget
        deadline = budget.deadline
        for item in self._items:
            if _monotonic() > deadline:
                budget.tick()
            yield item


# Filters whose integer arguments are sizes (a width, a count of slices...).
_SIZE_ARGUMENT_FILTERS = frozenset({"center", "indent", "wordwrap", "batch", "slice", "tojson", "format",
                                    "truncate", "pprint"})


class LimitedEnvironment(ImmutableSandboxedEnvironment):
    """`ImmutableSandboxedEnvironment` plus a time and size budget per render (`budget(...)`).
    Call `guard_filters()` after adding filters of your own."""

    code_generator_class = _LimitedCodeGenerator
    intercepted_binops = frozenset({"+", "-", "*", "/", "//", "%", "**"})

    def __init__(self, max_chars: int, **options: Any):
        super().__init__(**options)
        # used when no render is under way: compile-time constant folding (no deadline then)
        self._idle = _Budget(math.inf, max_chars)
        self._budget = self._idle
        self._render_lock = threading.RLock()  # one render at a time: they share `_budget`
        self.globals.pop("lipsum", None)  # lorem ipsum of any length: no use in a chat template
        self.guard_filters()

    # -- the budget ------------------------------------------------------------------------------

    def current_budget(self) -> _Budget:
        return self._budget

    def render_limited(self, template: Any, seconds: float, max_chars: int, **context: Any) -> str:
        """Render `template` (compiled by this environment) within `seconds` and `max_chars`."""
        with self._render_lock:
            previous, self._budget = self._budget, _Budget(seconds, max_chars)
            try:
                return "".join(template.generate(**context))
            finally:
                self._budget = previous

    # -- what the generated code calls -----------------------------------------------------------

    def guard_iter(self, iterable: Any) -> Any:
        budget = self.current_budget()
        budget.tick()
        return _GuardedIterable(iterable, budget)

    def guard_concat(self, parts: tuple) -> str:
        budget = self.current_budget()
        budget.tick()
        strings = [p if isinstance(p, str) else str(p) for p in parts]
        budget.check_bound(sum(map(len, strings)), "a string joined with ~")
        return "".join(strings)

    def guard_output(self, text: Any) -> Any:
        budget = self._budget
        if _monotonic() > budget.deadline:
            budget.tick()
        budget.produced += len(text) if isinstance(text, str) else 1
        if budget.produced > budget.max_chars:
            raise budget.too_big("the output", budget.produced)
        return text

    # -- sandbox hooks ---------------------------------------------------------------------------

    def getattr(self, obj: Any, attribute: str) -> Any:
        self.current_budget().tick()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        self.current_budget().tick()
        return super().getitem(obj, argument)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        budget = self.current_budget()
        budget.tick()
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, (str, bytes, list, tuple)) and isinstance(n, int) and n > 0:
                    budget.check_bound(measure(seq, budget.max_chars)[0] * min(n, budget.max_chars + 1),
                                       f"'{type(seq).__name__} * {_short_int(n)}'")
            if isinstance(left, int) and isinstance(right, int) and \
                    left.bit_length() + right.bit_length() > MAX_INT_BITS:
                raise TemplateLimitError(f"a product of integers goes past {MAX_INT_BITS:,} bits")
        elif operator == "**":
            if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1 and \
                    right * left.bit_length() > MAX_INT_BITS:
                raise TemplateLimitError(f"a power of integers goes past {MAX_INT_BITS:,} bits")
        elif operator == "%" and isinstance(left, _STR_TYPES):
            budget.check_bound(_percent_bound(left if isinstance(left, str) else left.decode("latin-1"),
                                              right, budget), "a '%' format")
        return budget.check(super().call_binop(context, operator, left, right), f"the result of '{operator}'")

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        budget = __self.current_budget()
        budget.tick()
        args = __self._check_call(budget, __obj, args, kwargs)
        return budget.check(super().call(__context, __obj, *args, **kwargs), "a call's result")

    def _check_call(self, budget: _Budget, obj: Any, args: tuple, kwargs: dict) -> tuple:
        wrapped = getattr(obj, "__wrapped__", None)  # the sandbox's str.format wrapper
        if isinstance(wrapped, types.BuiltinMethodType) and isinstance(wrapped.__self__, str) and \
                wrapped.__name__ in ("format", "format_map"):
            budget.check_ints(itertools.chain(args, kwargs.values()), "str.format")
            if wrapped.__name__ == "format_map":
                fargs, fkwargs = (), (args[0] if args and isinstance(args[0], dict) else {})
            else:
                fargs, fkwargs = args, kwargs
            budget.check_bound(_format_bound(wrapped.__self__, fargs, fkwargs, budget), "a str.format")
            return args
        if not isinstance(obj, types.BuiltinMethodType) or isinstance(obj.__self__, types.ModuleType):
            return args
        name, owner = obj.__name__, obj.__self__
        budget.check_ints(itertools.chain(args, kwargs.values()), f"{type(owner).__name__}.{name}")
        if not isinstance(owner, _STR_TYPES):
            return args
        if name == "replace" and args:
            budget.check_bound(_replace_bound(owner, *args[:3], **kwargs), f"{type(owner).__name__}.replace")
        elif name == "join" and args:
            args = (_materialize(args[0], budget), *args[1:])
            budget.check_bound(_join_bound(args[0], owner, budget), f"{type(owner).__name__}.join")
        elif name == "expandtabs":
            size = args[0] if args else kwargs.get("tabsize", 8)
            if isinstance(size, int):
                budget.check_bound(len(owner) + owner.count("\t" if isinstance(owner, str) else b"\t") * size,
                                   "expandtabs")
        elif name == "translate" and args and isinstance(args[0], dict):
            longest = max((measure(v, budget.max_chars)[0] for v in args[0].values()), default=1)
            budget.check_bound(len(owner) * longest, "translate")
        return args

    # -- filters ---------------------------------------------------------------------------------

    def guard_filters(self) -> None:
        """Wrap every filter (once) with the budget checks."""
        for name, func in list(self.filters.items()):
            if not getattr(func, "_llmcli_guarded", False):
                self.filters[name] = self._guard_filter(name, func)

    def _guard_filter(self, name: str, func: Any) -> Any:
        skip = 1 if getattr(func, "jinja_pass_arg", None) is not None else 0  # context/environment first

        @functools.wraps(func)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            budget = self.current_budget()
            budget.tick()
            if len(args) > skip:
                head, value, rest = args[:skip], args[skip], args[skip + 1:]
                value = self._check_filter(budget, name, value, rest, kwargs)
                args = (*head, value, *rest)
            return budget.check(func(*args, **kwargs), f"the result of filter '{name}'")

        guarded._llmcli_guarded = True
        return guarded

    def _check_filter(self, budget: _Budget, name: str, value: Any, rest: tuple, kwargs: dict) -> Any:
        if name in _SIZE_ARGUMENT_FILTERS:
            budget.check_ints(itertools.chain(rest, kwargs.values()), f"filter '{name}'")
        if name == "replace":
            budget.check_bound(_replace_bound(value, *rest[:3], **{k: v for k, v in kwargs.items()
                                                                   if k == "count"}), "filter 'replace'")
        elif name == "join":
            value = _materialize(value, budget)
            sep = rest[0] if rest else kwargs.get("d", "")
            budget.check_bound(_join_bound(value, sep, budget), "filter 'join'")
        elif name == "indent" and isinstance(value, str):
            width = rest[0] if rest else kwargs.get("width", 4)
            w = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
            budget.check_bound(len(value) + (value.count("\n") + 1) * abs(w), "filter 'indent'")
        elif name == "wordwrap" and isinstance(value, str):
            wrap = rest[2] if len(rest) > 2 else kwargs.get("wrapstring") or self.newline_sequence
            budget.check_bound(len(value) + (len(value) + 1) * len(str(wrap)), "filter 'wordwrap'")
        elif name == "format" and isinstance(value, str):
            budget.check_bound(_percent_bound(value, rest or kwargs, budget), "filter 'format'")
        elif name in ("batch", "slice"):
            value = _materialize(value, budget)
            count = rest[0] if rest else kwargs.get("linecount" if name == "batch" else "slices", 0)
            if isinstance(count, int) and hasattr(value, "__len__"):
                budget.check_bound(len(value) + abs(count) * (8 if name == "slice" else 1), f"filter '{name}'")
        elif name in ("tojson", "pprint"):
            size, depth = measure(value, budget.max_chars)
            indent = (rest[0] if rest else kwargs.get("indent")) if name == "tojson" else 1
            indent = indent if isinstance(indent, int) else len(indent) if isinstance(indent, str) else 0
            budget.check_bound(size * (12 + abs(indent) * depth), f"filter '{name}'")
        return value
