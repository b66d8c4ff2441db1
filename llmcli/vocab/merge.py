"""Pair merging, the core of both vocabulary kinds, and byte-level BPE's byte <-> character table.

A word is a doubly linked list of symbols (start, length) over its characters; candidate pairs
sit in a heap keyed (priority, left index) so the best pair, leftmost among equals, merges first.
A popped pair whose symbols changed since it was pushed is stale and skipped. Words repeat, so
callers keep their results in a `WordCache`.
"""

from __future__ import annotations

import heapq
from typing import Callable, Iterable

# -- GPT-2 byte <-> character table ---------------------------------------------------------------


def _byte_chars() -> list[str]:
    """Byte b -> the printable character byte-level BPE writes for it."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


BYTE_CHARS = _byte_chars()
CHAR_BYTES = {c: b for b, c in enumerate(BYTE_CHARS)}
_LATIN1_TO_BYTE_CHAR = {b: BYTE_CHARS[b] for b in range(256)}


def byte_encode(text: str) -> str:
    """A word as byte-level BPE sees it: each UTF-8 byte as its table character."""
    return text.encode("utf-8", "surrogateescape").decode("latin-1").translate(_LATIN1_TO_BYTE_CHAR)


def byte_decode(token_text: str) -> bytes:
    """Bytes of a byte-level token; characters outside the table render as llama.cpp does."""
    out = bytearray()
    for ch in token_text:
        b = CHAR_BYTES.get(ch)
        if b is not None:
            out.append(b)
        else:
            utf8 = ch.encode("utf-8", "surrogateescape")
            out += b"[UNK_BYTE_0x" + utf8.hex().encode() + token_text.encode("utf-8", "surrogateescape") + b"]"
    return bytes(out)


# -- merging --------------------------------------------------------------------------------------


def merge(text: str, spm_vocab: dict | None, spm_priority: list | None,
          bpe_ranks: dict | None) -> list[str]:
    """The symbols left after merging `text`, one character per symbol to start with.

    SPM (spm_vocab given): a pair merges when left+right is a token; priority -score.
    BPE (bpe_ranks given): a pair merges when (left, right) is a merge; priority its rank.
    Lower priority merges first. Written out inline: this loop is the tokenizer's hot path.
    """
    n = len(text)
    if n < 2:
        return [text] if n else []
    length = [1] * n
    prev = list(range(-1, n - 1))
    nxt = list(range(1, n + 1))
    nxt[-1] = -1
    heap = []
    if spm_vocab is not None:
        for i in range(n - 1):
            tid = spm_vocab.get(text[i:i + 2])
            if tid is not None:
                heap.append((spm_priority[tid], i, i + 1, 1, 1))
    else:
        for i in range(n - 1):
            rank = bpe_ranks.get((text[i], text[i + 1]))
            if rank is not None:
                heap.append((rank, i, i + 1, 1, 1))
    heapq.heapify(heap)
    pop, push = heapq.heappop, heapq.heappush

    while heap:
        _, left, right, len_left, len_right = pop(heap)
        if length[left] != len_left or length[right] != len_right or not len_left or not len_right:
            continue  # stale: one side changed since this pair was queued
        size = len_left + len_right
        length[left] = size
        length[right] = 0
        after = nxt[right]
        nxt[left] = after
        if after >= 0:
            prev[after] = left
        # queue the new pairs (prev, merged) and (merged, after)
        before = prev[left]
        for a, b in ((before, left), (left, after)):
            if a < 0 or b < 0:
                continue
            la, lb = length[a], length[b]
            if spm_vocab is not None:
                tid = spm_vocab.get(text[a:a + la + lb])
                if tid is not None:
                    push(heap, (spm_priority[tid], a, b, la, lb))
            else:
                rank = bpe_ranks.get((text[a:a + la], text[b:b + lb]))
                if rank is not None:
                    push(heap, (rank, a, b, la, lb))

    out = []
    i = 0
    while i >= 0:
        out.append(text[i:i + length[i]])
        i = nxt[i]
    return out


class WordCache(dict):
    """Per-word results; cleared when it grows past `limit` words (memory stays bounded)."""

    def __init__(self, limit: int = 200_000):
        super().__init__()
        self.limit = limit

    def put(self, key: str, value: list[int]) -> None:
        if len(self) >= self.limit:
            self.clear()
        self[key] = value

    def ids(self, pieces: Iterable[str], encode: Callable[[str], list[int]]) -> list[int]:
        """The ids of `pieces` one after another, each from the cache or else from `encode`."""
        out: list[int] = []
        get, put = self.get, self.put
        for piece in pieces:
            ids = get(piece)
            if ids is None:
                ids = encode(piece)
                put(piece, ids)
            out.extend(ids)
        return out
