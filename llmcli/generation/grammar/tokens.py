"""Every token's bytes, sorted, as the grammar filter walks them.

A grammar judges a token by its piece as llama.cpp's grammar sampler does: `token_to_piece` with
special tokens rendered (so "<start_of_turn>" is the text "<start_of_turn>"), cut at the first NUL
byte (llama.cpp reads pieces as C strings); a token whose piece is empty is never allowed.

The filter walks the pieces in sorted order: a piece shares its first `lcp[k]` bytes with the one
before it, so the grammar state reached after those bytes is reused, and once a prefix is refused
every following piece that starts with it is skipped - the walk visits the nodes of the vocabulary's
byte trie without building one. Built once per tokenizer (a second or so for 262k tokens) and
cached with it.
"""

from __future__ import annotations

import threading
import weakref

import numpy as np
from numba import njit


@njit(cache=True)
def _common_prefixes(data: np.ndarray, offsets: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """lcp[k]: bytes the k-th piece shares with the (k-1)-th (lcp[0] = 0)."""
    lcp = np.zeros(lengths.shape[0], np.int32)
    for k in range(1, lengths.shape[0]):
        oa, ob = offsets[k - 1], offsets[k]
        n = min(lengths[k - 1], lengths[k])
        i = 0
        while i < n and data[oa + i] == data[ob + i]:
            i += 1
        lcp[k] = i
    return lcp


class TokenIndex:
    """The pieces of a vocabulary, ready for the grammar filter: `order[k]` is the token whose
    piece is k-th in sorted order, its bytes `data[offsets[k]:offsets[k] + lengths[k]]` (laid out
    in that order, so the walk reads memory front to back), `lcp[k]` the bytes it shares with
    piece k-1. Tokens with empty pieces are left out."""

    def __init__(self, pieces: list[bytes]):
        pieces = [p.split(b"\0", 1)[0] for p in pieces]
        self.n_vocab = len(pieces)
        self.pieces = pieces
        order = sorted((i for i in range(len(pieces)) if pieces[i]), key=pieces.__getitem__)
        self.order = np.array(order, np.int32)
        self.lengths = np.fromiter((len(pieces[i]) for i in order), np.int32, count=len(order))
        self.offsets = np.zeros(len(order), np.int64)
        np.cumsum(self.lengths[:-1], out=self.offsets[1:])
        self.data = np.frombuffer(b"".join(pieces[i] for i in order), np.uint8)
        self.lcp = _common_prefixes(self.data, self.offsets, self.lengths)
        self.max_len = int(self.lengths.max()) if len(order) else 0
        self.nonempty = np.zeros(self.n_vocab, np.bool_)
        self.nonempty[self.order] = True

    def piece(self, token: int) -> bytes:
        return self.pieces[token]

    @classmethod
    def of(cls, tokenizer) -> "TokenIndex":
        """The index of a tokenizer (anything with n_vocab and token_to_piece), built once."""
        with _lock:
            index = _indexes.get(tokenizer)
            if index is None:
                pieces = [tokenizer.token_to_piece(i, special=True) for i in range(tokenizer.n_vocab)]
                index = _indexes[tokenizer] = cls(pieces)
            return index


_indexes: "weakref.WeakKeyDictionary[object, TokenIndex]" = weakref.WeakKeyDictionary()
_lock = threading.Lock()
