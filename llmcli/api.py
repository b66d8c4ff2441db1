"""The Python API, and the generation core `llmcli run` uses too.

    import llmcli
    llm = llmcli.load()                      # the demo model; or llmcli.load("model.gguf")
    for piece in llm.generate("The capital of France is", max_tokens=16, temp=0):
        print(piece, end="", flush=True)
    for piece in llm.chat([{"role": "user", "content": "Hi!"}]):
        print(piece, end="")

A `Completion` is one generation: iterate it for text pieces, then read `tokens`, `text`,
`stop_reason` ("eos", "length", "stop", "context", "interrupted") and `timings`. The model keeps
its KV cache between calls and reuses the longest common prefix of the new prompt, so a chat turn
only evaluates what the conversation added.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from .engine.chat import ChatTemplate
from .engine.sampling import Sampler, SamplingParams
from .vocab import Tokenizer
from .errors import BadInputError

DEFAULT_CTX_SIZE = 4096
STOP_REASONS = ("eos", "length", "stop", "context", "interrupted")


@dataclass
class Timings:
    prompt_n: int = 0  # prompt tokens evaluated (after reusing the cached prefix)
    prompt_ms: float = 0.0
    predicted_n: int = 0
    predicted_ms: float = 0.0

    @property
    def prompt_per_second(self) -> float:
        return self.prompt_n * 1000.0 / self.prompt_ms if self.prompt_ms > 0 else 0.0

    @property
    def predicted_per_second(self) -> float:
        return self.predicted_n * 1000.0 / self.predicted_ms if self.predicted_ms > 0 else 0.0

    def to_dict(self) -> dict:
        return {"prompt_n": self.prompt_n, "prompt_ms": round(self.prompt_ms, 3),
                "prompt_per_second": round(self.prompt_per_second, 3),
                "predicted_n": self.predicted_n, "predicted_ms": round(self.predicted_ms, 3),
                "predicted_per_second": round(self.predicted_per_second, 3)}


class _StopMatcher:
    """Holds back generated text that could still turn into a stop string."""

    def __init__(self, stops: Sequence[str]):
        self.stops = [s for s in stops if s]
        self.pending = ""

    def push(self, text: str) -> tuple[str, bool]:
        """Add text; return (text safe to emit, whether a stop string was hit)."""
        self.pending += text
        for s in self.stops:
            at = self.pending.find(s)
            if at >= 0:
                out, self.pending = self.pending[:at], ""
                return out, True
        hold = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(self.pending)), 0, -1):
                if self.pending.endswith(s[:k]):
                    hold = max(hold, k)
                    break
        cut = len(self.pending) - hold
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


@dataclass
class Completion:
    """One generation. Iterate for text pieces; afterwards the fields below are final."""

    llm: "LLM"
    prompt_tokens: list[int]
    max_tokens: int
    sampler: Sampler
    stop: Sequence[str] = ()
    ignore_eos: bool = False  # never end on an end-of-generation token (llama.cpp's --ignore-eos)
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    stop_reason: str | None = None
    timings: Timings = field(default_factory=Timings)

    def __iter__(self) -> Iterator[str]:
        llm, model = self.llm, self.llm.model
        detok = llm.tokenizer.stream(special=False)
        matcher = _StopMatcher(self.stop)
        started = time.perf_counter()
        generating_since = None
        banned = np.array(sorted(llm.tokenizer.eog_ids), dtype=np.int64) if self.ignore_eos else None
        try:
            logits = llm._evaluate_prompt(self.prompt_tokens, self.timings)
            for tok in self.prompt_tokens:
                self.sampler.accept(tok)
            generating_since = time.perf_counter()
            self.timings.prompt_ms = (generating_since - started) * 1000.0
            while True:
                if 0 <= self.max_tokens <= len(self.tokens):
                    self.stop_reason = "length"
                    break
                if banned is not None and len(banned):
                    logits = logits.copy()
                    logits[banned] = -np.inf
                token = self.sampler.sample(logits)
                self.sampler.accept(token)
                if llm.tokenizer.is_eog(token):
                    self.stop_reason = "eos"
                    break
                self.tokens.append(token)
                self.timings.predicted_n = len(self.tokens)
                out, hit = matcher.push(detok.feed(token))
                if out:
                    self.text += out
                    yield out
                if hit:
                    self.stop_reason = "stop"
                    break
                if 0 <= self.max_tokens <= len(self.tokens):
                    self.stop_reason = "length"
                    break
                if model.n_past >= model.n_ctx:
                    self.stop_reason = "context"
                    break
                logits = llm._evaluate([token])
        except KeyboardInterrupt:
            self.stop_reason = "interrupted"
        if generating_since is not None:
            self.timings.predicted_ms = (time.perf_counter() - generating_since) * 1000.0
        if self.stop_reason != "stop":
            tail = matcher.push(detok.flush())[0] + matcher.flush()
            if tail:
                self.text += tail
                yield tail

    def run(self) -> "Completion":
        """Generate to the end without streaming."""
        for _ in self:
            pass
        return self


class LLM:
    """A loaded model with its tokenizer, chat template and a context that persists between calls."""

    def __init__(self, path: str | os.PathLike, *, threads: int | None = None,
                 ctx_size: int | None = None, batch_size: int = 512):
        from .models import load_model

        self.path = Path(path)
        self.model = load_model(self.path, threads=threads, ctx_size=_ctx_for(self.path, ctx_size),
                                batch_size=batch_size)
        self.tokenizer = Tokenizer.from_gguf(self.model.reader)
        self._evaluated: list[int] = []  # ids whose keys/values are in the cache, in order
        self._template: ChatTemplate | None = None

    # -- tokens --------------------------------------------------------------------------------

    @property
    def n_ctx(self) -> int:
        return self.model.n_ctx

    @property
    def n_vocab(self) -> int:
        return self.tokenizer.n_vocab

    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = False) -> list[int]:
        return self.tokenizer.tokenize(text, add_special=add_special, parse_special=parse_special)

    def detokenize(self, ids: Iterable[int]) -> str:
        return self.tokenizer.detokenize(list(ids))

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """Float32 logits of every position, (len(ids), n_vocab), from an empty context."""
        self._evaluated = []
        out = self.model.logits(list(ids))
        self._evaluated = list(ids)
        return out

    def reset(self) -> None:
        self.model.reset()
        self._evaluated = []

    # -- evaluation with prefix reuse ------------------------------------------------------------

    def _evaluate(self, ids: list[int]) -> np.ndarray:
        logits = self.model.forward(ids)
        self._evaluated.extend(ids)
        return logits

    def _evaluate_prompt(self, prompt: list[int], timings: Timings) -> np.ndarray:
        if not prompt:
            raise BadInputError("the prompt is empty (no tokens to start from)")
        if len(prompt) >= self.n_ctx:
            raise BadInputError(f"the prompt has {len(prompt)} tokens but the context holds "
                                f"{self.n_ctx}: raise --ctx-size or shorten the prompt")
        common = 0
        for a, b in zip(self._evaluated, prompt):
            if a != b:
                break
            common += 1
        common = min(common, len(prompt) - 1)  # evaluate at least one token to get logits
        del self._evaluated[common:]
        timings.prompt_n = len(prompt) - common
        logits = self.model.forward(prompt[common:], pos=common)
        self._evaluated.extend(prompt[common:])
        return logits

    # -- generation ----------------------------------------------------------------------------

    def complete(self, prompt: str | Sequence[int], *, max_tokens: int = -1, params: SamplingParams | None = None,
                 stop: Sequence[str] = (), parse_special: bool = True, ignore_eos: bool = False) -> Completion:
        """A Completion for a text prompt (tokenized with BOS per the model) or a list of ids."""
        ids = (self.tokenize(prompt, add_special=True, parse_special=parse_special)
               if isinstance(prompt, str) else [int(t) for t in prompt])
        params = params or SamplingParams()
        return Completion(self, ids, max_tokens, Sampler(params, self.n_ctx), list(stop), ignore_eos)

    def generate(self, prompt: str | Sequence[int], max_tokens: int = 256, temp: float = 0.8,
                 top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05, repeat_penalty: float = 1.0,
                 repeat_last_n: int = 64, seed: int | None = None, stop: Sequence[str] = (),
                 parse_special: bool = True) -> Iterator[str]:
        """Stream the continuation of `prompt` as text pieces (llama.cpp's sampling defaults)."""
        params = SamplingParams(temp, top_k, top_p, min_p, repeat_penalty, repeat_last_n, seed)
        return iter(self.complete(prompt, max_tokens=max_tokens, params=params, stop=stop,
                                  parse_special=parse_special))

    @property
    def chat_template(self) -> ChatTemplate:
        if self._template is None:
            tok = self.tokenizer
            bos = tok.token_text(tok.bos_id) if tok.bos_id is not None else ""
            eos = tok.token_text(tok.eos_id) if tok.eos_id is not None else ""
            self._template = ChatTemplate.for_model(self.model.reader.get("tokenizer.chat_template"), bos, eos,
                                                    _marker_texts(tok))
        return self._template

    def chat_prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """The conversation rendered with the chat template and tokenized (one BOS at most)."""
        text = self.chat_template.render(messages, add_generation_prompt=True)
        ids = self.tokenize(text, add_special=True, parse_special=True)
        bos = self.tokenizer.bos_id
        if bos is not None and len(ids) >= 2 and ids[0] == bos and ids[1] == bos:
            ids = ids[1:]  # the template wrote BOS itself
        return ids

    def chat_completion(self, messages: list[dict[str, str]], *, max_tokens: int = -1,
                        params: SamplingParams | None = None, stop: Sequence[str] = ()) -> Completion:
        return self.complete(self.chat_prompt_ids(messages), max_tokens=max_tokens, params=params, stop=stop)

    def chat(self, messages: list[dict[str, str]], max_tokens: int = 256, temp: float = 0.8, top_k: int = 40,
             top_p: float = 0.95, min_p: float = 0.05, repeat_penalty: float = 1.0, repeat_last_n: int = 64,
             seed: int | None = None, stop: Sequence[str] = ()) -> Iterator[str]:
        """Stream the assistant's reply to `messages` ([{"role": ..., "content": ...}, ...])."""
        params = SamplingParams(temp, top_k, top_p, min_p, repeat_penalty, repeat_last_n, seed)
        return iter(self.chat_completion(messages, max_tokens=max_tokens, params=params, stop=stop))


def _marker_texts(tok: Tokenizer) -> frozenset[str]:
    """Texts of the control and user-defined tokens: what a built-in chat template looks for."""
    from .vocab.tokens import TokenAttr

    markers = TokenAttr.CONTROL | TokenAttr.USER_DEFINED
    return frozenset(tok.token_text(int(i)) for i in tok.ids_with_attr(int(markers)))


def _ctx_for(path: Path, ctx_size: int | None) -> int | None:
    """None -> 4096, or the model's training context when that is smaller (llama.cpp's default)."""
    if ctx_size is not None:
        if ctx_size <= 0:
            raise BadInputError(f"--ctx-size must be positive, got {ctx_size}")
        return ctx_size
    return None


def load(path: str | os.PathLike | None = None, *, threads: int | None = None, ctx_size: int | None = None,
         batch_size: int = 512) -> LLM:
    """Load a GGUF model (None: the demo model, Gemma 3 270M, assembled once into the cache)."""
    if path is None:
        from .demo import demo_model_path

        path = demo_model_path()
    return LLM(path, threads=threads, ctx_size=ctx_size, batch_size=batch_size)
