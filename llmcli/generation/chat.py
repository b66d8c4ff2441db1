"""Chat prompts from the model's own template (`tokenizer.chat_template`), rendered with Jinja2.

Templates come from model files, i.e. from strangers, and are code: they are rendered in Jinja2's
immutable sandbox with a time and size budget (generation/template_sandbox.py: `MAX_RENDER_SECONDS`, and
`MAX_RENDER_CHARS` plus twice the conversation's own size), with the few helpers Hugging Face
templates expect (`raise_exception`, `strftime_now`, a `tojson` that keeps non-ASCII). A template
that loops too long or builds too much is stopped with a one-line `BadInputError`. A GGUF without
a template (the Gemma 3 270M demo model has none) gets a built-in template chosen by the turn
markers its vocabulary has, ChatML when none matches (llama.cpp's own fallback).
"""

from __future__ import annotations

import datetime
import functools
import json
from dataclasses import dataclass, field
from typing import Any

from ..errors import BadInputError

# A render's budget. Real templates take milliseconds and write the conversation plus a few hundred
# characters per message; a loop that runs for seconds or output past ~1M characters is an attack.
MAX_RENDER_SECONDS = 2.0
MAX_RENDER_CHARS = 1 << 20  # plus twice the size of the messages rendered
MAX_TEMPLATE_CHARS = 1 << 20  # the template's own source

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Gemma has no system role: a system message is folded into the first user turn.
GEMMA_TEMPLATE = (
    "{{ bos_token }}"
    "{% set system = messages[0]['content'] + '\n\n' if messages and messages[0]['role'] == 'system' else '' %}"
    "{% for message in messages if message['role'] != 'system' %}"
    "{{ '<start_of_turn>' + ('model' if message['role'] == 'assistant' else message['role']) + '\n' }}"
    "{{ (system if loop.first else '') + message['content'] | trim }}{{ '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)

LLAMA3_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

LLAMA2_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ bos_token + '[INST] <<SYS>>\n' + message['content'] + '\n<</SYS>>\n\n' }}"
    "{% elif message['role'] == 'user' %}"
    "{{ ('' if loop.index0 > 0 and messages[loop.index0 - 1]['role'] == 'system' else bos_token + '[INST] ')"
    " + message['content'] + ' [/INST]' }}"
    "{% else %}{{ ' ' + message['content'] + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
)

# Built-in templates for GGUFs that carry none: the first whose marker token the vocabulary has.
FALLBACK_TEMPLATES = [
    ("<start_of_turn>", "gemma", GEMMA_TEMPLATE),
    ("<|start_header_id|>", "llama3", LLAMA3_TEMPLATE),
    ("<|im_start|>", "chatml", CHATML_TEMPLATE),
    ("[INST]", "llama2", LLAMA2_TEMPLATE),
]

VALID_ROLES = ("system", "user", "assistant", "tool")


class _TemplateRaised(Exception):
    pass


def _raise_exception(message: str) -> None:
    raise _TemplateRaised(message)


def _tojson(value: Any, indent: int | None = None, **_: Any) -> str:
    return json.dumps(value, ensure_ascii=False, indent=indent)


def _strftime_now(fmt: str) -> str:
    if not isinstance(fmt, str) or len(fmt) > 256:
        raise ValueError("strftime_now takes a format string of at most 256 characters")
    return datetime.datetime.now().strftime(fmt)


@dataclass
class ChatTemplate:
    source: str
    bos_token: str = ""
    eos_token: str = ""
    origin: str = "model"  # "model", or "built-in <name>" for a fallback
    max_seconds: float = MAX_RENDER_SECONDS
    max_chars: int = MAX_RENDER_CHARS
    _compiled: Any = field(default=None, repr=False)
    _env: Any = field(default=None, repr=False)

    @property
    def label(self) -> str:
        """How errors name the template."""
        if self.origin == "model":
            return "chat template (model, tokenizer.chat_template)"
        return f"chat template ({self.origin})"

    def __post_init__(self) -> None:
        if not isinstance(self.source, str):
            raise BadInputError(f"{self.label} is not a string")
        if len(self.source) > MAX_TEMPLATE_CHARS:
            raise BadInputError(f"{self.label} is {len(self.source):,} characters long; "
                                f"refusing more than {MAX_TEMPLATE_CHARS:,}")
        self._env = _environment(self.max_chars)
        try:
            self._compiled = self._env.from_string(self.source)
        except Exception as e:  # TemplateSyntaxError, or a RecursionError on absurd nesting
            raise BadInputError(f"{self.label} does not parse: {_one_line(e)}") from None

    @classmethod
    def for_model(cls, template: str | None, bos_token: str = "", eos_token: str = "",
                  vocabulary: "set[str] | frozenset[str] | None" = None) -> "ChatTemplate":
        """The model's own template, else a built-in one matching the vocabulary's turn markers."""
        if template:
            return cls(template, bos_token, eos_token, "model")
        vocabulary = vocabulary or frozenset()
        for marker, name, source in FALLBACK_TEMPLATES:
            if marker in vocabulary:
                return cls(source, bos_token, eos_token, f"built-in {name}")
        return cls(CHATML_TEMPLATE, bos_token, eos_token, "built-in chatml")

    def render(self, messages: list[dict], add_generation_prompt: bool = True,
               tools: list[dict] | None = None) -> str:
        """The conversation as the template writes it. `tools`: OpenAI tool dicts, given to the
        template as `tools` (see generation/tools/chat.py for messages with tool calls)."""
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise BadInputError(f"chat message #{i} needs 'role' and 'content'")
            if m["role"] not in VALID_ROLES:
                raise BadInputError(f"chat message #{i} has role {m['role']!r}; "
                                    f"expected one of {', '.join(VALID_ROLES)}")
        from .template_sandbox import TemplateLimitError, measure

        # the budget grows with the conversation: a long chat is not an attack
        max_chars = self.max_chars + 2 * measure((messages, tools, self.bos_token, self.eos_token), 1 << 26)[0]
        # no tools: `tools` stays undefined, as the renders checked against transformers had it
        extra = {} if tools is None else {"tools": tools}
        try:
            return self._env.render_limited(
                self._compiled, self.max_seconds, max_chars,
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
                **extra,
            )
        except TemplateLimitError as e:
            raise BadInputError(f"{self.label} stopped: {e}") from None
        except _TemplateRaised as e:
            raise BadInputError(f"{self.label} refused the conversation: {_one_line(e)}") from None
        except Exception as e:  # a template is foreign code: any failure is the template's
            raise BadInputError(f"{self.label} failed to render: "
                                f"{type(e).__name__}: {_one_line(e)}") from None


@functools.lru_cache(maxsize=8)
def _environment(max_chars: int):
    """The sandbox templates compile in, shared by templates with the same size limit (renders in
    one environment take turns)."""
    # jinja2 is imported here, not at module level: plain completions never need it (~50 ms)
    from .template_sandbox import LimitedEnvironment

    env = LimitedEnvironment(max_chars, trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = _tojson
    env.guard_filters()
    env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now)
    return env


def _one_line(error: BaseException, limit: int = 300) -> str:
    """An exception's message on one line, cut to `limit` characters (it may quote the template)."""
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[:limit] + "..."
