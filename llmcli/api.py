"""The Python API.

    import llmcli
    llm = llmcli.load()                      # the demo model; or llmcli.load("model.gguf")
    for piece in llm.generate("The capital of France is", max_tokens=16, temp=0):
        print(piece, end="", flush=True)
    for piece in llm.chat([{"role": "user", "content": "Hi!"}]):
        print(piece, end="")
    reply = llm.chat(messages, tools=[...], tool_choice="auto").run()   # OpenAI's function tools
    reply.tool_calls, reply.content, reply.message                      # parsed calls; the message
    done = llm.complete_many(["Once upon a time", "The sky is"], max_tokens=32)   # decoded together
    engine = llm.engine()                    # submit from any thread (servers)
    vectors = llm.embed(["a text", "another"], pooling="mean")   # (2, n_embd), L2-normalised

A `Completion` is one generation: iterate it for text pieces, then read `tokens`, `text`,
`stop_reason` (see `llmcli.generation.STOP_REASONS`) and `timings`. Generation runs on the
continuous-batching scheduler of `llmcli.generation` with `parallel` sequence slots; a new prompt
starts from the slot that has the longest cached prefix of it, so a chat turn only evaluates
what the conversation added.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from .engine.kv_cache import DEFAULT_KV_TYPE
from .engine.prompt_activations import DEFAULT_PROMPT_ACTIVATIONS
from .generation.chat import ChatTemplate
from .errors import BadInputError
from .generation import Completion, Engine, Request, SamplingParams, Scheduler
from .generation.completion import ChatCompletion
from .generation.grammar import Grammar, compile_grammar, to_grammar
from .generation.grammar.tokens import TokenIndex
from .generation.tools import ReplyReader, ToolChat
from .generation.pooling import l2_normalize, pooling_kind
from .vocab import Tokenizer


def sampling_params(params: SamplingParams | None = None, **fields) -> SamplingParams:
    """`params`, or SamplingParams(**fields) (llama.cpp's defaults for the fields not given)."""
    if params is not None:
        if fields:
            raise BadInputError(f"give sampling options as params= or as keywords, not both: {sorted(fields)}")
        return params.validate()
    known = SamplingParams.__dataclass_fields__
    unknown = sorted(set(fields) - set(known))
    if unknown:
        raise BadInputError(f"unknown sampling option {unknown[0]!r} (options: {', '.join(known)})")
    return SamplingParams(**fields).validate()


class LLM:
    """A loaded model with its tokenizer, chat template and `parallel` sequence slots whose cached
    contexts persist between calls."""

    def __init__(self, path: str | os.PathLike, *, threads: int | None = None,
                 ctx_size: int | None = None, batch_size: int = 512, parallel: int = 1,
                 max_queue: int | None = None, use_mmap: bool = True, mlock: bool = False,
                 cache_type_k: str = DEFAULT_KV_TYPE, cache_type_v: str = DEFAULT_KV_TYPE,
                 prompt_activations: str = DEFAULT_PROMPT_ACTIVATIONS):
        from .models import load_model

        if ctx_size is not None and ctx_size <= 0:
            raise BadInputError(f"--ctx-size must be positive, got {ctx_size}")
        self.path = Path(path)
        self.model = load_model(self.path, threads=threads, ctx_size=ctx_size, batch_size=batch_size,
                                n_seq=parallel, use_mmap=use_mmap, mlock=mlock, cache_type_k=cache_type_k,
                                cache_type_v=cache_type_v, prompt_activations=prompt_activations)
        self.tokenizer = Tokenizer.from_gguf(self.model.reader)
        self.scheduler = Scheduler(self.model, self.tokenizer, n_parallel=parallel, max_queue=max_queue)
        self._engine: Engine | None = None
        self._template: ChatTemplate | None = None

    # -- tokens --------------------------------------------------------------------------------

    @property
    def kv_memory(self) -> dict:
        """The KV cache's types, positions per sequence, sequences and bytes (Transformer.kv_memory)."""
        return self.model.kv_memory(self.scheduler.n_parallel)

    @property
    def n_ctx(self) -> int:
        """Context of each sequence, in tokens."""
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
        return self.model.logits(list(ids))

    def reset(self) -> None:
        """Forget the cached contexts."""
        self._scheduler().reset()

    # -- generation ----------------------------------------------------------------------------

    def _scheduler(self) -> Scheduler:
        if self._engine is not None:
            raise BadInputError("this model is served by its engine(): submit requests to it instead")
        return self.scheduler

    def _request(self, prompt: str | Sequence[int], max_tokens: int, params: SamplingParams | None,
                 stop: Sequence[str], parse_special: bool, ignore_eos: bool, cache_prompt: bool,
                 grammar: Grammar | None = None) -> Request:
        ids = (self.tokenize(prompt, add_special=True, parse_special=parse_special)
               if isinstance(prompt, str) else [int(t) for t in prompt])
        return Request(ids, max_tokens=max_tokens, params=params or SamplingParams(), stop=list(stop),
                       ignore_eos=ignore_eos, cache_prompt=cache_prompt, grammar=grammar)

    def complete(self, prompt: str | Sequence[int], *, max_tokens: int = -1, params: SamplingParams | None = None,
                 stop: Sequence[str] = (), parse_special: bool = True, ignore_eos: bool = False,
                 cache_prompt: bool = True, grammar: str | Grammar | None = None,
                 json_schema: dict | None = None) -> Completion:
        """A Completion for a text prompt (tokenized with BOS per the model) or a list of ids.
        `grammar` (GBNF text) or `json_schema` (a dict) constrains the output (see
        llmcli.generation.grammar); a bad one raises GrammarError, a BadInputError."""
        sched = self._scheduler()
        request = self._request(prompt, max_tokens, params, stop, parse_special, ignore_eos, cache_prompt,
                                to_grammar(grammar, json_schema))
        return Completion(sched, sched.new_sequence(request))

    def complete_many(self, prompts: Sequence[str | Sequence[int]], *, max_tokens: int = -1,
                      params: SamplingParams | Sequence[SamplingParams] | None = None,
                      stop: Sequence[str] = (), parse_special: bool = True, ignore_eos: bool = False,
                      cache_prompt: bool = True, grammar: str | Grammar | None = None,
                      json_schema: dict | None = None) -> list[Completion]:
        """Generate for every prompt, `parallel` at a time in one batch, and return the finished
        Completions in prompt order. `params` may give each prompt its own sampling; `grammar` or
        `json_schema` constrains every output (each follows it on its own)."""
        sched = self._scheduler()
        per_prompt = params if isinstance(params, (list, tuple)) else [params] * len(prompts)
        if len(per_prompt) != len(prompts):
            raise BadInputError(f"{len(per_prompt)} sampling parameter sets for {len(prompts)} prompts")
        constraint = to_grammar(grammar, json_schema)
        seqs = [sched.new_sequence(self._request(p, max_tokens, sp, stop, parse_special, ignore_eos, cache_prompt,
                                                 constraint))
                for p, sp in zip(prompts, per_prompt)]
        _run_together(sched, seqs)
        return [Completion(sched, seq) for seq in seqs]

    def generate(self, prompt: str | Sequence[int], max_tokens: int = 256, stop: Sequence[str] = (),
                 parse_special: bool = True, grammar: str | Grammar | None = None, json_schema: dict | None = None,
                 **sampling) -> Iterator[str]:
        """Stream the continuation of `prompt` as text pieces. `sampling`: SamplingParams fields
        (temp, top_k, top_p, min_p, repeat_penalty, repeat_last_n, seed), llama.cpp's defaults;
        `grammar` (GBNF text) or `json_schema` (a dict) constrains the output."""
        return iter(self.complete(prompt, max_tokens=max_tokens, params=sampling_params(**sampling), stop=stop,
                                  parse_special=parse_special, grammar=grammar, json_schema=json_schema))

    # -- embeddings ----------------------------------------------------------------------------

    def pooling(self, requested: str | None = None) -> str:
        """The pooling embeddings use: `requested` ("mean", "cls", "last"), else the one the GGUF
        declares (`{arch}.pooling_type`); an error saying how to ask for one when it declares none."""
        return pooling_kind(requested, self.model.hp.pooling_type)

    def embed(self, texts: str | Sequence[str | Sequence[int]], pooling: str | None = None,
              normalize: bool = True) -> np.ndarray:
        """Embeddings as llama.cpp's llama-embedding computes them: each text's final-norm hidden
        states (tokenized with BOS/EOS as the model asks) pooled by `self.pooling(pooling)`, then
        L2-normalised unless normalize=False. One text: a float32 vector (n_embd,); a list of texts
        or of token-id lists (a flat list of ids is one input): an array (len(texts), n_embd).
        The texts are evaluated in the `parallel` slots, each from an empty context."""
        kind = self.pooling(pooling)
        inputs = embedding_inputs(texts)
        sched = self._scheduler()
        seqs = [sched.new_sequence(Request(self.tokenize(item, add_special=True, parse_special=True)
                                           if isinstance(item, str) else item, pooling=kind))
                for item in inputs]
        _run_together(sched, seqs)
        vectors = np.stack([l2_normalize(seq.embedding) if normalize else seq.embedding for seq in seqs])
        return vectors[0] if isinstance(texts, str) else vectors

    def engine(self) -> Engine:
        """The scheduler on a thread of its own, for submitting from any thread (see
        `llmcli.generation.Engine`); the synchronous methods are off while it runs."""
        if self._engine is None:
            self._engine = Engine(self.scheduler)
        return self._engine

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None

    @property
    def chat_template(self) -> ChatTemplate:
        if self._template is None:
            tok = self.tokenizer
            bos = tok.token_text(tok.bos_id) if tok.bos_id is not None else ""
            eos = tok.token_text(tok.eos_id) if tok.eos_id is not None else ""
            self._template = ChatTemplate.for_model(self.model.reader.get("tokenizer.chat_template"), bos, eos,
                                                    _marker_texts(tok))
        return self._template

    def prepare_chat(self, messages: list[dict], tools: list[dict] | None = None, tool_choice=None,
                     parallel_tool_calls: bool = True) -> "PreparedChat":
        """A chat request made ready: the conversation (OpenAI's messages, with tool calls and tool
        results) rendered with the chat template and tokenized (one BOS at most), and, with `tools`
        (OpenAI's function tools) and `tool_choice` ("auto", "none", "required" or
        {"type": "function", "function": {"name": ...}}), how the reply is constrained and read."""
        chat = ToolChat.prepare(self.chat_template, messages, tools, tool_choice, parallel_tool_calls)
        ids = self.tokenize(chat.prompt, add_special=True, parse_special=True)
        bos = self.tokenizer.bos_id
        if bos is not None and len(ids) >= 2 and ids[0] == bos and ids[1] == bos:
            ids = ids[1:]  # the template wrote BOS itself
        grammar = None
        if chat.grammar_text is not None:
            grammar = compile_grammar(chat.grammar_text)  # cached: a conversation's turns share it
            # the vocabulary's pieces for the grammar filter: built once (a second for 262k tokens)
            # here, where a server prepares chats off its event loop, not at submit, which runs on it
            TokenIndex.of(self.tokenizer)
        return PreparedChat(ids, chat, self._single_tokens(chat.format.preserved) if chat.reads_calls else frozenset(),
                            grammar)

    def _single_tokens(self, texts: Iterable[str]) -> frozenset[int]:
        """The ids of those texts that are one token of the vocabulary."""
        ids = [self.tokenize(t, add_special=False, parse_special=True) for t in texts]
        return frozenset(i[0] for i in ids if len(i) == 1)

    def chat_prompt_ids(self, messages: list[dict]) -> list[int]:
        """The conversation rendered with the chat template and tokenized (one BOS at most)."""
        return self.prepare_chat(messages).prompt_ids

    def chat_completion(self, messages: list[dict], *, max_tokens: int = -1, params: SamplingParams | None = None,
                        stop: Sequence[str] = (), tools: list[dict] | None = None, tool_choice=None,
                        parallel_tool_calls: bool = True, grammar: str | Grammar | None = None,
                        json_schema: dict | None = None) -> ChatCompletion:
        """The assistant's reply to `messages` as a ChatCompletion: iterate it for the content,
        then read `tool_calls`, `content` and `message` (see `prepare_chat` for the tools).
        `grammar` / `json_schema` constrain the reply as for `generate` (not together with tools:
        the tools' call syntax is a grammar of its own)."""
        constraint = to_grammar(grammar, json_schema)
        if constraint is not None and tools:
            raise BadInputError("tools cannot be combined with a grammar or JSON schema for the reply")
        chat = self.prepare_chat(messages, tools, tool_choice, parallel_tool_calls)
        if constraint is not None:
            chat = replace(chat, grammar=constraint)
        sched = self._scheduler()
        request = chat.request(max_tokens=max_tokens, params=params or SamplingParams(), stop=list(stop))
        return ChatCompletion(sched, sched.new_sequence(request), chat.reader())

    def chat(self, messages: list[dict], max_tokens: int = 256, stop: Sequence[str] = (),
             tools: list[dict] | None = None, tool_choice=None, parallel_tool_calls: bool = True,
             grammar: str | Grammar | None = None, json_schema: dict | None = None,
             **sampling) -> ChatCompletion:
        """Stream the assistant's reply to `messages` ([{"role": ..., "content": ...}, ...]) as text
        pieces; `sampling`, `grammar` and `json_schema` as for `generate`. With `tools`, the calls
        the reply makes are in the returned ChatCompletion's `tool_calls` once it is read (`.run()`)."""
        return self.chat_completion(messages, max_tokens=max_tokens, params=sampling_params(**sampling), stop=stop,
                                    tools=tools, tool_choice=tool_choice, parallel_tool_calls=parallel_tool_calls,
                                    grammar=grammar, json_schema=json_schema)


@dataclass
class PreparedChat:
    """A chat request ready to submit: `prompt_ids`, the `tool_chat` (format, tools, choice,
    grammar text), the control tokens the reply must show (`preserved_tokens`, e.g. Mistral's
    [TOOL_CALLS]) and the compiled `grammar` the reply must follow (tool_choice "required" or a
    named function)."""

    prompt_ids: list[int]
    tool_chat: ToolChat
    preserved_tokens: frozenset[int] = frozenset()
    grammar: Grammar | None = None  # the call syntax, when calls are required

    def request(self, **fields) -> Request:
        """A generation Request for the prompt (`fields`: Request's other fields)."""
        return Request(self.prompt_ids, preserved_tokens=self.preserved_tokens, grammar=self.grammar, **fields)

    def reader(self) -> ReplyReader:
        return self.tool_chat.reader()



def embedding_inputs(value) -> list[str | list[int]]:
    """OpenAI's `input` of an embeddings request as a list of inputs: a string, a list of
    strings, a list of token ids (one input) or a list of token-id lists."""
    def is_id(v) -> bool:
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

    if isinstance(value, str):
        return [value]
    if not isinstance(value, (list, tuple)):
        raise BadInputError(f"the input to embed must be a string, a list of strings or token ids, "
                            f"got {type(value).__name__}")
    if not value:
        raise BadInputError("nothing to embed: the input list is empty")
    if all(is_id(v) for v in value):
        return [[int(v) for v in value]]
    out: list[str | list[int]] = []
    for i, item in enumerate(value):
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, (list, tuple)) and item and all(is_id(v) for v in item):
            out.append([int(v) for v in item])
        else:
            raise BadInputError(f"input item {i} must be a string or a non-empty list of token ids")
    return out


