"""`llmcli imatrix`: the importance matrix of a model over a text, as llama-imatrix computes it.

    text ─► tokens (BOS per the model) ─► chunks of n_ctx tokens, each from an empty context
         ─► forward pass with an observer on every projection: squared input activations per
            column summed per weight matrix (per expert for MoE expert tensors) ─► sums + counts
         ─► (running perplexity of each chunk's second half, as llama-imatrix prints)
         ─► GGUF or legacy .dat file, written to a temporary file renamed into place

What llama-imatrix collects, and so what this collects (its `collect_imatrix` callback):

* every matrix product whose weight is named `blk.*` (and `output.weight` with --process-output);
  MoE expert products (ggml's MUL_MAT_ID) always, per expert;
* plain products only when the micro-batch (ubatch) has at least 16 rows. llama-imatrix fits
  N = 2048 // n_ctx chunks (at least 1) in one batch and cuts it into ubatches of 512 rows taking
  max(1, 512 // S) positions of each of the S chunks evaluated together; a chunk's last positions
  can land in a ubatch of fewer than 16 rows, which it skips (`observed_positions`);
* the first token of every chunk is replaced by BOS when the model adds one.

The text is read and cut into chunks by `evaluation.chunks` (what `llmcli perplexity` evaluates),
and the running perplexity llama-imatrix prints (each chunk's second half, positions n_ctx/2 ..
n_ctx-2 predicting the next token) is `evaluation.measure`'s.

Arithmetic. By default (`activations="int8"`) the projections round their input rows to 8 bits where
the weight type has an integer kernel, as llama.cpp's CPU backend does for quantized weights
(`Transformer.set_prompt_activations`): the sums are of the float activations either way, but with
quantized weights llama.cpp's rounded products move every later layer's activations, so rounding
as it does brings the sums closer to llama-imatrix's (demo Q4_K_M model: median per-tensor
difference 1.2e-3 instead of 3.6e-3, as far as llama-imatrix's own with another micro-batch size,
1.1e-3; the rest is float noise that each layer's 8-bit rounding amplifies, see the README). "float" keeps float32 products (the more exact statistics); float
weights have no integer kernel, so both are the same there. This is deliberately not the models'
default prompt mode ("int8-gemm", engine/prompt_activations.py): that one rounds the same way but
sums in another order on integer GEMM tiles, and the statistics above were measured, and are
tested, with the row-exact mat-vec arithmetic of "int8".
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from ..atomic import check_output_path
from ..errors import BadInputError
from ..evaluation.chunks import read_text_file, text_chunks
from ..evaluation.measure import RunningPerplexity, chunk_nll
from .file import read_imatrix, write_dat, write_gguf
from .stats import ImportanceStats

N_BATCH = 2048    # llama-imatrix's default logical batch (-b): how many chunks run together
N_UBATCH = 512    # its default physical batch (-ub): rows per graph evaluation
MIN_ROWS = 16     # it ignores plain products of fewer rows ("small batches")
FORMATS = ("gguf", "dat")
ACTIVATIONS = ("int8", "float")   # see "Arithmetic" above


def chunks_per_batch(n_ctx: int) -> int:
    """How many chunks llama-imatrix evaluates together (its n_seq)."""
    return max(1, N_BATCH // n_ctx)


def observed_positions(n_ctx: int, n_together: int) -> np.ndarray:
    """Which positions of a chunk llama-imatrix sees plain products of, when `n_together` chunks
    run in one batch: ubatches take runs of max(1, 512 // n_together) positions of every chunk,
    and a ubatch of fewer than 16 rows is skipped."""
    run = max(1, N_UBATCH // n_together)
    seen = np.zeros(n_ctx, bool)
    for start in range(0, n_ctx, run):
        stop = min(n_ctx, start + run)
        seen[start:stop] = n_together * (stop - start) >= MIN_ROWS
    return seen


class _Observer:
    """The model's projection observer: adds each product's input rows to the statistics."""

    def __init__(self, stats: ImportanceStats, process_output: bool):
        self.stats = stats
        self.process_output = process_output
        self.seen: np.ndarray | None = None    # the positions plain products count (one chunk)

    def __call__(self, w, x: np.ndarray) -> None:
        if w.expert is not None:               # an expert product: every routed row, per expert
            self.stats.add_expert_rows(w.name, w.expert, w.n_expert, x)
            return
        if not (w.name.startswith("blk.") or (self.process_output and w.name == "output.weight")):
            return
        seen = self.seen
        if seen is not None and not seen.all():
            if len(seen) != len(x):
                raise AssertionError(f"{w.name}: {len(x)} rows for a chunk of {len(seen)} positions")
            x = x[seen]
        if len(x):
            self.stats.add_rows(w.name, x)


@dataclass
class ImatrixReport:
    output: str
    format: str
    model: str | None
    text: str | None
    in_files: list[str]
    chunk_size: int
    n_tokens: int = 0                # of the text, BOS included
    n_chunks: int = 0                # evaluated now
    chunk_count: int = 0             # recorded in the file (merged inputs included)
    n_entries: int = 0
    datasets: list[str] = field(default_factory=list)
    partial: list[tuple[str, float]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)   # .dat: entries without data, left out
    ppl_chunks: list[float] = field(default_factory=list)
    ppl: float | None = None
    ppl_error: float | None = None
    seconds: float = 0.0
    threads: int | None = None

    def to_json(self) -> dict:
        return {
            "output": self.output, "format": self.format, "model": self.model, "text": self.text,
            "in_files": self.in_files, "chunk_size": self.chunk_size, "n_tokens": self.n_tokens,
            "n_chunks": self.n_chunks, "chunk_count": self.chunk_count, "n_entries": self.n_entries,
            "datasets": self.datasets, "partial": [{"name": n, "percent": p} for n, p in self.partial],
            "skipped": self.skipped, "perplexity": {"chunks": self.ppl_chunks, "final": self.ppl,
                                                    "error": self.ppl_error},
            "seconds": self.seconds, "threads": self.threads,
        }


def run_imatrix(model_path: str | os.PathLike | None, text_path: str | os.PathLike | None,
                output: str | os.PathLike, *, n_ctx: int = 512, n_chunks: int = -1, from_chunk: int = 0,
                process_output: bool = False, compute_ppl: bool = True,
                in_files: Sequence[str | os.PathLike] = (), output_format: str = "gguf",
                threads: int | None = None, activations: str = "int8", force: bool = False,
                progress: bool = False, on_chunk: Callable[[int, int, float | None], None] | None = None) -> ImatrixReport:
    """Compute (and/or merge) an importance matrix and write it as llama-imatrix would."""
    if output_format not in FORMATS:
        raise BadInputError(f"--output-format {output_format!r}: use gguf or dat")
    if activations not in ACTIVATIONS:
        raise BadInputError(f"--activations {activations!r}: use {' or '.join(ACTIVATIONS)}")
    if n_ctx < 4:
        raise BadInputError(f"-c {n_ctx}: the chunk size must be at least 4 tokens")
    if from_chunk < 0:
        raise BadInputError(f"--from-chunk {from_chunk}: must not be negative")
    if text_path is None and not in_files:
        raise BadInputError("nothing to do: give a text (-f) to compute an importance matrix, "
                            "or --in-file files to combine")
    if text_path is not None and model_path is None:
        raise BadInputError("a model (-m) is needed to compute an importance matrix from a text")
    check_output_path(output, force)
    started = time.perf_counter()
    stats = ImportanceStats(n_ctx)
    for f in in_files:
        stats.add_file(read_imatrix(f))
    report = ImatrixReport(str(output), output_format, None if model_path is None else str(model_path),
                           None if text_path is None else str(text_path), [str(f) for f in in_files], n_ctx)
    if text_path is not None:
        _collect(model_path, text_path, stats, report, n_ctx=n_ctx, n_chunks=n_chunks, from_chunk=from_chunk,
                 process_output=process_output, compute_ppl=compute_ppl, threads=threads,
                 activations=activations, progress=progress, on_chunk=on_chunk)
    prompt_file = "" if text_path is None else str(text_path)
    report.chunk_count = stats.chunk_count
    report.partial = stats.partial_entries()
    if output_format == "gguf":
        report.datasets = stats.datasets + ([prompt_file] if prompt_file else [])
        write_gguf(output, stats.entries, report.datasets, report.chunk_count, n_ctx, force=force)
        report.n_entries = sum(1 for e in stats.entries.values() if len(e.sums) and len(e.counts))
    else:
        dataset = prompt_file or (stats.datasets[-1] if stats.datasets else "")
        report.datasets = [dataset] if dataset else []
        _, report.skipped = write_dat(output, stats.entries, report.chunk_count, n_ctx, dataset, force=force)
        report.n_entries = sum(1 for e in stats.entries.values() if len(e.counts)) - len(report.skipped)
    report.seconds = time.perf_counter() - started
    return report


def _collect(model_path, text_path, stats: ImportanceStats, report: ImatrixReport, *, n_ctx: int,
             n_chunks: int, from_chunk: int, process_output: bool, compute_ppl: bool,
             threads: int | None, activations: str, progress: bool, on_chunk) -> None:
    from ..models import load_model
    from ..vocab import Tokenizer

    text = read_text_file(text_path)
    model = load_model(model_path, threads=threads, ctx_size=n_ctx, batch_size=n_ctx)
    try:
        model.set_prompt_activations(activations)
        report.threads = model.threads
        chunks = text_chunks(Tokenizer.from_gguf(model.reader), text, n_ctx)
        report.n_tokens = chunks.n_text_tokens
        if from_chunk > 0:   # llama-imatrix's rule: at least two whole chunks must be left
            if (from_chunk + 2) * n_ctx >= chunks.n_text_tokens:
                raise BadInputError(f"{text_path}: {chunks.n_text_tokens} tokens leave too few after skipping "
                                    f"{from_chunk} chunks of {n_ctx}")
            chunks = chunks.after(from_chunk)
        if n_chunks >= 0:
            chunks = chunks.first(n_chunks)
        n_chunk = report.n_chunks = chunks.n_chunk
        n_seq = chunks_per_batch(n_ctx)
        observer = _Observer(stats, process_output)
        want_logits = compute_ppl or process_output
        seq = model.new_sequence()
        running = RunningPerplexity()
        first = n_ctx // 2
        bar = _progress_bar(n_chunk, progress)
        model.observer = observer
        try:
            for i in range(n_chunk):
                together = min(n_seq, n_chunk - (i - i % n_seq))   # chunks in this one's batch
                observer.seen = observed_positions(n_ctx, together)
                out = model.forward(seq, chunks.model_input(i), 0, all_logits=True, hidden=not want_logits)
                if compute_ppl:
                    ppl = running.add(chunk_nll(out[first:n_ctx - 1], chunks.tokens[i, first + 1:]))
                    bar.set_postfix_str(f"ppl {ppl:.4f}", refresh=False)
                bar.update(1)
                if on_chunk is not None:
                    on_chunk(i + 1, n_chunk, running.chunk_ppl[-1] if compute_ppl else None)
        finally:
            model.observer = None
            bar.close()
        if compute_ppl:
            report.ppl_chunks = running.chunk_ppl
            report.ppl, report.ppl_error = running.final()
    finally:
        model.reader.close()


def _progress_bar(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="chunk", file=sys.stderr, disable=None if enabled else True,
                leave=False, dynamic_ncols=True)
