"""One generation request and its live state while the scheduler advances it.

A `Request` says what to generate (prompt ids, limits, sampling, stops); a `Sequence` is that
request in flight: its slot of the KV cache (a `CacheSlot`: cached positions and their token ids),
its sampler (own parameters and seed), the tokens and text generated so far, and why it ended.
The scheduler moves it through

    waiting --admit--> prompt (chunks of the prompt evaluated) --> decoding (a token per step) --> done

and text pieces come out of `take_pieces()` as they are decoded (a stop string's prefix is held
back until it can no longer become the stop string).
"""

from __future__ import annotations

import enum
import itertools
import math
import time
from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Sequence as Seq

import numpy as np

from ..engine.jit import compile_seconds
from ..errors import BadInputError
from .grammar import Grammar, GrammarMatcher
from .pooling import Pooler
from .sampling import Sampler, SamplingParams
from .stops import StopMatcher

# Why a sequence ended: an end-of-generation token, max_tokens, a stop string, a full context,
# Ctrl-C in the caller, a cancel (a client that went away), a failed step, or (an embedding
# request) its prompt pooled.
STOP_REASONS = ("eos", "length", "stop", "context", "interrupted", "cancelled", "error", "embedded")
# OpenAI's finish_reason for each (the server's replies, batch records); "timeout": a server's --timeout
FINISH_REASONS = {"eos": "stop", "stop": "stop", "length": "length", "context": "length", "timeout": "length"}


def finish_reason(stop_reason: str | None, made_calls: bool = False) -> str:
    """OpenAI's finish_reason for a stop reason ("tool_calls" when the reply made calls)."""
    reason = FINISH_REASONS.get(stop_reason, "stop")
    return "tool_calls" if made_calls and reason == "stop" else reason

_request_ids = itertools.count(1)


@dataclass
class Request:
    """What to generate. `stop_ids` (default: the tokenizer's end-of-generation tokens) end the
    sequence without being part of its output; `ignore_eos` forbids them instead (llama.cpp's
    --ignore-eos). `cache_prompt`: start from the free slot that has the longest cached prefix of
    the prompt (llama-server's `cache_prompt`); off: evaluate the whole prompt again.
    `sampler`: a custom `sample(logits) -> id` callable replacing the sampling chain.
    `logprobs`: None, or record each generated token's log-probability and the `logprobs` most
    likely alternatives (see `TokenLogprob`). `pooling` ("mean", "cls", "last"): embed the prompt
    instead of generating - its final-norm hidden states pooled into `Sequence.embedding` (not
    normalised), evaluated from position 0 - and end with stop reason "embedded".
    `preserved_tokens`: control tokens whose text shows in the output (llama.cpp's preserved
    tokens: a tool-call marker such as Mistral's `[TOOL_CALLS]` must be read back).
    `grammar`: a compiled Grammar (`llmcli.generation.grammar.compile_grammar`) the output must
    follow: each sequence keeps its own place in it; end-of-generation tokens are allowed only where
    the grammar is complete, and the sequence ends (stop reason "eos") once nothing can follow."""

    prompt: list[int]
    max_tokens: int = -1
    params: SamplingParams = field(default_factory=SamplingParams)
    stop: Seq[str] = ()
    stop_ids: frozenset[int] | None = None
    ignore_eos: bool = False
    cache_prompt: bool = True
    sampler: Callable[[np.ndarray], int] | None = None
    logprobs: int | None = None
    pooling: str | None = None
    preserved_tokens: frozenset[int] = frozenset()
    grammar: Grammar | None = None
    id: int = field(default_factory=lambda: next(_request_ids))


