"""Chat prompts from the model's own template (`tokenizer.chat_template`), rendered with Jinja2.

Templates come from model files, i.e. from strangers: they are rendered in Jinja2's immutable
sandbox, with the few helpers Hugging Face templates expect (`raise_exception`, `strftime_now`,
a `tojson` that keeps non-ASCII). A GGUF without a template (the Gemma 3 270M demo model has none)
gets a built-in template chosen by the turn markers its vocabulary has, ChatML when none matches
(llama.cpp's own fallback).
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass, field
from typing import Any

from ..errors import BadInputError

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
    return datetime.datetime.now().strftime(fmt)


@dataclass
class ChatTemplate:
    source: str
    bos_token: str = ""
    eos_token: str = ""
    origin: str = "model"  # "model", or "built-in <name>" for a fallback
    _compiled: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        # jinja2 is imported here, not at module level: plain completions never need it (~50 ms)
        from jinja2 import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                            extensions=["jinja2.ext.loopcontrols"])
        env.filters["tojson"] = _tojson
        env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now)
        try:
            self._compiled = env.from_string(self.source)
        except TemplateError as e:
            raise BadInputError(f"chat template ({self.origin}) does not parse: {e}") from None

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

    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise BadInputError(f"chat message #{i} needs 'role' and 'content'")
            if m["role"] not in VALID_ROLES:
                raise BadInputError(f"chat message #{i} has role {m['role']!r}; "
                                    f"expected one of {', '.join(VALID_ROLES)}")
        try:
            return self._compiled.render(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
            )
        except _TemplateRaised as e:
            raise BadInputError(f"chat template ({self.origin}) refused the conversation: {e}") from None
        except Exception as e:  # a template is foreign code: any failure is the template's
            raise BadInputError(f"chat template ({self.origin}) failed to render: "
                                f"{type(e).__name__}: {e}") from None
