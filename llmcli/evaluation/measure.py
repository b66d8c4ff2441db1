"""Perplexity and KL divergence of a model over a text, as llama.cpp's `llama-perplexity` computes them.

Perplexity. The text's chunks (see `chunks`) are evaluated from an empty context each; in every
chunk the first half is context only, and each position p from n_ctx/2 to n_ctx - 2 scores the
token at p + 1 by its negative log-likelihood (NLL). After each chunk the running perplexity is
exp(mean NLL) over every token scored so far (llama.cpp's `[1]x,[2]y,...` line; the last one is
the final estimate), with the uncertainty ppl * sqrt((mean(NLL^2) - mean(NLL)^2) / (count - 1)).
Evaluation: several chunks per pass over the weights when the batch holds them
(n_batch // n_ctx of them; a chunk longer than the batch runs in n_batch-token pieces), each
with the arithmetic it gets alone, so the figures do not depend on -b.

KL divergence. A base model's pass writes each scored position's log-probabilities (16-bit, see
`logprobs`) to a base file (`kld_file`); another model Q is evaluated on the base file's tokens
and compared position by position: Q's and the base's perplexity, their ratio and difference,
KL(base || Q), p_Q - p_base of the scored token, and how often both put the same token first
(`KLDStats`: the same sums, means, uncertainties and percentiles as llama.cpp).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator

import numpy as np

from ..engine.jit import compile_seconds
from ..errors import BadInputError
from .chunks import TextChunks
from .kld_file import KLDBaseFile, KLDBaseHeader, join_records, scored_positions, split_records, write_base_file
from .logprobs import RECORD_HEADER, kl_divergence_rows, quantize_log_probs, record_width, token_nll

DEFAULT_BATCH = 2048  # llama.cpp's logical batch: with -c 512, four chunks per pass

# on_chunk(chunks done, chunks in all, running perplexity) (KL divergence: the running figures,
# a KLDStats.chunk_figures dict, in place of the perplexity)
ChunkCallback = Callable[[int, int, object], None]


def chunks_per_pass(n_ctx: int, n_batch: int) -> int:
    """Chunks evaluated together: as many as the batch holds whole (at least one)."""
    return max(1, n_batch // n_ctx)


def evaluate_chunks(model, chunks: TextChunks, n_batch: int) -> Iterator[tuple[int, np.ndarray]]:
    """(i, logits of chunk i's scored positions (n_ctx - 1 - n_ctx // 2, n_vocab)) for every chunk,
    in order: each chunk from an empty context, its first token BOS when the vocabulary adds one.
    A pass takes chunks_per_pass chunks, each in pieces of at most min(n_batch, n_ctx) tokens
    (and the model's batch size), and asks logits only of positions n_ctx // 2 on."""
    n_ctx, n_chunk = chunks.n_ctx, chunks.n_chunk
    if n_batch < 1:
        raise BadInputError(f"-b/--batch-size must be positive, got {n_batch}")
    if n_ctx > model.n_ctx:
        raise BadInputError(f"chunks of {n_ctx} tokens do not fit the model's context of {model.n_ctx}")
    first = n_ctx // 2
    n_seq = min(chunks_per_pass(n_ctx, n_batch), n_chunk)
    piece = min(n_batch, n_ctx, model.batch_size)
    cache = model.new_cache(n_seq)
    slots = [cache.slot(s, n_ctx) for s in range(n_seq)]
    for group_start in range(0, n_chunk, n_seq):
        group = range(group_start, min(group_start + n_seq, n_chunk))
        inputs = [chunks.model_input(i) for i in group]
        scored: list[list[np.ndarray]] = [[] for _ in group]
        for start in range(0, n_ctx, piece):
            stop = min(start + piece, n_ctx)
            n_out = stop - max(start, first) if stop > first else 0  # positions >= first
            _, logits = model.step([], [], [(slots[k], inputs[k][start:stop], start, n_out)
                                            for k in range(len(group))])
            if n_out:
                for k, rows in enumerate(logits):
                    scored[k].append(rows)
        for k, i in enumerate(group):
            rows = scored[k][0] if len(scored[k]) == 1 else np.concatenate(scored[k])
            yield i, rows[:-1]  # the last position has no next token to score


@dataclass
class PerplexityResult:
    n_ctx: int
    n_batch: int
    n_seq: int  # chunks per pass
    n_chunk: int
    n_text_tokens: int
    n_scored: int  # tokens scored in all
    chunk_ppl: list[float]  # running perplexity after each chunk
    ppl: float
    ppl_error: float | None  # None when the NLLs have no spread (llama.cpp prints an error then)
    seconds: float  # evaluation time, kernel compilation left out
    compile_seconds: float
    base_file: str | None = None

    @property
    def tokens_per_second(self) -> float:
        return self.n_chunk * self.n_ctx / self.seconds if self.seconds > 0 else float("inf")

    def to_dict(self) -> dict:
        return {**asdict(self), "tokens_per_second": self.tokens_per_second}


def perplexity(model, chunks: TextChunks, n_batch: int = DEFAULT_BATCH, base_out: str | None = None,
               force: bool = False, on_chunk: ChunkCallback | None = None) -> PerplexityResult:
    """Perplexity of `model` over `chunks`; with base_out, also write the KL-divergence base file
    there (replacing an existing file only with force)."""
    n_ctx, n_chunk = chunks.n_ctx, chunks.n_chunk
    first, n_scored = n_ctx // 2, scored_positions(n_ctx)
    n_vocab = model.hp.n_vocab
    nll = np.empty(n_scored, np.float64)
    sums = np.zeros(2)  # NLL, NLL^2
    chunk_ppl: list[float] = []
    compiled, began = compile_seconds(), time.perf_counter()

    def score(i: int, logits: np.ndarray, writer) -> None:
        targets = chunks.tokens[i, first + 1:]
        if writer is None:
            token_nll(logits, targets, nll)
        else:  # the NLL as the base file's writer computes it (float32), and the records
            bodies = np.zeros((n_scored, record_width(n_vocab) - RECORD_HEADER), np.uint16)
            scales, mins, nll32 = (np.empty(n_scored, np.float32) for _ in range(3))
            quantize_log_probs(logits, targets, bodies, scales, mins, nll32)
            writer.write_chunk(join_records(scales, mins, bodies))
            nll[:] = nll32
        sums[0] += nll.sum()
        sums[1] += (nll * nll).sum()
        count = n_scored * (i + 1)
        chunk_ppl.append(math.exp(sums[0] / count))
        if on_chunk is not None:
            on_chunk(i + 1, n_chunk, chunk_ppl[-1])

    if base_out is None:
        for i, logits in evaluate_chunks(model, chunks, n_batch):
            score(i, logits, None)
    else:
        header = KLDBaseHeader(n_ctx, n_vocab, n_chunk)
        with write_base_file(base_out, header, chunks.tokens, force) as writer:
            for i, logits in evaluate_chunks(model, chunks, n_batch):
                score(i, logits, writer)
    compiling = compile_seconds() - compiled
    count = n_scored * n_chunk
    mean, mean2 = sums / count
    ppl = math.exp(mean)
    variance = mean2 - mean * mean
    error = ppl * math.sqrt(variance / (count - 1)) if variance > 0 else None
    return PerplexityResult(n_ctx, n_batch, min(chunks_per_pass(n_ctx, n_batch), n_chunk), n_chunk,
                            chunks.n_text_tokens, count, chunk_ppl, ppl, error,
                            time.perf_counter() - began - compiling, compiling,
                            None if base_out is None else str(base_out))


# -- KL divergence --------------------------------------------------------------------------------

def _div(a: float, b: float) -> float:
    """a / b with C's float semantics (x/0 = +-inf, 0/0 = nan), as llama.cpp's figures have."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.float64(a) / np.float64(b))


def _sqrt(x: float) -> float:
    return math.sqrt(x) if x >= 0 else float("nan")


def mean_and_uncertainty(total: float, total2: float, count: int) -> tuple[float, float]:
    """Mean of values from their sum and sum of squares, and the mean's standard error (0 for
    ten values or fewer, or no spread)."""
    if count < 1:
        return 0.0, 0.0
    mean = total / count
    spread = total2 / count - mean * mean
    return mean, math.sqrt(spread / (count - 1)) if spread > 0 and count > 10 else 0.0


def covariance(total_a: float, total_b: float, total_ab: float, count: int) -> float:
    """Covariance of the means of two paired series (0 under ten pairs)."""
    if count < 10:
        return 0.0
    return (total_ab / count - (total_a / count) * (total_b / count)) / (count - 1)


def percentile(sorted_values: np.ndarray, fraction: float) -> float:
    """Linear interpolation between the two nearest ranks, in float32 as llama.cpp computes it."""
    f32 = np.float32
    if fraction <= 0:
        return float(sorted_values[0])
    if fraction >= 1:
        return float(sorted_values[-1])
    p = f32(fraction) * f32(len(sorted_values) - 1)
    ip = int(p)
    p = f32(p - f32(ip))
    nxt = sorted_values[min(ip + 1, len(sorted_values) - 1)]
    return float((f32(1) - p) * sorted_values[ip] + p * nxt)


def median(sorted_values: np.ndarray) -> float:
    n = len(sorted_values)
    if n % 2:
        return float(sorted_values[n // 2])
    return float(np.float32(0.5) * (sorted_values[n // 2] + sorted_values[n // 2 - 1]))


# The percentiles of each final block, top to bottom (Maximum, then these, then Minimum).
KLD_PERCENTILES = (0.999, 0.99, 0.95, 0.90, "median", 0.10, 0.05, 0.01, 0.001)
P_DIFF_PERCENTILES = (0.999, 0.99, 0.95, 0.90, 0.75, "median", 0.25, 0.10, 0.05, 0.01, 0.001)
# llama.cpp's minimum count for the final statistics
MIN_COUNT_FOR_STATISTICS = 100


@dataclass
class KLDStats:
    """Running sums over every scored token so far, and the per-token KL divergences and
    probability differences (for the percentiles)."""

    count: int = 0
    sum_nll: float = 0.0
    sum_nll2: float = 0.0
    sum_nll_base: float = 0.0
    sum_nll_base2: float = 0.0
    sum_nll_nll_base: float = 0.0
    sum_kld: float = 0.0
    sum_kld2: float = 0.0
    sum_p_diff: float = 0.0
    sum_p_diff2: float = 0.0
    sum_p_diff4: float = 0.0
    max_p_diff: float = 0.0
    n_same_top: int = 0
    kld_values: list[np.ndarray] = field(default_factory=list)
    p_diff_values: list[np.ndarray] = field(default_factory=list)

    def add(self, nll, nll_base, kld, p_diff, same_top) -> None:
        """One chunk's per-token values: nll, nll_base, p_diff float32; kld float64."""
        f64 = np.float64
        self.count += len(nll)
        self.sum_nll += nll.sum(dtype=f64)
        self.sum_nll2 += (nll * nll).sum(dtype=f64)  # float32 squares, as llama.cpp's
        self.sum_nll_base += nll_base.sum(dtype=f64)
        self.sum_nll_base2 += (nll_base * nll_base).sum(dtype=f64)
        self.sum_nll_nll_base += (nll * nll_base).sum(dtype=f64)
        self.sum_kld += kld.sum()
        self.sum_kld2 += (kld * kld).sum()
        p_diff2 = (p_diff * p_diff).astype(f64)
        self.sum_p_diff += p_diff.sum(dtype=f64)
        self.sum_p_diff2 += p_diff2.sum()
        self.sum_p_diff4 += (p_diff2 * p_diff2).sum()
        self.max_p_diff = max(self.max_p_diff, float(np.abs(p_diff).max()))
        self.n_same_top += int(same_top.sum())
        self.kld_values.append(kld.astype(np.float32))
        self.p_diff_values.append(p_diff)

    # -- the figures ----------------------------------------------------------------------------

    def _log_ppl(self):
        return (mean_and_uncertainty(self.sum_nll, self.sum_nll2, self.count),
                mean_and_uncertainty(self.sum_nll_base, self.sum_nll_base2, self.count),
                covariance(self.sum_nll, self.sum_nll_base, self.sum_nll_nll_base, self.count))

    def _p_diff_rms(self) -> tuple[float, float]:
        mse, mse_unc = mean_and_uncertainty(self.sum_p_diff2, self.sum_p_diff4, self.count)
        rms = math.sqrt(mse)
        return rms, _div(0.5, rms) * mse_unc if mse_unc else (0.0 if rms else float("nan"))

    def _same_top(self) -> tuple[float, float]:
        p = self.n_same_top / self.count
        return p, _sqrt(_div(p * (1 - p), self.count - 1))

    def chunk_figures(self) -> dict:
        """The running figures of llama.cpp's per-chunk line."""
        (log_ppl, log_ppl_unc), (log_base, log_base_unc), cov = self._log_ppl()
        ppl = math.exp(log_ppl)
        kld, kld_unc = mean_and_uncertainty(self.sum_kld, self.sum_kld2, self.count)
        rms, rms_unc = self._p_diff_rms()
        same, same_unc = self._same_top()
        return {"ppl": ppl, "ppl_unc": ppl * log_ppl_unc,
                "ln_ppl_ratio": log_ppl - log_base,
                "ln_ppl_ratio_unc": _sqrt(log_ppl_unc ** 2 + log_base_unc ** 2 - 2 * cov),
                "kld": kld, "kld_unc": kld_unc,
                "p_diff_rms": rms, "p_diff_rms_unc": rms_unc,
                "same_top": same, "same_top_unc": same_unc}

    def statistics(self) -> dict | None:
        """The three final blocks (None under MIN_COUNT_FOR_STATISTICS tokens, as llama.cpp)."""
        if self.count < MIN_COUNT_FOR_STATISTICS:
            return None
        (log_ppl, log_ppl_unc), (log_base, log_base_unc), cov = self._log_ppl()
        ppl, ppl_base = math.exp(log_ppl), math.exp(log_base)
        ppl_unc, ppl_base_unc = ppl * log_ppl_unc, ppl_base * log_base_unc
        ratio_unc = _sqrt(log_ppl_unc ** 2 + log_base_unc ** 2 - 2 * cov)
        ppl_cov = ppl * ppl_base * cov
        kld = np.sort(np.concatenate(self.kld_values))
        p_diff = np.sort(np.concatenate(self.p_diff_values))
        kld_mean, kld_unc = mean_and_uncertainty(self.sum_kld, self.sum_kld2, self.count)
        p_mean, p_unc = mean_and_uncertainty(self.sum_p_diff, self.sum_p_diff2, self.count)
        rms, rms_unc = self._p_diff_rms()
        same, same_unc = self._same_top()

        def quantiles(values, which):
            return {"maximum": float(values[-1]),
                    **{("median" if q == "median" else f"{100 * q:.1f}%"):
                       (median(values) if q == "median" else percentile(values, q)) for q in which},
                    "minimum": float(values[0])}

        return {
            "perplexity": {
                "ppl": ppl, "ppl_unc": ppl_unc, "ppl_base": ppl_base, "ppl_base_unc": ppl_base_unc,
                "ln_ppl_correlation": _div(cov, log_ppl_unc * log_base_unc),
                "ln_ppl_ratio": log_ppl - log_base, "ln_ppl_ratio_unc": ratio_unc,
                "ppl_ratio": math.exp(log_ppl - log_base), "ppl_ratio_unc": math.exp(log_ppl - log_base) * ratio_unc,
                "ppl_diff": ppl - ppl_base,
                "ppl_diff_unc": _sqrt(ppl_unc ** 2 + ppl_base_unc ** 2 - 2 * ppl_cov),
            },
            "kl_divergence": {"mean": kld_mean, "mean_unc": kld_unc, **quantiles(kld, KLD_PERCENTILES)},
            "token_probability": {"mean_p_diff": p_mean, "mean_p_diff_unc": p_unc,
                                  **quantiles(p_diff, P_DIFF_PERCENTILES),
                                  "rms_p_diff": rms, "rms_p_diff_unc": rms_unc,
                                  "same_top": same, "same_top_unc": same_unc},
        }


@dataclass
class KLDResult:
    base_file: str
    n_ctx: int
    n_batch: int
    n_seq: int
    n_chunk: int
    n_scored: int
    chunks: list[dict]  # running figures after each chunk (KLDStats.chunk_figures)
    statistics: dict | None  # the final blocks (KLDStats.statistics)
    seconds: float
    compile_seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.n_chunk * self.n_ctx / self.seconds if self.seconds > 0 else float("inf")

    def to_dict(self) -> dict:
        return {**asdict(self), "tokens_per_second": self.tokens_per_second}


def kl_divergence(model, tokenizer, base: KLDBaseFile, n_batch: int = DEFAULT_BATCH,
                  max_chunks: int | None = None, on_chunk: ChunkCallback | None = None) -> KLDResult:
    """`model` (Q) against the base model's log-probabilities in `base`, on the base file's tokens
    (each chunk's first replaced by Q's BOS when Q's vocabulary adds one). max_chunks: only the
    file's first chunks (llama.cpp always reads them all)."""
    h = base.header
    n_vocab = model.hp.n_vocab
    if h.n_vocab != n_vocab:
        raise BadInputError(f"{base.path}: holds log-probabilities over {h.n_vocab} tokens, but the model's "
                            f"vocabulary has {n_vocab}: the base file must come from a model with the same vocabulary")
    if int(base.tokens.min()) < 0 or int(base.tokens.max()) >= n_vocab:
        raise BadInputError(f"{base.path}: holds token ids outside the model's vocabulary of {n_vocab}")
    if max_chunks is not None and max_chunks < 1:
        raise BadInputError(f"--chunks must be at least 1, got {max_chunks}")
    n_chunk = h.n_chunk if max_chunks is None else min(h.n_chunk, max_chunks)
    bos = tokenizer.bos_id if tokenizer.add_bos else None
    chunks = TextChunks(np.asarray(base.tokens[:n_chunk]), h.n_chunk * h.n_ctx, bos)
    first, n_scored = h.n_ctx // 2, h.n_scored
    stats = KLDStats()
    per_chunk: list[dict] = []
    nll, nll_base, p_diff = (np.empty(n_scored, np.float32) for _ in range(3))
    kld, same_top = np.empty(n_scored, np.float64), np.empty(n_scored, np.bool_)
    compiled, began = compile_seconds(), time.perf_counter()
    for i, logits in evaluate_chunks(model, chunks, n_batch):
        scales, mins, bodies = split_records(base.records(i))
        kl_divergence_rows(logits, chunks.tokens[i, first + 1:], bodies, scales, mins, nll, nll_base, kld,
                           p_diff, same_top)
        stats.add(nll, nll_base, kld, p_diff.copy(), same_top)
        per_chunk.append(stats.chunk_figures())
        if on_chunk is not None:
            on_chunk(i + 1, n_chunk, per_chunk[-1])
    compiling = compile_seconds() - compiled
    return KLDResult(str(base.path), h.n_ctx, n_batch, min(chunks_per_pass(h.n_ctx, n_batch), n_chunk), n_chunk,
                     stats.count, per_chunk, stats.statistics(), time.perf_counter() - began - compiling, compiling)
