"""Continuous batching: the one generation loop, advancing many sequences on one model.

    sched = Scheduler(model, tokenizer, n_parallel=4)
    seq = sched.submit(Request(prompt_ids, max_tokens=64))
    while sched.step(): ...          # or: sched.run_until(seq)

Each `step()`:

    retire cancelled sequences (their slot is free at once)
    admit waiting requests into free slots: the slot whose cached tokens share the longest prefix
        with the prompt (its cached positions are reused; cache_prompt=False: none are); when a
        running sequence's cache holds a longer prefix, it is copied into a free slot instead
    one forward over the weights (`model.step`) for the next token of every decoding sequence and
        the next chunk (at most batch_size tokens) of the oldest admitted prompt, and of the
        following ones while their chunks fit in batch_size tokens in all: a long prompt delays
        the running sequences by one chunk per step, never by the whole prompt, and a burst of
        short prompts starts together. Each weight block is read once for all of them; attention
        runs per sequence over its own cache. Then each decode row (and each finished prompt's
        last row) is sampled with that sequence's own sampler. An embedding request's chunks give
        final-norm hidden states to pool (evaluated on their own), and it ends with its prompt
    retire finished sequences

A sequence's tokens do not depend on what else is in the batch: every row gets the arithmetic it
gets alone (decode rows and short chunks share one row-exact B-row mat-vec per projection, a
chunk of GEMM_MIN_TOKENS+ tokens is a GEMM of its own; norms and attention per sequence).

`n_parallel` sequences run at once (llama-server's `-np`); each has the full context `n_ctx`
(the KV cache holds n_parallel x n_ctx positions). Requests beyond that wait in a queue of at most
`max_queue` (None: unbounded). Single-threaded: one thread steps a scheduler (see `Engine` for
submitting from other threads).
"""

from __future__ import annotations

import time
from collections import deque

from ..engine.jit import compile_seconds
from ..errors import BadInputError, LlmcliError
from .sequence import Request, Sequence, State


class QueueFullError(LlmcliError):
    """The scheduler's waiting queue is full (a server answers 503)."""


class ContextSizeError(BadInputError):
    """A prompt longer than a sequence's context (a server answers 400 exceed_context_size_error)."""

    def __init__(self, n_prompt_tokens: int, n_ctx: int):
        super().__init__(f"the prompt has {n_prompt_tokens} tokens but the context holds "
                         f"{n_ctx}: raise --ctx-size or shorten the prompt")
        self.n_prompt_tokens, self.n_ctx = n_prompt_tokens, n_ctx


