"""Per-token scoring kernels: how well each row of logits predicted the next token.

Three kernels, one per thing llama.cpp's perplexity tool computes from a row of logits (every row
is independent: `prange` over rows):

* `token_nll` - the negative log-likelihood of the target token, -log softmax(logits)[target].
* `quantize_log_probs` - the same, and the whole row's log-probabilities in llama.cpp's 16-bit
  form (the KL-divergence base file's records): with M = max logit, m = max(min logit, M - 16)
  and L = log(sum(exp(logits - M))), a record is the float32 pair
  (scale = (M - m) / 65535, min_log_prob = m - M - L) followed by one uint16 per token,
  q = round((logit - m) / scale) for logits above m, 0 for the others; so
  log_prob = scale * q + min_log_prob, with every log-probability below M - 16 - L reading as
  the floor. A row of equal logits has scale 0 and all q = 0.
* `kl_divergence_rows` - a row of logits of the model being measured (Q) against the base
  model's record: KL(base || Q) = sum over tokens with base log-prob > -16 of
  p_base * (log p_base - log q), Q's and the base's NLL of the target, the difference of the
  target's probabilities (Q - base), and whether both rank the same token first.

The float arithmetic follows llama.cpp's: float32 everywhere except the sum of exponentials (a
float64 sum of float32 terms) and the KL sum (float64). Exponentials use the engine's vectorisable
float32 exp (relative error < 1e-7, as good as libm's for this purpose); sums are reassociated
(vector partial sums), which moves results by float64 rounding only.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

# The engine's float32 e^x (private there: a building block of its kernels; this module is the
# one other user). Plain math.exp would be a libm call per element and keep the loops scalar.
from ..engine.ops import _exp as exp_f32

# Summation order is free (vector partial sums); the rest of the arithmetic stays IEEE, in
# particular no reciprocal approximations: the 16-bit scale must be exactly (M - m) / 65535.
_SUMS = {"reassoc", "contract", "nsz"}

# Log-probabilities more than this below the best token's are not resolved by a record.
LOG_PROB_RANGE = np.float32(16.0)
# A base log-probability at or below this is left out of the KL sum (llama.cpp's cut-off).
KLD_MIN_LOG_PROB = np.float32(-16.0)
RECORD_HEADER = 4  # uint16 slots of a record's header: the float32 scale and min_log_prob


def record_width(n_vocab: int) -> int:
    """uint16 slots per record: the header, then the vocabulary padded to an even count."""
    return 2 * ((n_vocab + 1) // 2) + RECORD_HEADER


@njit(cache=True, nogil=True, fastmath=_SUMS)
def _sum_exp(row, top):
    """sum(exp(row - top)) as a float64 sum of float32 exponentials."""
    s = 0.0
    for i in range(row.shape[0]):
        s += np.float64(exp_f32(row[i] - top))
    return s


@njit(cache=True, nogil=True)
def _max(row):
    top = row[0]
    for i in range(1, row.shape[0]):
        top = max(top, row[i])
    return top


@njit(cache=True, nogil=True)
def _argmax(row):
    """Index of the first largest value."""
    best, top = 0, row[0]
    for i in range(1, row.shape[0]):
        if row[i] > top:
            best, top = i, row[i]
    return best


@njit(parallel=True, cache=True, nogil=True)
def token_nll(logits, targets, out):
    """out[r] = -log softmax(logits[r])[targets[r]] (float64), for logits (R, V) float32."""
    for r in prange(logits.shape[0]):
        row = logits[r]
        top = _max(row)
        out[r] = math.log(_sum_exp(row, top)) - np.float64(row[targets[r]] - top)


@njit(parallel=True, cache=True, nogil=True)
def quantize_log_probs(logits, targets, q, scales, min_log_probs, nll):
    """Each row's 16-bit log-probabilities into q (R, >= V) uint16 (the record body), its float32
    scale and min_log_prob, and the target's NLL (float32 arithmetic, as the base file's writer)."""
    n_vocab = logits.shape[1]
    for r in prange(logits.shape[0]):
        row = logits[r]
        top = _max(row)
        low = row[0]
        for i in range(1, n_vocab):
            low = min(low, row[i])
        low = max(low, top - LOG_PROB_RANGE)
        log_sum = np.float32(math.log(_sum_exp(row, top)))
        scale = (top - low) / np.float32(65535.0)
        scales[r] = scale
        min_log_probs[r] = (low - top) - log_sum
        nll[r] = (top + log_sum) - row[targets[r]]
        if scale == 0:
            q[r, :] = 0
            continue
        inv_scale = np.float32(1.0) / scale
        for i in range(n_vocab):
            # round half to even, as the float32 magic-number rounding; 65536 wraps to 0 as there
            q[r, i] = np.uint16(np.int64(np.rint(inv_scale * (row[i] - low))) & 0xFFFF) if row[i] > low else 0


@njit(cache=True, nogil=True, fastmath=_SUMS)
def _kl_sum(q_row, scale, min_log_prob, row, log_norm):
    """sum over tokens with base log-prob > -16 of p_base * (log p_base - log q), float64;
    log q = row - log_norm."""
    s = 0.0
    for i in range(row.shape[0]):
        log_p_base = scale * np.float32(q_row[i]) + min_log_prob
        if log_p_base > KLD_MIN_LOG_PROB:
            s += np.float64(exp_f32(log_p_base) * (log_p_base - row[i] + log_norm))
    return s


@njit(parallel=True, cache=True, nogil=True)
def kl_divergence_rows(logits, targets, q, scales, min_log_probs, nll, nll_base, kld, p_diff, same_top):
    """Row r of Q's logits against the base record (q[r], scales[r], min_log_probs[r]): Q's and the
    base's target NLL (float32), KL(base || Q) (float64), p_Q(target) - p_base(target) (float32),
    and whether the first-ranked tokens agree."""
    for r in prange(logits.shape[0]):
        row = logits[r]
        best = _argmax(row)
        top = row[best]
        log_norm = top + np.float32(math.log(_sum_exp(row, top)))  # log of softmax's denominator
        target = targets[r]
        scale, min_log_prob = scales[r], min_log_probs[r]
        q_row = q[r, :logits.shape[1]]
        nll[r] = log_norm - row[target]
        nll_base[r] = -(scale * np.float32(q_row[target]) + min_log_prob)
        kld[r] = _kl_sum(q_row, scale, min_log_prob, row, log_norm)
        # the base's first-ranked token: its largest q (a first maximum, as of the log-probs)
        same_top[r] = _argmax(q_row) == best
        p_diff[r] = exp_f32(-nll[r]) - exp_f32(-nll_base[r])
