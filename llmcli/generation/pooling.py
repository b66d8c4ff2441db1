"""Embeddings: a prompt's final-norm hidden states pooled into one vector, as llama.cpp does.

    kind = pooling_kind(None, model.hp.pooling_type)   # the GGUF's `{arch}.pooling_type`, or asked
    pooler = Pooler(kind)
    pooler.add(rows)            # hidden states of consecutive prompt positions, chunk by chunk
    vector = l2_normalize(pooler.result())

The pooling types are llama.cpp's (`llama_pooling_type`): mean over the prompt's positions, the
first position (cls), or the last one (last: decoder models trained for embeddings, e.g. Qwen3
Embedding). The scheduler feeds a Pooler from the prompt chunks of a `Request` with `pooling` set.
"""

from __future__ import annotations

import numpy as np

from ..errors import BadInputError, UnsupportedError

# llama.cpp's enum llama_pooling_type, as GGUF files store it in `{arch}.pooling_type`
POOLING_TYPES = {0: "none", 1: "mean", 2: "cls", 3: "last", 4: "rank"}
POOLINGS = ("mean", "cls", "last")  # the ones that give one embedding per prompt here


def check_pooling(kind: str) -> str:
    """`kind` if it is one of POOLINGS, else a clear error."""
    if kind == "rank":
        raise UnsupportedError("rank pooling (rerankers) needs a classification head, which is not supported")
    if kind not in POOLINGS:
        raise BadInputError(f"pooling must be one of {', '.join(POOLINGS)}; got {kind!r}")
    return kind


def pooling_kind(requested: str | None, declared: int | None) -> str:
    """The pooling to use: the one asked for, else the model's (its GGUF's pooling type)."""
    if requested is not None:
        return check_pooling(requested)
    name = POOLING_TYPES.get(declared) if declared is not None else None
    if declared is not None and name is None:
        raise BadInputError(f"the model declares pooling type {declared}, which llama.cpp does not define")
    if name in (None, "none"):
        raise BadInputError("the model declares no pooling type, so it gives no embeddings by itself: "
                            "ask for one (pooling='mean' in Python, `llmcli serve --pooling mean`; or cls, last)")
    return check_pooling(name)


class Pooler:
    """Pools hidden-state rows of consecutive positions (fed in order, from position 0)."""

    def __init__(self, kind: str):
        self.kind = check_pooling(kind)
        self.n_rows = 0
        self._acc: np.ndarray | None = None

    @property
    def all_rows(self) -> bool:
        """Whether it reads every position's hidden state (mean, cls) or the last one's only
        (a model can skip the last layer for the others)."""
        return self.kind != "last"

    def add(self, rows: np.ndarray, start: int, n: int) -> None:
        """Hidden states of a chunk of n positions from `start`: all n rows, or its last row
        (2-D either way) when not `all_rows`."""
        if start != self.n_rows:
            raise BadInputError(f"a chunk at position {start} after {self.n_rows} pooled positions")
        if self.kind == "mean":
            total = rows.sum(axis=0, dtype=np.float64)
            self._acc = total if self._acc is None else self._acc + total
        elif self.kind == "cls":
            if start == 0:
                self._acc = rows[0].astype(np.float64)
        else:
            self._acc = rows[-1].astype(np.float64)
        self.n_rows = start + n

    def result(self) -> np.ndarray:
        if self._acc is None:
            raise BadInputError("nothing to pool: no hidden states were added")
        out = self._acc / self.n_rows if self.kind == "mean" else self._acc
        return out.astype(np.float32)


def l2_normalize(vector: np.ndarray) -> np.ndarray:
    """vector / its Euclidean norm (a zero vector stays zero), as llama.cpp's embd_normalize 2."""
    norm = float(np.sqrt(np.dot(vector.astype(np.float64), vector.astype(np.float64))))
    return (vector * (1.0 / norm if norm > 0 else 0.0)).astype(np.float32)