def _run_together(sched: Scheduler, seqs) -> None:
    """Queue every sequence and step until all are done (Ctrl-C or a failure ends them all)."""
    for seq in seqs:
        sched.submit(seq)
    try:
        sched.run_all()
    except BaseException:
        for seq in seqs:
            sched.cancel(seq, "interrupted")
        raise


def _marker_texts(tok: Tokenizer) -> frozenset[str]:
    """Texts of the control and user-defined tokens: what a built-in chat template looks for."""
    from .vocab.tokens import TokenAttr

    markers = TokenAttr.CONTROL | TokenAttr.USER_DEFINED
    return frozenset(tok.token_text(int(i)) for i in tok.ids_with_attr(int(markers)))


def load(path: str | os.PathLike | None = None, *, threads: int | None = None, ctx_size: int | None = None,
         batch_size: int = 512, parallel: int = 1, max_queue: int | None = None, use_mmap: bool = True,
         mlock: bool = False, cache_type_k: str = DEFAULT_KV_TYPE, cache_type_v: str = DEFAULT_KV_TYPE,
         prompt_activations: str = DEFAULT_PROMPT_ACTIVATIONS) -> LLM:
    """Load a GGUF model (None: the demo model, Gemma 3 270M, assembled once into the cache).

    ctx_size: tokens of context per sequence (default 4096, or the model's if smaller);
    parallel: sequences decoded together (KV cache: parallel x ctx_size positions);
    max_queue: requests that may wait for a slot before a submit raises QueueFullError (None: any);
    use_mmap=False: read the file into memory rather than map it (llama.cpp's --no-mmap);
    mlock: lock the model's bytes in RAM (llama.cpp's --mlock);
    cache_type_k, cache_type_v: the KV cache's element types, "f16" (default), "f32", or llama.cpp's
    block types "q8_0" (8.5 bits per value) and "q4_0" (4.5 bits; heads must split into blocks of 32);
    prompt_activations: how prompts are computed, "int8-gemm" (default: llama.cpp's 8-bit
    arithmetic on integer GEMMs, the fastest), "float" (float32, the more exact) or "int8"
    (Transformer.set_prompt_activations)."""
    if path is None:
        from .demo import demo_model_path

        path = demo_model_path()
    return LLM(path, threads=threads, ctx_size=ctx_size, batch_size=batch_size, parallel=parallel,
               max_queue=max_queue, use_mmap=use_mmap, mlock=mlock, cache_type_k=cache_type_k,
               cache_type_v=cache_type_v, prompt_activations=prompt_activations)
