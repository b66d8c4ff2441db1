"""Request bodies: OpenAI's fields plus llama.cpp's extras, checked strictly (a string where a
number belongs is a 400, not a guess).

Fields the server cannot act on (`n` > 1, `logit_bias`, `tools` on /v1/completions, ...) are
refused with a 400 naming the field; leaving them at their no-op value (`n: 1`, `tools: []`) is
fine. Fields that only label a request (`user`, `metadata`, `store`) are accepted and not used. A
sampling field left out takes llama-server's default (`SamplingParams`), as llama-server does, not
OpenAI's.

Structured output: OpenAI's `response_format` ({"type": "json_object"} or {"type": "json_schema",
"json_schema": {"schema": ...}}) and llama.cpp's `grammar` (GBNF) and `json_schema`, one of them
per request.

Chat requests take OpenAI's `tools`, `tool_choice` and `parallel_tool_calls`, assistant messages
with `tool_calls` and `tool` messages; their types are checked here, their meaning (names, schemas,
which function `tool_choice` names, arguments as JSON) by generation/tools, whose errors name the
field too. Tools and structured output do not combine (llama-server refuses that too).
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..api import embedding_inputs
from ..errors import BadInputError
from ..generation import SamplingParams
from ..generation.grammar import Grammar, GrammarError, to_grammar

_DEFAULTS = SamplingParams()
MAX_TOP_LOGPROBS = 20  # OpenAI's bound for top_logprobs
MAX_EMBEDDING_INPUTS = 2048  # OpenAI's bound for the inputs of one embeddings request


def _absent(value: Any) -> bool:
    return value is None or value is False or value == [] or value == {} or value == ""


# field -> (is its value a no-op?, why it is refused otherwise)
UNSUPPORTED: dict[str, tuple[Callable[[Any], bool], str]] = {
    "n": (lambda v: v is None or v == 1, "one choice per request (n = 1); send several requests instead"),
    "best_of": (lambda v: v is None or v == 1, "one candidate per request (best_of = 1)"),
    "functions": (_absent, "the deprecated function calling: use 'tools'"),
    "function_call": (lambda v: v is None or v == "none", "the deprecated function calling: use 'tool_choice'"),
    "logit_bias": (_absent, "logit biases are not applied by this server"),
    "echo": (_absent, "the prompt is not echoed back"),
    "suffix": (_absent, "insertion (suffix) is not available"),
    "audio": (_absent, "this server reads and writes text only"),
    "modalities": (lambda v: v is None or v == ["text"], "this server writes text only"),
    "prediction": (_absent, "predicted outputs are not available"),
    "web_search_options": (_absent, "web search is not available"),
}


class StrictModel(BaseModel):
    # strict: no "1" -> 1 coercion; unknown fields are ignored like llama-server does, except
    # the UNSUPPORTED ones, refused by GenerationRequest
    model_config = ConfigDict(strict=True, extra="ignore")


class StreamOptions(StrictModel):
    include_usage: bool = False


class GenerationRequest(StrictModel):
    """What /v1/chat/completions and /v1/completions share."""

    model: str | None = None
    max_tokens: int | None = Field(None, ge=0)
    temperature: float = Field(_DEFAULTS.temp, ge=0, allow_inf_nan=False)
    top_p: float = Field(_DEFAULTS.top_p, gt=0, le=1)
    top_k: int = Field(_DEFAULTS.top_k, ge=0)
    min_p: float = Field(_DEFAULTS.min_p, ge=0, le=1)
    repeat_penalty: float = Field(_DEFAULTS.repeat_penalty, gt=0, allow_inf_nan=False)
    repeat_last_n: int = Field(_DEFAULTS.repeat_last_n, ge=-1)
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    seed: int | None = Field(None, ge=-1, lt=2**64)  # None or -1: a random seed
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    cache_prompt: bool = True
    ignore_eos: bool = False
    user: str | None = None  # a label for the caller's own bookkeeping
    response_format: dict[str, Any] | None = None
    grammar: str | None = None  # llama.cpp's: GBNF text
    json_schema: dict[str, Any] | None = None  # llama.cpp's: a JSON schema

    unsupported: ClassVar[dict[str, tuple[Callable[[Any], bool], str]]] = UNSUPPORTED  # what this endpoint refuses

    @model_validator(mode="before")
    @classmethod
    def _refuse_unsupported(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name, (is_noop, why) in cls.unsupported.items():
                if name in data and not is_noop(data[name]):
                    raise ValueError(f"'{name}' is not supported by this server: {why}")
        return data

    @model_validator(mode="after")
    def _stream_options_need_stream(self) -> "GenerationRequest":
        if self.stream_options is not None and not self.stream:
            raise ValueError("'stream_options' is only allowed when 'stream' is true")
        return self

    def output_grammar(self) -> Grammar | None:
        """The grammar `response_format`, `grammar` or `json_schema` asks for (None: free text);
        BadInputError naming the field when it cannot be used."""
        asked = {}
        if self.response_format is not None:
            kind = self.response_format.get("type", "text")
            if kind == "json_object":  # llama-server: a "schema" beside it is taken too
                asked["response_format"] = ("json_schema", self.response_format.get("schema") or {})
            elif kind == "json_schema":
                wrapper = self.response_format.get("json_schema")
                if not isinstance(wrapper, dict):
                    raise BadInputError("response_format.json_schema must be an object holding the 'schema'")
                asked["response_format.json_schema.schema"] = ("json_schema", wrapper.get("schema") or {})
            elif kind != "text":
                raise BadInputError(f"response_format.type must be text, json_object or json_schema, got {kind!r}")
        if self.grammar:
            asked["grammar"] = ("grammar", self.grammar)
        if self.json_schema is not None:
            asked["json_schema"] = ("json_schema", self.json_schema)
        if len(asked) > 1:
            raise BadInputError(f"give one of response_format, grammar, json_schema, not {' and '.join(asked)}")
        if not asked:
            return None
        (field, (kind, value)), = asked.items()
        if kind == "json_schema" and value == {}:
            value = {"type": "object"}  # as llama-server: an empty schema is any JSON object
        try:
            return to_grammar(**{kind: value})
        except GrammarError as e:
            raise BadInputError(f"{field}: {e}") from None

    def sampling_params(self) -> SamplingParams:
        return SamplingParams(
            temp=self.temperature, top_k=self.top_k, top_p=self.top_p, min_p=self.min_p,
            repeat_penalty=self.repeat_penalty, repeat_last_n=self.repeat_last_n,
            seed=None if self.seed in (None, -1) else self.seed,
            presence_penalty=self.presence_penalty, frequency_penalty=self.frequency_penalty,
        ).validate()

    @property
    def stop_strings(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def token_limit(self) -> int:
        """max tokens for the Request: -1 is until end of generation or a full context."""
        return -1 if self.max_tokens is None else self.max_tokens


class TextPart(StrictModel):
    type: Literal["text"]
    text: str


class FunctionCall(StrictModel):
    name: str
    arguments: str | dict[str, Any]  # JSON text, as OpenAI sends it; an object is taken too (llama.cpp)


class MessageToolCall(StrictModel):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


CHAT_ROLES = ("system", "developer", "user", "assistant", "tool")


class ChatMessage(StrictModel):
    role: str
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[MessageToolCall] | None = None
    tool_call_id: str | None = None

    @field_validator("role")
    @classmethod
    def _known_role(cls, role: str) -> str:
        if role == "function":
            raise ValueError("role 'function' is the deprecated function calling: use 'tool' messages")
        if role not in CHAT_ROLES:
            raise ValueError(f"role must be one of {', '.join(CHAT_ROLES)}; got {role!r}")
        return role

    @field_validator("content")
    @classmethod
    def _text_parts_only(cls, content: Any) -> Any:
        if isinstance(content, list):
            for part in content:
                if part.get("type") != "text":
                    raise ValueError(f"content parts of type {part.get('type')!r} are not supported: "
                                     f"this server reads text only")
                TextPart.model_validate(part)
        return content

    @model_validator(mode="after")
    def _has_content(self) -> "ChatMessage":
        if self.tool_calls is not None and self.role != "assistant":
            raise ValueError("'tool_calls' belong to assistant messages")
        if self.role == "tool" and self.tool_call_id is None:
            raise ValueError("'tool_call_id' is required in a tool message (the id of the call it answers)")
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError("'content' is required")
        return self

    def template_message(self) -> dict[str, Any]:
        """The message as generation/tools takes it: role and plain text (text parts joined by
        newlines, as llama-server joins them; `developer` is OpenAI's new name for `system`), and
        the tool calls, call id and name when given."""
        text = self.content if isinstance(self.content, str) or self.content is None else \
            "\n".join(p["text"] for p in self.content)
        message: dict[str, Any] = {"role": "system" if self.role == "developer" else self.role, "content": text}
        if self.tool_calls is not None:
            message["tool_calls"] = [c.model_dump() for c in self.tool_calls]
        if self.tool_call_id is not None:
            message["tool_call_id"] = self.tool_call_id
        if self.name is not None:
            message["name"] = self.name
        return message


class ChatCompletionRequest(GenerationRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=0)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool = True

    @model_validator(mode="after")
    def _top_logprobs_need_logprobs(self) -> "ChatCompletionRequest":
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("'top_logprobs' needs 'logprobs': true")
        return self

    def token_limit(self) -> int:
        limit = self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
        return -1 if limit is None else limit

    def logprobs_count(self) -> int | None:
        """Alternatives per token for the generation layer (None: no logprobs)."""
        return (self.top_logprobs or 0) if self.logprobs else None


class CompletionRequest(GenerationRequest):
    unsupported: ClassVar[dict[str, tuple[Callable[[Any], bool], str]]] = {**UNSUPPORTED,
                   "tools": (_absent, "tools are for /v1/chat/completions"),
                   "tool_choice": (lambda v: v is None or v == "none", "tools are for /v1/chat/completions")}
    prompt: Any = Field(...)
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, prompt: Any) -> str | list[int]:
        """A string or a list of token ids; a list holding exactly one of those is that one."""
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
            prompt = prompt[0]
        if isinstance(prompt, str):
            return prompt
        if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool)
                                                       for t in prompt):
            return prompt
        if isinstance(prompt, list) and len(prompt) > 1 and all(isinstance(p, (str, list)) for p in prompt):
            raise ValueError("several prompts in one request are not supported: send one request per prompt")
        raise ValueError("must be a string or a non-empty list of token ids")

    def logprobs_count(self) -> int | None:
        return self.logprobs


class NativeCompletionRequest(CompletionRequest):
    """llama-server's own POST /completion: `n_predict` (-1: no limit) as well as `max_tokens`."""

    n_predict: int | None = Field(None, ge=-1)

    def token_limit(self) -> int:
        limit = self.n_predict if self.n_predict is not None else self.max_tokens
        return -1 if limit is None else limit


class EmbeddingRequest(StrictModel):
    """POST /v1/embeddings: `input` a string, a list of strings, a list of token ids (one input)
    or a list of token-id lists; `dimensions`, when given, must be the model's width."""

    input: Any = Field(...)
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, gt=0)
    user: str | None = None

    @field_validator("input")
    @classmethod
    def _inputs(cls, value: Any) -> list[str | list[int]]:
        try:
            inputs = embedding_inputs(value)
        except BadInputError as e:
            raise ValueError(str(e)) from None
        if len(inputs) > MAX_EMBEDDING_INPUTS:
            raise ValueError(f"at most {MAX_EMBEDDING_INPUTS} inputs per request, got {len(inputs)}")
        return inputs


class TokenizeRequest(StrictModel):
    content: str
    add_special: bool = False
    parse_special: bool = True
    with_pieces: bool = False


class DetokenizeRequest(StrictModel):
    tokens: list[int]