@dataclass
class Timings:
    prompt_n: int = 0  # prompt tokens evaluated (after reusing the cached prefix)
    prompt_ms: float = 0.0  # time spent evaluating them
    predicted_n: int = 0
    predicted_ms: float = 0.0  # from the end of the prompt to the last token
    # Kernel compilation (first use of a kernel on this machine) while this sequence ran; left out
    # of prompt_ms and predicted_ms so tokens/s never counts it.
    compile_ms: float = 0.0

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
                "predicted_per_second": round(self.predicted_per_second, 3), "compile_ms": round(self.compile_ms, 3)}


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token's log-probability and the `n` most likely tokens at its position, best
    first, as (id, logprob). Taken from the model's logits before any sampler changes them
    (llama.cpp's n_probs without post_sampling_probs): a softmax over the whole vocabulary."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()

    @classmethod
    def from_logits(cls, logits: np.ndarray, token: int, n: int) -> "TokenLogprob":
        row = np.asarray(logits, dtype=np.float64)
        peak = row.max()
        log_total = peak + math.log(np.exp(row - peak).sum())
        top = ()
        if n > 0:
            n = min(n, row.shape[0])
            best = np.argpartition(-row, n - 1)[:n]
            best = best[np.argsort(-row[best], kind="stable")]
            top = tuple((int(i), float(row[i] - log_total)) for i in best)
        return cls(int(token), float(row[token] - log_total), top)


class Piece(NamedTuple):
    """Text decoded since the last piece, the token that produced it (None: a final flush of
    held-back text) and that token's TokenLogprob when the request asked for them."""

    text: str
    token: int | None
    logprob: TokenLogprob | None = None


class State(enum.Enum):
    WAITING = "waiting"
    PROMPT = "prompt"
    DECODING = "decoding"
    DONE = "done"


class _CustomSampler:
    """A bare `sample(logits) -> id` callable behind the Sampler interface."""

    def __init__(self, pick: Callable[[np.ndarray], int], seed: int):
        self.pick, self.seed = pick, seed

    def accept(self, token: int) -> None:
        pass

    def sample(self, logits: np.ndarray) -> int:
        return int(self.pick(logits))


class Sequence:
    """A request in flight (see the module docstring). Only the scheduler's thread changes it."""

    def __init__(self, request: Request, n_ctx: int, eog_ids: frozenset[int], detokenizer=None, tokenizer=None):
        if not request.prompt:
            raise ValueError("empty prompt")  # callers check first and say it in their words
        self.request = request
        self.state = State.WAITING
        self.slot = None  # CacheSlot while admitted
        self.n_evaluated = 0  # prompt positions whose keys/values are in the slot
        params = request.params.validate()
        if request.sampler is not None:
            self.sampler = _CustomSampler(request.sampler, params.seed or 0)
        else:
            self.sampler = Sampler(params, n_ctx)
        self.stop_ids = eog_ids if request.stop_ids is None else frozenset(int(t) for t in request.stop_ids)
        self.banned = np.array(sorted(self.stop_ids), np.int64) if request.ignore_eos and self.stop_ids else None
        self.grammar: GrammarMatcher | None = None
        if request.grammar is not None:
            if not isinstance(request.grammar, Grammar):
                raise BadInputError(f"a request's grammar must be a Grammar (from compile_grammar), "
                                    f"got {type(request.grammar).__name__}")
            if tokenizer is None:
                raise BadInputError("a grammar needs the model's tokenizer (to know each token's text)")
            self.grammar = GrammarMatcher(request.grammar, tokenizer, self.stop_ids)
        self._detok = detokenizer
        self._matcher = StopMatcher(request.stop)
        self.tokens: list[int] = []
        self.text = ""
        self.stop_reason: str | None = None
        self.timings = Timings()
        self.pending_input: int | None = None  # the last sampled token, to evaluate next step
        self._pieces: list[Piece] = []
        self._decode_started: float | None = None
        self._decode_compile_s = 0.0
        self.cancel_requested = False
        self.pooler = Pooler(request.pooling) if request.pooling is not None else None
        self.embedding: np.ndarray | None = None  # the pooled hidden states, once embedded

    @property
    def prompt(self) -> list[int]:
        return self.request.prompt

    @property
    def done(self) -> bool:
        return self.state is State.DONE

    def take_pieces(self) -> list[Piece]:
        """Pieces decoded since the last call; a final flush of held-back text comes with token None."""
        out, self._pieces = self._pieces, []
        return out

    # -- driven by the scheduler ---------------------------------------------------------------

    def prompt_done(self) -> None:
        for tok in self.prompt:
            self.sampler.accept(tok)
        self.state = State.DECODING
        self._decode_started = time.perf_counter()
        self._decode_compile_s = compile_seconds()
        if 0 <= self.request.max_tokens <= 0:
            self.finish("length")

    def embedded(self) -> None:
        """The whole prompt is pooled: the embedding is ready."""
        self.embedding = self.pooler.result()
        self.finish("embedded")

    def choose(self, logits: np.ndarray, n_ctx: int) -> None:
        """Sample the next token from this sequence's logits and take it (or end)."""
        masked = logits
        if self.banned is not None:
            masked = logits.copy()
            masked[self.banned] = -np.inf
        token = self.sampler.sample(masked) if self.grammar is None else self._sample_in_grammar(masked)
        if token is None:
            return
        self.sampler.accept(token)
        if token in self.stop_ids:
            self.finish("eos")
            return
        if self.grammar is not None:
            self.grammar.accept(token)
        self.tokens.append(token)
        self.timings.predicted_n = len(self.tokens)
        out, hit = ("", False)
        if self._detok is not None:
            out, hit = self._matcher.push(self._detok.feed(token))
        n_top = self.request.logprobs
        self._emit(out, token, None if n_top is None else TokenLogprob.from_logits(logits, token, n_top))
        if hit:
            self.finish("stop")
        elif 0 <= self.request.max_tokens <= len(self.tokens):
            self.finish("length")
        elif self.slot.n_past >= n_ctx:
            self.finish("context")
        elif self.grammar is not None and self.grammar.must_end:
            self.finish("eos")  # only end-of-generation could follow: as if it was sampled
        else:
            self.pending_input = token

    def _sample_in_grammar(self, logits: np.ndarray) -> int | None:
        """llama.cpp's grammar sampling (common_sampler_sample): the chain picks from the logits
        as they are; a token the grammar refuses sends the chain back to pick from the logits with
        every refused token at -inf. None (and the sequence ended) when no token is allowed."""
        token = self.sampler.sample(logits)
        if self.grammar.allows(token):
            return token
        masked = self.grammar.masked(logits)
        best = int(np.argmax(masked))
        if masked[best] == -np.inf:
            self.finish("eos" if self.grammar.can_end else "error")  # nothing in the vocabulary fits
            return None
        token = self.sampler.sample(masked)
        # a draw at the very end of the cumulative sum may land on a -inf candidate: take the best
        return token if masked[token] != -np.inf else best

    def finish(self, reason: str) -> None:
        if self.done:
            return
        self.stop_reason = reason
        self.state = State.DONE
        self.pending_input = None
        if self._decode_started is not None:
            compiling = compile_seconds() - self._decode_compile_s
            self.timings.compile_ms += compiling * 1000.0
            self.timings.predicted_ms = (time.perf_counter() - self._decode_started - compiling) * 1000.0
        if reason != "stop" and self._detok is not None:
            tail = self._matcher.push(self._detok.flush())[0] + self._matcher.flush()
            if tail:
                self._emit(tail, None)

    def _emit(self, text: str, token: int | None, logprob: TokenLogprob | None = None) -> None:
        self.text += text
        self._pieces.append(Piece(text, token, logprob))
