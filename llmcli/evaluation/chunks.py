"""A text cut into n_ctx-token chunks, the way llama.cpp's perplexity and imatrix tools cut it.

The whole text is tokenized once (BOS first when the vocabulary adds one, special-token text left
as plain text), then cut into consecutive chunks of n_ctx tokens; a shorter tail is dropped. Each
chunk is evaluated from an empty context with its first token replaced by BOS (when the vocabulary
adds BOS), so every chunk starts the way the model saw its training texts start. The text must
give at least two chunks' worth of tokens (llama.cpp refuses less).

Shared by `llmcli perplexity` and the importance-matrix collector: both need exactly these chunks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import BadInputError, UnsupportedError

# Half of each chunk is context for the other half, which is scored: at least 2 scored tokens
# (a spread needs two) means at least 4 tokens per chunk.
MIN_CTX = 4


@dataclass(frozen=True)
class TextChunks:
    """`tokens[i]` is chunk i as the text has it (int32, (n_chunk, n_ctx)); `model_input(i)` is what
    the model evaluates. `n_text_tokens`: tokens of the whole text (the tail beyond the last chunk
    included)."""

    tokens: np.ndarray
    n_text_tokens: int
    bos_id: int | None  # the token put first in every chunk; None when the vocabulary adds no BOS

    @property
    def n_chunk(self) -> int:
        return self.tokens.shape[0]

    @property
    def n_ctx(self) -> int:
        return self.tokens.shape[1]

    def model_input(self, i: int) -> np.ndarray:
        ids = self.tokens[i].copy()
        if self.bos_id is not None:
            ids[0] = self.bos_id
        return ids

    def first(self, n: int) -> "TextChunks":
        """The first n chunks."""
        return TextChunks(self.tokens[:n], self.n_text_tokens, self.bos_id)


def read_text_file(path: str | os.PathLike) -> str:
    """A text file's content as llama.cpp's `-f` reads it: UTF-8, one final newline dropped."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise BadInputError(f"{path}: cannot read the text file: {e.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadInputError(f"{path}: the text file is not UTF-8 ({e.reason} at byte {e.start})") from None
    return text[:-1] if text.endswith("\n") else text


def check_ctx(n_ctx: int) -> int:
    if n_ctx < MIN_CTX:
        raise BadInputError(f"-c/--ctx-size must be at least {MIN_CTX} (the second half of each chunk is "
                            f"scored), got {n_ctx}")
    return int(n_ctx)


def text_chunks(tokenizer, text: str, n_ctx: int, max_chunks: int | None = None,
                parse_special: bool = False) -> TextChunks:
    """Tokenize `text` (BOS as the vocabulary asks) and cut it into n_ctx-token chunks, at most
    `max_chunks` of them (None: all)."""
    n_ctx = check_ctx(n_ctx)
    if max_chunks is not None and max_chunks < 1:
        raise BadInputError(f"--chunks must be at least 1, got {max_chunks}")
    if tokenizer.add_eos:
        raise UnsupportedError("the vocabulary appends an end-of-sequence token to every text, which "
                               "perplexity chunks cannot have (llama.cpp refuses such a model too)")
    ids = np.asarray(tokenizer.tokenize(text, add_special=True, parse_special=parse_special), np.int32)
    if len(ids) < 2 * n_ctx:
        raise BadInputError(f"the text has {len(ids)} tokens; a context of {n_ctx} needs at least "
                            f"{2 * n_ctx} (give a longer text or a smaller -c)")
    n_chunk = len(ids) // n_ctx
    if max_chunks is not None:
        n_chunk = min(n_chunk, max_chunks)
    bos = tokenizer.bos_id if tokenizer.add_bos else None
    return TextChunks(ids[:n_chunk * n_ctx].reshape(n_chunk, n_ctx), len(ids), bos)
