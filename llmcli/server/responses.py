"""Response bodies in OpenAI's shapes, field for field: chat completions and their stream chunks,
text completions and theirs, usage, both logprobs formats, and embedding lists.

Our stop reasons map onto OpenAI's: an end-of-generation token or a stop string is `stop`, or
`tool_calls` when the reply made calls; max_tokens, a full context or the server's --timeout is
`length`. A streamed call is deltas as OpenAI sends them: its index, id, type and name with empty
arguments, then the arguments' text in fragments (one, for calls the reader hands over whole), each
with only the index besides.
"""

from __future__ import annotations

import base64
import secrets
import time

import numpy as np

from .. import __version__
from ..generation import TokenLogprob
from ..generation.tools import ToolCall

SYSTEM_FINGERPRINT = f"llmcli-{__version__}"
def call_head_delta(index: int, call_id: str, name: str) -> dict:
    """The first delta of a streamed call: what it is, its arguments still empty."""
    return {"tool_calls": [{"index": index, "id": call_id, "type": "function",
                            "function": {"name": name, "arguments": ""}}]}


def arguments_delta(index: int, text: str) -> dict:
    """More of call `index`'s arguments."""
    return {"tool_calls": [{"index": index, "function": {"arguments": text}}]}


def tool_call_deltas(index: int, call: ToolCall) -> list[dict]:
    """The stream deltas of a call handed over whole: its head, then all its arguments."""
    return [call_head_delta(index, call.id, call.name), arguments_delta(index, call.arguments)]


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens}}


def embedding_list(vectors: list[np.ndarray], model: str, prompt_tokens: int, encoding_format: str) -> dict:
    """An embeddings response: each vector as floats, or base64 of its little-endian float32 bytes."""
    def encode(vector: np.ndarray):
        if encoding_format == "base64":
            return base64.b64encode(np.asarray(vector, "<f4").tobytes()).decode("ascii")
        return vector.tolist()

    return {"object": "list", "model": model,
            "data": [{"object": "embedding", "index": i, "embedding": encode(v)} for i, v in enumerate(vectors)],
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}}


class TokenTexts:
    """A token's text and bytes for logprobs (its piece: byte tokens give their one raw byte)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def bytes(self, token: int) -> bytes:
        return self.tokenizer.token_to_piece(token, special=False)

    def text(self, token: int) -> str:
        return self.bytes(token).decode("utf-8", "replace")

    def chat_entry(self, lp: TokenLogprob) -> dict:
        """One entry of a chat choice's logprobs.content."""
        def one(token: int, logprob: float) -> dict:
            return {"token": self.text(token), "logprob": logprob, "bytes": list(self.bytes(token))}

        return {**one(lp.token, lp.logprob), "top_logprobs": [one(t, v) for t, v in lp.top]}

    def completion_logprobs(self, lps: list[TokenLogprob], text_offset: int = 0) -> dict:
        """A text completion choice's logprobs: parallel lists; text_offset counts characters of
        the completion (from `text_offset`, where a stream's earlier chunks ended)."""
        tokens, offsets = [], []
        for lp in lps:
            offsets.append(text_offset)
            tokens.append(self.text(lp.token))
            text_offset += len(tokens[-1])
        return {"tokens": tokens, "token_logprobs": [lp.logprob for lp in lps],
                "top_logprobs": [{self.text(t): v for t, v in lp.top} for lp in lps],
                "text_offset": offsets}


class _Shapes:
    """The bodies of one completion share its id and creation time, in every chunk."""

    id_prefix = ""
    chunk_object = ""

    def __init__(self, model: str):
        self.id = new_id(self.id_prefix)
        self.created = int(time.time())
        self.model = model

    def _head(self, obj: str) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                "system_fingerprint": SYSTEM_FINGERPRINT}

    def usage_chunk(self, usage_: dict) -> dict:
        """The last chunk with stream_options.include_usage: no choices, the usage."""
        return {**self._head(self.chunk_object), "choices": [], "usage": usage_}


class ChatShapes(_Shapes):
    """/v1/chat/completions bodies."""

    id_prefix = "chatcmpl"
    chunk_object = "chat.completion.chunk"

    def completion(self, content: str | None, finish_reason: str, logprobs: list[dict] | None, usage_: dict,
                   tool_calls: list[ToolCall] = ()) -> dict:
        message = {"role": "assistant", "content": content}
        if tool_calls:
            message["tool_calls"] = [call.to_openai() for call in tool_calls]
        choice = {"index": 0, "message": message,
                  "logprobs": None if logprobs is None else {"content": logprobs, "refusal": None},
                  "finish_reason": finish_reason}
        return {**self._head("chat.completion"), "choices": [choice], "usage": usage_}

    def chunk(self, delta: dict, finish_reason: str | None = None, logprobs: list[dict] | None = None,
              with_usage_field: bool = False) -> dict:
        choice = {"index": 0, "delta": delta,
                  "logprobs": None if logprobs is None else {"content": logprobs, "refusal": None},
                  "finish_reason": finish_reason}
        body = {**self._head(self.chunk_object), "choices": [choice]}
        if with_usage_field:  # stream_options.include_usage: every chunk has usage, null until the last
            body["usage"] = None
        return body


class TextShapes(_Shapes):
    """/v1/completions bodies."""

    id_prefix = "cmpl"
    chunk_object = "text_completion"

    def completion(self, text: str, finish_reason: str, logprobs: dict | None, usage_: dict) -> dict:
        choice = {"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}
        return {**self._head("text_completion"), "choices": [choice], "usage": usage_}

    def chunk(self, text: str, finish_reason: str | None = None, logprobs: dict | None = None,
              with_usage_field: bool = False) -> dict:
        choice = {"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}
        body = {**self._head(self.chunk_object), "choices": [choice]}
        if with_usage_field:
            body["usage"] = None
        return body
