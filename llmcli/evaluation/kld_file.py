"""The KL-divergence base file: a base model's log-probabilities over a text, as llama.cpp's
`llama-perplexity --kl-divergence-base FILE` writes it (files are interchangeable both ways).

Layout, little-endian, no padding or alignment:

    8 bytes   b"_logits_"
    int32     n_ctx        tokens per chunk
    int32     n_vocab
    int32     n_chunk
    int32     tokens[n_chunk * n_ctx]      the text's tokens, chunk after chunk (not BOS-replaced)
    records   n_chunk * (n_ctx - 1 - n_ctx // 2) of them, chunk after chunk: one per scored
              position, the 16-bit log-probabilities of the token after it
              (`logprobs.record_width(n_vocab)` uint16 each: float32 scale, float32 min_log_prob,
              one uint16 per token, a zero pad to an even count; see `logprobs`)

Only the second half of each chunk is scored: positions n_ctx // 2 ... n_ctx - 2 predict the
tokens after them.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from ..atomic import atomic_output
from ..errors import BadInputError, FormatError
from .logprobs import RECORD_HEADER, record_width

MAGIC = b"_logits_"
HEADER_DTYPE = np.dtype([("magic", "S8"), ("n_ctx", "<i4"), ("n_vocab", "<i4"), ("n_chunk", "<i4")])


def scored_positions(n_ctx: int) -> int:
    """Positions of a chunk whose next token is scored: n_ctx // 2 ... n_ctx - 2."""
    return n_ctx - 1 - n_ctx // 2


@dataclass(frozen=True)
class KLDBaseHeader:
    n_ctx: int
    n_vocab: int
    n_chunk: int

    @property
    def record_width(self) -> int:
        return record_width(self.n_vocab)

    @property
    def n_scored(self) -> int:
        """Records per chunk."""
        return scored_positions(self.n_ctx)

    @property
    def tokens_offset(self) -> int:
        return HEADER_DTYPE.itemsize

    @property
    def records_offset(self) -> int:
        return self.tokens_offset + 4 * self.n_chunk * self.n_ctx

    @property
    def file_size(self) -> int:
        return self.records_offset + 2 * self.n_chunk * self.n_scored * self.record_width

    def to_bytes(self) -> bytes:
        return np.array([(MAGIC, self.n_ctx, self.n_vocab, self.n_chunk)], HEADER_DTYPE).tobytes()


def split_records(records: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Records (n, width) uint16 -> (float32 scales (n,), float32 min_log_probs (n,), uint16 bodies
    (n, width - 4), a view)."""
    header = np.ascontiguousarray(records[:, :RECORD_HEADER]).view("<f4")
    return header[:, 0].copy(), header[:, 1].copy(), records[:, RECORD_HEADER:]


def join_records(scales: np.ndarray, min_log_probs: np.ndarray, bodies: np.ndarray) -> np.ndarray:
    """The inverse of split_records: (n, 4 + body width) uint16."""
    records = np.empty((len(bodies), RECORD_HEADER + bodies.shape[1]), np.uint16)
    records[:, :RECORD_HEADER] = np.stack([scales, min_log_probs], axis=1).astype("<f4").view(np.uint16)
    records[:, RECORD_HEADER:] = bodies
    return records


class KLDBaseFile:
    """A base file opened for reading (memory-mapped): `header`, `tokens` (n_chunk, n_ctx) int32,
    `records(i)` chunk i's records (n_scored, record_width) uint16."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            size = self.path.stat().st_size
        except OSError as e:
            raise BadInputError(f"{self.path}: cannot read the KL-divergence base file: {e.strerror}") from None
        if self.path.is_dir():
            raise BadInputError(f"{self.path}: is a directory, expected a KL-divergence base file")
        if size < HEADER_DTYPE.itemsize:
            raise FormatError(f"{self.path}: not a KL-divergence base file (only {size} bytes)")
        head = np.fromfile(self.path, HEADER_DTYPE, count=1)[0]
        if bytes(head["magic"]) != MAGIC:
            raise FormatError(f"{self.path}: not a KL-divergence base file (it does not start with {MAGIC!r}; "
                              f"write one with --kl-divergence-base FILE without --kl-divergence)")
        self.header = KLDBaseHeader(int(head["n_ctx"]), int(head["n_vocab"]), int(head["n_chunk"]))
        h = self.header
        if h.n_ctx < 2 or h.n_vocab < 1 or h.n_chunk < 1:
            raise FormatError(f"{self.path}: bad KL-divergence base header (n_ctx {h.n_ctx}, n_vocab "
                              f"{h.n_vocab}, n_chunk {h.n_chunk})")
        if size != h.file_size:
            what = "truncated" if size < h.file_size else "longer than its header says"
            raise FormatError(f"{self.path}: {what}: {size} bytes, expected {h.file_size} for {h.n_chunk} chunks "
                              f"of {h.n_ctx} tokens and a vocabulary of {h.n_vocab}")
        self._map = np.memmap(self.path, np.uint8, mode="r")
        self.tokens = self._map[h.tokens_offset:h.records_offset].view("<i4").reshape(h.n_chunk, h.n_ctx)
        self._records = self._map[h.records_offset:].view("<u2").reshape(h.n_chunk, h.n_scored, h.record_width)

    def records(self, chunk: int) -> np.ndarray:
        return self._records[chunk]


class KLDBaseWriter:
    """Writes a base file chunk by chunk to a temporary file that becomes `path` when every chunk
    is written (an interrupted run leaves no partial file)."""

    def __init__(self, header: KLDBaseHeader, tokens: np.ndarray, out):
        self.header, self._out, self._written = header, out, 0
        out.write(header.to_bytes())
        out.write(np.ascontiguousarray(tokens, "<i4").tobytes())

    def write_chunk(self, records: np.ndarray) -> None:
        h = self.header
        if records.shape != (h.n_scored, h.record_width):
            raise ValueError(f"records of shape {records.shape}, expected {(h.n_scored, h.record_width)}")
        self._out.write(np.ascontiguousarray(records, "<u2").tobytes())
        self._written += 1

    @property
    def complete(self) -> bool:
        return self._written == self.header.n_chunk


@contextlib.contextmanager
def write_base_file(path: str | os.PathLike, header: KLDBaseHeader, tokens: np.ndarray,
                    force: bool = False) -> Iterator[KLDBaseWriter]:
    with atomic_output(path, force=force) as out:
        writer = KLDBaseWriter(header, tokens, out)
        yield writer
        if not writer.complete:
            raise RuntimeError(f"{path}: {writer._written} of {header.n_chunk} chunks written")
