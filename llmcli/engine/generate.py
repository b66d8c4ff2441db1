"""The generation core shared by `llmcli run`, the library API and (later) the server.

`generate` is a plain generator: evaluate the prompt once (in batches), then pick a token from the
last logits, yield it, feed it back, repeat. Greedy (argmax) unless a sampler is given; a sampler
is any callable `sampler(logits: float32 (n_vocab,)) -> int`. Stopping on end-of-generation
tokens is the caller's choice (`stop_ids`), so reference runs can go past EOS like llama.cpp's.
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator

import numpy as np

Sampler = Callable[[np.ndarray], int]


def greedy(logits: np.ndarray) -> int:
    """The highest logit; ties go to the lowest id, as with llama.cpp's argmax."""
    return int(np.argmax(logits))


def generate(model, prompt_ids: Iterable[int], max_tokens: int, sampler: Sampler | None = None,
             stop_ids: Iterable[int] = (), reset: bool = True) -> Iterator[int]:
    """Yield up to max_tokens new token ids continuing prompt_ids (a stop id is yielded, then ends).

    reset=False continues the model's cached context (the prompt is appended to it).
    """
    pick = sampler or greedy
    stop = set(int(t) for t in stop_ids)
    if reset:
        model.reset()
    ids = list(prompt_ids)
    if max_tokens <= 0:
        return
    logits = model.forward(ids)
    for i in range(max_tokens):
        token = int(pick(logits))
        yield token
        if token in stop or i == max_tokens - 1:
            return
        logits = model.forward([token])