class Scheduler:
    def __init__(self, model, tokenizer=None, n_parallel: int = 1, max_queue: int | None = None,
                 prompt_first: bool = False):
        if n_parallel < 1:
            raise BadInputError(f"--parallel must be at least 1, got {n_parallel}")
        if max_queue is not None and max_queue < 0:
            raise BadInputError(f"--max-queue must be >= 0, got {max_queue}")
        self.model = model
        self.tokenizer = tokenizer
        self.n_parallel = int(n_parallel)
        self.max_queue = max_queue
        # prompt_first: no decode step while a prompt is pending (llama-batched-bench's phases).
        self.prompt_first = prompt_first
        self.cache = model.new_cache(self.n_parallel)
        self.free = [self.cache.slot(i, model.n_ctx) for i in range(self.n_parallel)]
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []

    # -- submitting ----------------------------------------------------------------------------

    def new_sequence(self, request: Request) -> Sequence:
        """Check a request and wrap it in a Sequence (not yet queued)."""
        prompt = request.prompt
        if not prompt:
            raise BadInputError("the prompt is empty (no tokens to start from)")
        n_ctx = self.model.n_ctx
        if len(prompt) > n_ctx:  # a prompt that fills the context still gives one token
            raise ContextSizeError(len(prompt), n_ctx)
        if request.logprobs is not None and request.logprobs < 0:
            raise BadInputError(f"logprobs must be >= 0 (alternatives per token), got {request.logprobs}")
        n_vocab = self.model.token_embd_raw.shape[0]
        bad = [t for t in prompt if not 0 <= int(t) < n_vocab]
        if bad:
            raise BadInputError(f"token id {bad[0]} is outside the vocabulary of {n_vocab} tokens")
        tok = self.tokenizer
        eog = tok.eog_ids if tok is not None else frozenset()
        detok = tok.stream(special=False, preserved=request.preserved_tokens) if tok is not None else None
        return Sequence(request, n_ctx, eog, detok, tok)

    def submit(self, request: Request | Sequence) -> Sequence:
        seq = request if isinstance(request, Sequence) else self.new_sequence(request)
        self.check_queue()
        self.waiting.append(seq)
        return seq

    def check_queue(self, also_waiting: int = 0) -> None:
        """Raise QueueFullError when one more request would wait beyond max_queue (requests that
        the free slots will take at the next step do not count as waiting)."""
        queued = len(self.waiting) + also_waiting - len(self.free)
        if self.max_queue is not None and queued >= self.max_queue:
            raise QueueFullError(f"the queue is full ({self.max_queue} requests waiting)")

    def cancel(self, seq: Sequence, reason: str = "cancelled") -> None:
        """End a sequence now (at a token boundary: only call between steps); its slot is free."""
        if seq.done:
            return
        if seq in self.waiting:
            self.waiting.remove(seq)
        seq.finish(reason)
        self._release(seq)

    @property
    def busy(self) -> bool:
        return bool(self.waiting or self.running)

    def reset(self) -> None:
        """Forget every cached prefix (nothing may be running)."""
        for slot in self.free:
            slot.n_past = 0

    # -- the loop ------------------------------------------------------------------------------

    def step(self) -> bool:
        """Advance every running sequence by one token and one prompt chunk; False when idle."""
        for seq in [s for s in self.running if s.cancel_requested]:
            self.cancel(seq)
        self._admit()
        if not self.running:
            return False
        n_ctx = self.model.n_ctx
        prompting = [s for s in self.running if s.state is State.PROMPT]
        decoding = [s for s in self.running if s.state is State.DECODING and s.pending_input is not None]
        if self.prompt_first and prompting:
            decoding = []
        # Prompt chunks, oldest first, up to batch_size tokens in all: several short prompts start in
        # one step (each sequence's next chunk is always its own whole chunk, cut as it is alone).
        chunks, budget = [], self.model.batch_size
        for i, seq in enumerate(prompting):
            size = min(len(seq.prompt) - seq.n_evaluated, self.model.batch_size)  # its next chunk
            if i and size > budget:
                break
            chunks.append(seq)
            budget -= size
        # An embedding's chunks give hidden states, not logits: they run on their own.
        pooled = [s for s in chunks if s.pooler is not None]
        joined = [s for s in chunks if s.pooler is None]
        if decoding or joined:
            self._joined_step(decoding, joined, n_ctx)
        for seq in pooled:
            self._pooled_chunk(seq)
        for seq in [s for s in self.running if s.done]:
            self._release(seq)
        return True

    def run_until(self, seq: Sequence) -> None:
        while not seq.done and self.step():
            pass

    def run_all(self) -> None:
        while self.step():
            pass

    # -- internals -----------------------------------------------------------------------------

    def _admit(self) -> None:
        while self.waiting and self.free:
            seq = self.waiting.popleft()
            prompt = seq.prompt
            if seq.pooler is not None:  # an embedding pools every position: evaluate them all
                best, reuse = min(self.free, key=lambda slot: slot.n_past), 0
            elif seq.request.cache_prompt:
                best = max(self.free, key=lambda slot: slot.common_prefix(prompt))
                reuse = best.common_prefix(prompt)
                # a running sequence may hold more of the prompt (a shared system prompt): copy it
                donor = max((s.slot for s in self.running), key=lambda slot: slot.common_prefix(prompt),
                            default=None)
                if donor is not None and donor.common_prefix(prompt) > reuse:
                    best = min(self.free, key=lambda slot: slot.n_past)
                    best.copy_from(donor)
                    reuse = best.common_prefix(prompt)
            else:  # the slot with the least cached, none reused
                best, reuse = min(self.free, key=lambda slot: slot.n_past), 0
            self.free.remove(best)
            seq.slot = best
            # evaluate at least the last prompt token: its logits give the first new token
            seq.n_evaluated = min(reuse, len(prompt) - 1)
            seq.state = State.PROMPT
            self.running.append(seq)

    def _joined_step(self, decoding: list[Sequence], prompting: list[Sequence], n_ctx: int) -> None:
        """One pass over the weights: the next token of every decoding sequence and the next chunk
        of every prompting one (model.step keeps each sequence's arithmetic what it is alone)."""
        chunks = []
        for seq in prompting:
            start = seq.n_evaluated
            chunk = seq.prompt[start:start + self.model.batch_size]
            chunks.append((seq.slot, chunk, start, start + len(chunk) == len(seq.prompt)))
        began, compiled = time.perf_counter(), compile_seconds()
        logits, chunk_logits = self.model.step([s.slot for s in decoding], [s.pending_input for s in decoding],
                                               chunks)
        compiling = compile_seconds() - compiled
        spent_ms = (time.perf_counter() - began - compiling) * 1000.0
        for seq, row in zip(decoding, logits if logits is not None else ()):
            seq.pending_input = None
            seq.choose(row, n_ctx)
        for seq, (_, chunk, start, last), row in zip(prompting, chunks, chunk_logits):
            # a chunk evaluated with others took the step's time, as the user waiting for it sees
            seq.timings.compile_ms += compiling * 1000.0
            seq.timings.prompt_ms += spent_ms
            seq.timings.prompt_n += len(chunk)
            seq.n_evaluated = start + len(chunk)
            if last:
                seq.prompt_done()
                if not seq.done:
                    seq.choose(row, n_ctx)

    def _pooled_chunk(self, seq: Sequence) -> None:
        """An embedding request's next chunk: final-norm hidden states of every row, or the last one."""
        start = seq.n_evaluated
        chunk = seq.prompt[start:start + self.model.batch_size]
        began, compiled = time.perf_counter(), compile_seconds()
        pooler = seq.pooler
        rows = self.model.forward(seq.slot, chunk, pos=start, all_logits=pooler.all_rows, hidden=True)
        pooler.add(rows.reshape(-1, rows.shape[-1]), start, len(chunk))
        compiling = compile_seconds() - compiled
        seq.timings.compile_ms += compiling * 1000.0
        seq.timings.prompt_ms += (time.perf_counter() - began - compiling) * 1000.0
        seq.timings.prompt_n += len(chunk)
        seq.n_evaluated = start + len(chunk)
        if seq.n_evaluated == len(seq.prompt):
            seq.embedded()

    def _release(self, seq: Sequence) -> None:
        if seq in self.running:
            self.running.remove(seq)
        if seq.slot is not None:  # its cached tokens stay for a later prompt to reuse
            self.free.append(seq.slot)
            seq.slot = None
