"""The non-matmul operations of a transformer forward pass, as numba kernels.

Each kernel's per-row (or per-head) body is an inlined function with two drivers: a `prange` one for
batches and a `_serial` one for single tokens (see PARALLEL_MIN_WORK). The gated activations have
only the `prange` driver: their serial loop did not vectorise (34 us against 3-7 us per token).

Every kernel works in place or into a caller-provided buffer on float32, C-contiguous arrays (the
only per-call allocation is attention's small per-head score scratch, inside the kernel). Shapes use T = tokens in the batch, H = query heads, Hkv = key/value heads,
Dh = head size, D = model width. Accumulations that ggml does in double (norm sums) are done in
float64 here too; everything else is float32 like ggml's CPU backend.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from ..quants.half import f32_from_bits, fp32_round_fp16, fp32_to_fp16
from ..quants.legacy import dequantize_block_q4_0, dequantize_block_q8_0, quantize_block_q4_0
from .half import as_float, to_storage
from .kv_cache import KV_TYPES
from .kernels.int8 import (SIGNED_Q8_0, activation_block_scale, activation_code, code_offset,
                           quantize_activations_into, row_dot_int8)
from .kernels.attention import key_scores, value_sums
from .kernels.simd import BLOCK_BYTES, gemm_micro

# Let LLVM reassociate and fuse float sums (vectorised partial sums, FMA) but keep IEEE inf/NaN
# semantics: the attention maximum starts at -inf.
_REASSOCIATE = {"contract", "reassoc", "nsz", "arcp"}


@njit(inline="always")
def _exp(x):
    """float32 e^x without a libm call, so loops over it vectorise (~12x faster than math.exp here):
    x = n ln2 + r, e^r by Cephes' expf polynomial, 2^n built in the exponent bits. Relative error
    < 1e-7 over [-87, 88]; x is clamped to that range (e^-87 ~ 1.6e-38 stands in for 0)."""
    x = min(max(x, np.float32(-87.0)), np.float32(88.0))
    n = np.floor(x * np.float32(1.44269504088896341) + np.float32(0.5))
    r = x - n * np.float32(0.693359375) - n * np.float32(-2.12194440e-4)
    p = np.float32(1.9875691500e-4)
    p = p * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    p = p * r * r + r + np.float32(1.0)
    return p * f32_from_bits(np.int32((np.int32(n) + np.int32(127)) << np.int32(23)))


@njit(inline="always")
def _tanh(x):
    """float32 tanh(x) = 1 - 2 / (e^2x + 1) on the vectorisable exp (absolute error < 1e-7)."""
    return np.float32(1.0) - np.float32(2.0) / (_exp(np.float32(2.0) * x) + np.float32(1.0))


@njit(cache=True, nogil=True, fastmath={"reassoc"})
def _sum_squares(x, r):
    """sum of x[r, i]^2, each square rounded to float32, added in double (in any order: the
    vectorised partial sums round to the same float32 mean). Its own function, so that the
    reassociation it allows never reaches the multiplications of `_rms_row`."""
    ss = 0.0
    for i in range(x.shape[1]):
        v = x[r, i]
        ss += np.float64(v * v)
    return ss


@njit(inline="always")
def _rms_row(x, weight, eps, out, r):
    """ggml's rms_norm and then its multiplication by the weight, rounded as ggml rounds: each
    square in float32 summed in double, the mean rounded to float32, 1 / sqrtf(mean + eps) in
    float32. One ulp off here flips some 8-bit activation codes of the next projection."""
    n = x.shape[1]
    mean = np.float32(_sum_squares(x, r) / n)
    scale = np.float32(1.0) / np.sqrt(mean + np.float32(eps))
    for i in range(n):
        out[r, i] = x[r, i] * scale * weight[i]


@njit(parallel=True, cache=True, nogil=True)
def rms_norm(x, weight, eps, out):
    """out[r] = x[r] / sqrt(mean(x[r]^2) + eps) * weight, for every row r of x (R, N).

    Norm weights are used as stored: Gemma's (1 + w) offset is already baked in by the converter.
    `out` may be `x` (in place). Also serves QK-norm with x viewed as (T*H, Dh).
    """
    for r in prange(x.shape[0]):
        _rms_row(x, weight, eps, out, r)


@njit(cache=True, nogil=True)
def rms_norm_serial(x, weight, eps, out):
    for r in range(x.shape[0]):
        _rms_row(x, weight, eps, out, r)


@njit(inline="always")
def _rope_task(x, cos, sin, pos0, neox, task):
    n_heads = x.shape[1]
    half = cos.shape[1]
    t = task // n_heads
    h = task % n_heads
    p = pos0 + t
    for i in range(half):
        c = cos[p, i]
        s = sin[p, i]
        if neox:
            a = x[t, h, i]
            b = x[t, h, i + half]
            x[t, h, i] = a * c - b * s
            x[t, h, i + half] = a * s + b * c
        else:
            a = x[t, h, 2 * i]
            b = x[t, h, 2 * i + 1]
            x[t, h, 2 * i] = a * c - b * s
            x[t, h, 2 * i + 1] = a * s + b * c


@njit(parallel=True, cache=True, nogil=True)
def rope(x, cos, sin, pos0, neox):
    """Rotate the first n_rot = 2 * cos.shape[1] channels of every head in place.

    x: (T, heads, Dh); token t is at position pos0 + t; cos/sin: (n_ctx, n_rot/2) per position.
    NORM style (LLaMA, Baichuan) rotates adjacent pairs, NEOX style (Qwen, Gemma, Phi-3) rotates
    channel i with channel i + n_rot/2:

        norm: (x0 x1)(x2 x3)...           neox: x0 .. x[n/2-1] | x[n/2] .. x[n-1]
               pair i = (2i, 2i+1)               pair i = (i, i + n/2)
    """
    for task in prange(x.shape[0] * x.shape[1]):
        _rope_task(x, cos, sin, pos0, neox, task)


@njit(cache=True, nogil=True)
def rope_serial(x, cos, sin, pos0, neox):
    for task in range(x.shape[0] * x.shape[1]):
        _rope_task(x, cos, sin, pos0, neox, task)


@njit(inline="always")
def _add_scores(q, k_cache, t, h, kvh, slot, m, dst):
    """dst[j] += q[t, h] . key in slot + j, for j < m: four channels per pass over the keys."""
    head_dim = q.shape[2]
    d4 = head_dim - head_dim % 4
    for d in range(0, d4, 4):
        q0, q1, q2, q3 = q[t, h, d], q[t, h, d + 1], q[t, h, d + 2], q[t, h, d + 3]
        k0 = k_cache[kvh, d, slot:slot + m]
        k1 = k_cache[kvh, d + 1, slot:slot + m]
        k2 = k_cache[kvh, d + 2, slot:slot + m]
        k3 = k_cache[kvh, d + 3, slot:slot + m]
        for j in range(m):
            dst[j] += q0 * as_float(k0[j]) + q1 * as_float(k1[j]) + q2 * as_float(k2[j]) + q3 * as_float(k3[j])
    for d in range(d4, head_dim):
        qd = q[t, h, d]
        keys = k_cache[kvh, d, slot:slot + m]
        for j in range(m):
            dst[j] += qd * as_float(keys[j])


@njit(inline="always")
def _add_values(v_cache, kvh, slot, m, weights, inv, acc):
    """acc += sum_j weights[j] * inv * value in slot + j, for j < m: four keys per pass."""
    head_dim_v = v_cache.shape[2]
    m4 = m - m % 4
    for j in range(0, m4, 4):
        w0, w1, w2, w3 = weights[j] * inv, weights[j + 1] * inv, weights[j + 2] * inv, weights[j + 3] * inv
        v0, v1 = v_cache[kvh, slot + j], v_cache[kvh, slot + j + 1]
        v2, v3 = v_cache[kvh, slot + j + 2], v_cache[kvh, slot + j + 3]
        for d in range(head_dim_v):
            acc[d] += w0 * as_float(v0[d]) + w1 * as_float(v1[d]) + w2 * as_float(v2[d]) + w3 * as_float(v3[d])
    for j in range(m4, m):
        w = weights[j] * inv
        values = v_cache[kvh, slot + j]
        for d in range(head_dim_v):
            acc[d] += w * as_float(values[d])


@njit(inline="always")
def _softmax_weights(scores, weights, m, scale, softcap, slope):
    """weights[j] = exp(logit_j - max logit) for j < m, returning their sum, where logit_j is
    scores[j] scaled (soft-capped as llama.cpp does: softcap * tanh(s * scale / softcap)) less
    the ALiBi slope times the distance m - 1 - j to the query (the last key is the query's own
    position). weights may be scores. One simple loop per step, so that each vectorises."""
    if softcap > 0.0:
        for j in range(m):
            weights[j] = np.float32(softcap) * _tanh(scores[j] * np.float32(scale / softcap))
    else:
        for j in range(m):
            weights[j] = scores[j] * np.float32(scale)
    if slope != 0.0:
        for j in range(m):
            weights[j] -= np.float32(slope) * np.float32(m - 1 - j)
    best = np.float32(-np.inf)
    for j in range(m):
        best = max(best, weights[j])
    total = 0.0
    for j in range(m):
        e = _exp(weights[j] - best)
        weights[j] = e
        total += e
    return total


@njit(inline="always")
def _attention_task(q, k_cache, v_cache, pos0, scale, softcap, window, slopes, out, task):
    n_heads = q.shape[1]
    head_dim_v = v_cache.shape[2]
    n_heads_per_kv = n_heads // k_cache.shape[0]
    ring = k_cache.shape[2]  # position p lives in slot p % ring
    t = task // n_heads
    h = task % n_heads
    kvh = h // n_heads_per_kv
    p = pos0 + t
    start = 0
    if window > 0 and p - window + 1 > 0:
        start = p - window + 1
    n = p + 1 - start
    scores = np.zeros(n, dtype=np.float32)
    # keys start .. p are one contiguous run of slots, or two when a sliding-window ring wraps
    first = start % ring
    if first + n <= ring:
        _add_scores(q, k_cache, t, h, kvh, first, n, scores)  # the common case: no view, faster
    else:
        j0 = 0
        while j0 < n:
            slot = (start + j0) % ring
            m = min(n - j0, ring - slot)
            _add_scores(q, k_cache, t, h, kvh, slot, m, scores[j0:j0 + m])
            j0 += m
    inv = np.float32(1.0 / _softmax_weights(scores, scores, n, scale, softcap, slopes[h]))
    acc = np.zeros(head_dim_v, dtype=np.float32)
    if first + n <= ring:
        _add_values(v_cache, kvh, first, n, scores, inv, acc)
    else:
        j0 = 0
        while j0 < n:
            slot = (start + j0) % ring
            m = min(n - j0, ring - slot)
            _add_values(v_cache, kvh, slot, m, scores[j0:j0 + m], inv, acc)
            j0 += m
    for d in range(head_dim_v):
        out[t, h, d] = acc[d]


@njit(parallel=True, cache=True, nogil=True, fastmath=_REASSOCIATE)
def attention(q, k_cache, v_cache, pos0, scale, softcap, window, slopes, out):
    """Causal multi-head attention of T new queries against the cache, written to out.

    q, out: (T, H, Dh); k_cache: (Hkv, Dh, n_slots) (keys transposed, see KVCache);
    v_cache: (Hkv, n_slots, Dv); position p is in slot p % n_slots (a ring for sliding-window
    layers; n_slots >= n_ctx otherwise), every position the queries see present. Query head h
    reads key/value head h // (H / Hkv) (grouped-query attention). Per query at position p, keys j in
    [max(0, p - window + 1), p] (window <= 0: no sliding window):

        s_j = scale * (q . k_j)
        s_j = softcap * tanh(s_j / softcap)        if softcap > 0   (Gemma 2)
        s_j = s_j - slopes[h] * (p - j)            ALiBi (slopes all zero otherwise)
        out = sum_j softmax(s)_j * v_j

    The scores loop runs over key positions innermost (contiguous in the transposed cache), four
    channels per pass; the value loop over channels, four keys per pass: both vectorise.
    """
    n_tok, n_heads = q.shape[0], q.shape[1]
    for i in prange(n_tok * n_heads):
        # Causal work grows with t; prange hands each thread a contiguous range of i, so visit
        # tokens as 0, T-1, 1, T-2, ... to give every thread the same number of keys.
        k = i // n_heads
        t = k // 2 if k % 2 == 0 else n_tok - 1 - k // 2
        _attention_task(q, k_cache, v_cache, pos0, scale, softcap, window, slopes, out,
                        t * n_heads + i % n_heads)


@njit(cache=True, nogil=True, fastmath=_REASSOCIATE)
def attention_serial(q, k_cache, v_cache, pos0, scale, softcap, window, slopes, out):
    for task in range(q.shape[0] * q.shape[1]):
        _attention_task(q, k_cache, v_cache, pos0, scale, softcap, window, slopes, out, task)


# KV cache types stored as ggml blocks; the others are float arrays.
QUANTIZED_KV = tuple(name for name, kind in KV_TYPES.items() if kind.quantized)


def _dequantize_kv_row(row, dense, kind):
    """dense (n_blocks, 32) float32 = the values of one position's row of q8_0 / q4_0 blocks
    (`row`: n_blocks x the type's block bytes), as llama.cpp's to_float."""
    raise NotImplementedError("only available in numba-compiled code")


@overload(_dequantize_kv_row, inline="always")
def _dequantize_kv_row_kind(row, dense, kind):
    if not isinstance(kind, types.StringLiteral) or kind.literal_value not in QUANTIZED_KV:
        return None
    dequantize_block = {"q8_0": dequantize_block_q8_0, "q4_0": dequantize_block_q4_0}[kind.literal_value]
    block_bytes = BLOCK_BYTES[kind.literal_value]

    def block_row(row, dense, kind):
        raw = row.reshape(dense.shape[0], block_bytes)
        for b in range(dense.shape[0]):
            dequantize_block(raw, dense, b)
    return block_row


def _group_scores(q, keys, t, h0, n_group, start, n, ring, scores, kind):
    """scores[i, j] = q[t, h0 + i] . key of position start + j (slot (start + j) % ring), for the
    n_group query heads sharing `keys` (one key/value head's) and j < n; `kind` the cache type."""
    raise NotImplementedError("only available in numba-compiled code")


@overload(_group_scores, inline="always")
def _group_scores_kind(q, keys, t, h0, n_group, start, n, ring, scores, kind):
    if not isinstance(kind, types.StringLiteral):
        return None
    if kind.literal_value not in QUANTIZED_KV:
        def float_keys(q, keys, t, h0, n_group, start, n, ring, scores, kind):
            j0 = 0
            while j0 < n:  # one run of slots, or two where a sliding-window ring wraps
                slot = (start + j0) % ring
                m = min(n - j0, ring - slot)
                key_scores(q[t, h0:h0 + n_group], keys, slot, m, scores, j0)
                j0 += m
        return float_keys

    def block_keys(q, keys, t, h0, n_group, start, n, ring, scores, kind):
        """Keys of Q8_0 / Q4_0 blocks, one row of head_dim / 32 blocks per position:

            keys[slot]  | d fp16 | qs[32] int8 | d | qs | ...      q8_0, 34 bytes per block
                        | d fp16 | qs[16] nibbles (q[j], q[j + 16]) | ...   q4_0, 18 bytes

        As llama.cpp's flash attention: each query head is quantized to Q8_0 activation blocks
        (ggml's x86 quantize_row_q8_0) and dotted with each key in integers, block by block
        (its vec_dot_q8_0_q8_0 / q4_0_q8_0): `row_dot_int8`, the weight mat-vecs' kernel, with
        the keys as weight rows and the group's query heads as its columns."""
        head_dim = q.shape[2]
        xq = np.empty((n_group, head_dim), np.int8)
        xd = np.empty((n_group, head_dim // 32), np.float32)
        xbias = np.empty((n_group, head_dim // 4), np.int32)
        xd8 = np.empty((n_group, head_dim // 4), np.float32)
        for i in range(n_group):
            quantize_activations_into(q[t, h0 + i], xq[i], xd[i], xbias[i], code_offset(kind),
                                      SIGNED_Q8_0 and kind == "q8_0")
            for k in range(head_dim // 4):
                xd8[i, k] = xd[i, k // 8]
        for j in range(n):
            row_dot_int8(keys[(start + j) % ring], xq, xd8, xbias, head_dim // 32, kind, scores, j, 0, n_group)
    return block_keys


def _add_group_values(values, start, n, ring, weights, acc, kind):
    """acc[i] += sum_j weights[i, j] * value of position start + j, for j < n."""
    raise NotImplementedError("only available in numba-compiled code")


@overload(_add_group_values, inline="always")
def _add_group_values_kind(values, start, n, ring, weights, acc, kind):
    if not isinstance(kind, types.StringLiteral):
        return None
    if kind.literal_value not in QUANTIZED_KV:
        def float_values(values, start, n, ring, weights, acc, kind):
            j0 = 0
            while j0 < n:  # one run of slots, or two where a sliding-window ring wraps
                slot = (start + j0) % ring
                m = min(n - j0, ring - slot)
                value_sums(weights, j0, values, slot, m, acc)
                j0 += m
        return float_values

    def block_values(values, start, n, ring, weights, acc, kind):
        """Values of Q8_0 / Q4_0 blocks (the layout of `block_keys`): each position's row is
        dequantized to float32 (llama.cpp's to_float) and added with its weight, never the whole
        cache at once."""
        n_group, head_dim_v = acc.shape
        n_blocks = head_dim_v // 32
        dense = np.empty((n_blocks, 32), np.float32)
        flat = dense.reshape(head_dim_v)
        for j in range(n):
            _dequantize_kv_row(values[(start + j) % ring], dense, kind)
            for i in range(n_group):
                w = weights[i, j]
                row = acc[i]
                for d in range(head_dim_v):
                    row[d] += w * flat[d]
    return block_values


@njit(inline="always")
def _parallel_rows(q, positions, window, out, threads):
    """Whether decode rows at these positions run in a parallel region: more than one thread, and
    attention work enough for it (PARALLEL_MIN_WORK multiply-adds), decided in the kernel, not in
    Python (numpy's sum over the positions cost ~9 us a layer in a model, its memory cold after
    the weights' stream)."""
    if threads <= 1:
        return False
    n_keys = 0
    for t in range(positions.shape[0]):
        seen = positions[t] + 1
        n_keys += seen if window <= 0 else min(seen, window)
    return q.shape[1] * n_keys * (q.shape[2] + out.shape[2]) >= PARALLEL_MIN_WORK


@njit(inline="always")
def _attention_group_task(q, k_cache, v_cache, seq, positions, scale, softcap, window, slopes, out, task,
                          k_kind, v_kind):
    """Row t's query heads that share key/value head g (task = t * Hkv + g) against sequence
    seq[t]'s cache at positions[t]: the scores of `_attention_task`, with each key and value
    read once for the whole group (grouped-query attention). k_kind / v_kind: the cache types
    (f32 / f16 arrays, or q8_0 / q4_0 blocks, see engine.kv_cache)."""
    n_heads, head_dim_v = q.shape[1], out.shape[2]
    n_kv = k_cache.shape[1]
    n_group = n_heads // n_kv
    ring = v_cache.shape[2]
    t, g = task // n_kv, task % n_kv
    keys, values = k_cache[seq[t], g], v_cache[seq[t], g]
    p = positions[t]
    start = 0
    if window > 0 and p - window + 1 > 0:
        start = p - window + 1
    n = p + 1 - start
    h0 = g * n_group
    scores = np.empty((n_group, n), dtype=np.float32)  # every entry written
    _group_scores(q, keys, t, h0, n_group, start, n, ring, scores, k_kind)
    inv = np.empty(n_group, dtype=np.float32)
    for i in range(n_group):
        inv[i] = np.float32(1.0 / _softmax_weights(scores[i], scores[i], n, scale, softcap, slopes[h0 + i]))
    acc = np.zeros((n_group, head_dim_v), dtype=np.float32)
    _add_group_values(values, start, n, ring, scores, acc, v_kind)
    for i in range(n_group):  # normalised once, at the end (as llama.cpp's flash attention)
        for d in range(head_dim_v):
            out[t, h0 + i, d] = acc[i, d] * inv[i]


@njit(cache=True, nogil=True)
def round_through_f16(x):
    """x (T, H, D) float32 rounded to fp16 and back in place (nearest even, as numpy's astype):
    queries as llama.cpp's row kernel converts them for an f16 key cache (numpy's conversion took
    ~17 us for 8 x 4 x 256 values, 18 times a demo step)."""
    for a in range(x.shape[0]):
        for b in range(x.shape[1]):
            for c in range(x.shape[2]):
                x[a, b, c] = fp32_round_fp16(x[a, b, c])


@njit(cache=True, nogil=True)
def round_through_q8_0(x):
    """x (T, H, D) float32 replaced in place by the values of its Q8_0 blocks (ggml's x86
    quantize_row_q8_0, `activation_block_scale`): the queries as llama.cpp's flash attention dots
    them with q8_0 / q4_0 keys, so float products over the dequantized keys are its integer
    products up to float rounding."""
    for a in range(x.shape[0]):
        for b in range(x.shape[1]):
            row = x[a, b]
            for first in range(0, row.size, 32):
                d, inv = activation_block_scale(row, first)
                for k in range(first, first + 32):
                    row[k] = np.float32(activation_code(row[k], inv)) * d


# What llama.cpp's flash-attention row kernel converts the queries to before dotting them with keys
# of each cache type (the keys' vec_dot_type), as `round_queries` codes: f16 values (1), or Q8_0
# blocks for the block types (2); f32 keys take the queries as they are (0).
QUERY_ROUNDING = {"f32": 0, "f16": 1, "q8_0": 2, "q4_0": 2}


@njit(cache=True, nogil=True)
def round_queries(q, rounding):
    """q (T, H, D) rounded in place as `QUERY_ROUNDING` code `rounding` says."""
    if rounding == 1:
        round_through_f16(q)
    elif rounding == 2:
        round_through_q8_0(q)


# Query rows per block of the GEMM-shaped attention: gemm_micro's 6-row register block.
ATTN_ROWS = 6
ATTN_STRIP = 32


def _fill_key_panel(keys, slot, panel, j, dense, kind):
    """panel[:, j] = the key in `slot` of one key/value head's keys (float: (Dh, n_slots);
    q8_0 / q4_0: (n_slots, Dh / 32 blocks), the rows `_group_scores`' block_keys draws); dense:
    (Dh / 32, 32) float32 scratch for the blocks."""
    raise NotImplementedError("only available in numba-compiled code")


def _fill_value_row(values, slot, strips, row, dense, kind):
    """strips[c, row, :] = channels 32 c .. 32 c + 31 of the value in `slot` (values: float
    (n_slots, Dv); q8_0 / q4_0: (n_slots, Dv / 32 blocks)); dense as `_fill_key_panel`'s."""
    raise NotImplementedError("only available in numba-compiled code")


@overload(_fill_key_panel, inline="always")
def _fill_key_panel_kind(keys, slot, panel, j, dense, kind):
    if not isinstance(kind, types.StringLiteral):
        return None
    if kind.literal_value not in QUANTIZED_KV:
        def float_key(keys, slot, panel, j, dense, kind):
            for d in range(panel.shape[0]):
                panel[d, j] = as_float(keys[d, slot])
        return float_key

    def block_key(keys, slot, panel, j, dense, kind):
        _dequantize_kv_row(keys[slot], dense, kind)
        for b in range(dense.shape[0]):
            for jj in range(32):
                panel[32 * b + jj, j] = dense[b, jj]
    return block_key


@overload(_fill_value_row, inline="always")
def _fill_value_row_kind(values, slot, strips, row, dense, kind):
    if not isinstance(kind, types.StringLiteral):
        return None
    if kind.literal_value not in QUANTIZED_KV:
        def float_value(values, slot, strips, row, dense, kind):
            for c in range(strips.shape[0]):
                for jj in range(ATTN_STRIP):
                    strips[c, row, jj] = as_float(values[slot, ATTN_STRIP * c + jj])
        return float_value

    def block_value(values, slot, strips, row, dense, kind):
        _dequantize_kv_row(values[slot], dense, kind)
        for b in range(dense.shape[0]):  # a block is one strip's 32 channels (ATTN_STRIP = QK8_0 = QK4_0)
            for jj in range(32):
                strips[b, row, jj] = dense[b, jj]
    return block_value


def attention_blocked_fits(n_tok: int, pos0: int, window: int, n_slots: int, head_dim_v: int) -> bool:
    """Whether `attention_blocked` can run this batch: Dv a multiple of 32, and the ring holding
    every position the batch sees (always true of KVCache's rings)."""
    first = max(0, pos0 - window + 1) if window > 0 else 0
    return head_dim_v % ATTN_STRIP == 0 and pos0 + n_tok - first <= n_slots


@njit(inline="always")
def _silu_row(gate, up, out, r):
    for i in range(gate.shape[1]):
        g = gate[r, i]
        out[r, i] = g / (np.float32(1.0) + _exp(-g)) * up[r, i]


_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def _gelu_table() -> np.ndarray:
    """gelu(x) for every fp16 x, rounded to fp16 (as float32): ggml's CPU backend (GGML_GELU_FP16)
    computes GELU by rounding its input to fp16 and reading this table, so a trained model's
    perplexity moves by tenths of a percent between the table and exact float32 GELU."""
    x = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)
    c, a, half, one = np.float32(_SQRT_2_OVER_PI), np.float32(0.044715), np.float32(0.5), np.float32(1.0)
    with np.errstate(invalid="ignore", over="ignore"):
        y = half * x * (one + np.tanh(c * x * (one + a * x * x)))
    return y.astype(np.float16).astype(np.float32)


GELU_FP16_TABLE = _gelu_table()
# Beyond these ggml takes gelu(x) = 0 and = x without the table.
GELU_ZERO_BELOW, GELU_IDENTITY_ABOVE = np.float32(-10.0), np.float32(10.0)


@njit(inline="always")
def _gelu_row(gate, up, out, r):
    for i in range(gate.shape[1]):
        g = gate[r, i]
        if g <= GELU_ZERO_BELOW:
            out[r, i] = np.float32(0.0)
        elif g >= GELU_IDENTITY_ABOVE:
            out[r, i] = g * up[r, i]
        else:
            out[r, i] = GELU_FP16_TABLE[fp32_to_fp16(g)] * up[r, i]


@njit(parallel=True, cache=True, nogil=True, fastmath=_REASSOCIATE)
def silu_mul(gate, up, out):
    """out = silu(gate) * up, rows of (T, F). out may alias gate or up."""
    for r in prange(gate.shape[0]):
        _silu_row(gate, up, out, r)


@njit(parallel=True, cache=True, nogil=True, fastmath=_REASSOCIATE)
def gelu_mul(gate, up, out):
    """out = gelu(gate) * up with the tanh approximation ggml and Gemma use, rows of (T, F)."""
    for r in prange(gate.shape[0]):
        _gelu_row(gate, up, out, r)


@njit(cache=True, nogil=True)
def softcap_(x, cap):
    """x = cap * tanh(x / cap) in place over a 2-D array (Gemma 2/3 final logits)."""
    n_rows, n = x.shape
    for r in range(n_rows):
        for i in range(n):
            x[r, i] = np.float32(cap) * _tanh(x[r, i] / np.float32(cap))


@njit(cache=True, nogil=True)
def store_kv(k, v, k_cache, v_cache, pos0):
    """Copy this batch's keys (T, Hkv, Dh) into the transposed key cache (Hkv, Dh, n_slots) and its
    values (T, Hkv, Dv) into the value cache (Hkv, n_slots, Dv): position p goes to slot p % n_slots."""
    n_tok, n_kv_heads, head_dim = k.shape
    head_dim_v = v.shape[2]
    ring = k_cache.shape[2]
    for h in range(n_kv_heads):
        for d in range(head_dim):
            for t in range(n_tok):
                k_cache[h, d, (pos0 + t) % ring] = to_storage(k[t, h, d], k_cache)
        for t in range(n_tok):
            for d in range(head_dim_v):
                v_cache[h, (pos0 + t) % ring, d] = to_storage(v[t, h, d], v_cache)


def _store_row(x, cache, slot, kind, transposed):
    """Store x (D,) as position `slot` of one key/value head's cache of type `kind`: a row of
    blocks cache[slot] (q8_0 / q4_0), cache[slot, :] (float values) or, transposed, cache[:, slot]
    (float keys)."""
    raise NotImplementedError("only available in numba-compiled code")


@overload(_store_row, inline="always")
def _store_row_kind(x, cache, slot, kind, transposed):
    if not isinstance(kind, types.StringLiteral):
        return None
    if kind.literal_value == "q8_0":
        def q8_0_row(x, cache, slot, kind, transposed):
            """Q8_0 as llama.cpp's CPU backend writes its cache (set_rows -> the type's
            from_float, ggml's x86 quantize_row_q8_0: multiplier 127/amax, halves to even; not
            quantize_row_q8_0_ref): | d fp16 | qs[32] int8 | per 32 values."""
            row = cache[slot]
            for b in range(x.size // 32):
                d, inv = activation_block_scale(x, 32 * b)
                bits = fp32_to_fp16(d)
                row[34 * b] = bits & 0xFF
                row[34 * b + 1] = (bits >> 8) & 0xFF
                for k in range(32):
                    row[34 * b + 2 + k] = activation_code(x[32 * b + k], inv) & 0xFF
        return q8_0_row
    if kind.literal_value == "q4_0":
        block_bytes = BLOCK_BYTES["q4_0"]

        def q4_0_row(x, cache, slot, kind, transposed):
            """Q4_0 as llama.cpp writes it (its CPU from_float is quantize_row_q4_0_ref)."""
            n_blocks = x.size // 32
            blocks = cache[slot].reshape(n_blocks, block_bytes)
            values = x.reshape(n_blocks, 32)
            for b in range(n_blocks):
                quantize_block_q4_0(values, blocks, b)
        return q4_0_row

    def float_row(x, cache, slot, kind, transposed):
        for d in range(x.size):
            if transposed:
                cache[d, slot] = to_storage(x[d], cache)
            else:
                cache[slot, d] = to_storage(x[d], cache)
    return float_row


@njit(inline="always")
def _attention_tasks(q, k_cache, v_cache, seq, positions, scale, softcap, window, slopes, out, parallel, k_kind,
                     v_kind):
    """Batched decode: row t of q (T, H, Dh) is one token of sequence seq[t] at positions[t];
    k_cache and v_cache hold every sequence's cache (see KVCache), block types read in place.
    One task per (row, key/value head): its query heads together, so a sequence's result does
    not depend on the others in the batch (one token evaluated alone runs this too). The tasks
    go to the thread pool (`prange`) when `parallel`, else run on the calling thread."""
    if parallel:
        for task in prange(q.shape[0] * k_cache.shape[1]):
            _attention_group_task(q, k_cache, v_cache, seq, positions, scale, softcap, window, slopes, out, task,
                                  k_kind, v_kind)
    else:  # a function of its own: the task inlined twice in one function made numba warn at compile
        _attention_tasks_serial(q, k_cache, v_cache, seq, positions, scale, softcap, window, slopes, out, k_kind,
                                v_kind)


@njit(nogil=True, fastmath=_REASSOCIATE)
def _attention_tasks_serial(q, k_cache, v_cache, seq, positions, scale, softcap, window, slopes, out, k_kind,
                            v_kind):
    for task in range(q.shape[0] * k_cache.shape[1]):
        _attention_group_task(q, k_cache, v_cache, seq, positions, scale, softcap, window, slopes, out, task,
                              k_kind, v_kind)


@njit(inline="always")
def _store_rows(k, v, k_cache, v_cache, seq, positions, k_kind, v_kind):
    """Batched decode: row t's key (Hkv, Dh) and value (Hkv, Dv) into sequence seq[t]'s cache
    (k_cache (S, Hkv, Dh, n_slots) / v_cache (S, Hkv, n_slots, Dv) for floats) at positions[t],
    a block type quantized a head row at a time."""
    ring = v_cache.shape[2]
    for t in range(k.shape[0]):
        slot = positions[t] % ring
        for h in range(k.shape[1]):
            _store_row(k[t, h], k_cache[seq[t], h], slot, k_kind, True)  # float keys: transposed
            _store_row(v[t, h], v_cache[seq[t], h], slot, v_kind, False)


class KVKernels(NamedTuple):
    """The kernels that read or write a KV cache, compiled for one pair of cache types (see
    `kv_kernels`)."""

    rows: object  # (q, k_cache, v_cache, seq, positions, scale, softcap, window, slopes, out)
    rows_serial: object  # the same on the calling thread (`PARALLEL_MIN_WORK`)
    attend_rows: object  # the same arguments and `threads`: `rows` or `rows_serial`, by the rows' work
    blocked: object  # (q, k_cache, v_cache, pos0, scale, softcap, window, slopes, out)
    store_rows: object  # (k, v, k_cache, v_cache, seq, positions)
    decode_rows: object  # (q, k, v, cos, sin, neox, query_rounding, k_cache, v_cache, seq, positions,
    #                       scale, softcap, window, slopes, out, threads): a decode step's attention


def kv_kernels(k_type: str, v_type: str) -> KVKernels:
    """The attention and store kernels for caches of types k_type / v_type (engine.kv_cache's
    names; f32 and f16 share the float kernels, which convert by the array's dtype)."""
    return _kv_kernels(k_type if k_type in QUANTIZED_KV else "float", v_type if v_type in QUANTIZED_KV else "float")


@functools.cache
def _kv_kernels(k_kind: str, v_kind: str) -> KVKernels:
    # The block helpers dispatch on the type names as numba literals. Taken as arguments
    # (`numba.literally`), every call typed the whole kernel again before finding its compiled
    # version (~200 ms per decode attention call, 15 ms per store); closed over here, they are
    # compile-time constants, and numba's cache keeps one entry per pair.

    @njit(parallel=True, cache=True, nogil=True, fastmath=_REASSOCIATE)
    def rows(q, k_cache, v_cache, seq, positions, scale, softcap, window, slopes, out):
        _attention_tasks(q, k_cache, v_cache, seq, positions, scale, softcap, window, slopes, out, True, k_kind, v_kind)

    @njit(cache=True, nogil=True, fastmath=_REASSOCIATE)
    def rows_serial(q, k_cache, v_cache, seq, positions, scale, softcap, window, slopes, out):
        _attention_tasks(q, k_cache, v_cache, seq, positions, scale, softcap, window, slopes, out, False, k_kind,
                         v_kind)

    # `attend_rows` and `decode_rows` take the loops inline (module-level helpers) rather than
    # calling `rows` or `store_rows`, and the thread count as an argument: numba cannot cache a
    # function that calls a parallel one, asks for the thread count or calls a function made in
    # this closure, and would compile it at every start. threads: the pool's count now (a
    # parallel region of 1 thread still costs).
    @njit(parallel=True, cache=True, nogil=True, fastmath=_REASSOCIATE)
    def attend_rows(q, k_cache, v_cache, seq, positions, scale, softcap, window, slopes, out, threads):
        _attention_tasks(q, k_cache, v_cache, seq, positions, scale, softcap, window, slopes, out,
                         _parallel_rows(q, positions, window, out, threads), k_kind, v_kind)

    @njit(parallel=True, cache=True, nogil=True, fastmath=_REASSOCIATE)
    def blocked(q, k_cache, v_cache, pos0, scale, softcap, window, slopes, out):
        """`attention` for a batch, as two small GEMMs per block of 6 query rows (the same
        arguments; a q8_0 / q4_0 cache is (Hkv, n_slots, row of blocks): one sequence's).

        First the keys and values the batch can see (positions key_first .. pos0 + T - 1, read
        modulo the ring) are copied into panels of 32 positions as float32 (blocks dequantized, as
        llama.cpp's flash attention widens them), so the products stream contiguous memory (a strided
        walk over the cache ran at half the speed):

            kp[g, n, d, j] = key of position key_first + 32 n + j, channel d       (Dh x 32 per panel)
            vp[g, c, n, j] = value of position key_first + n, channel 32 c + j     (keys x 32 per strip)
            (zeros past the last position)

        The query heads sharing key/value head g form rows i = t * r + (h - g r), r = H / Hkv; a
        block of 6 consecutive rows (at most two tokens) sees one run of panels, so on `gemm_micro`:

            S (6, 32 n) = Qblock (6, Dh) @ kp[g, panels]                   one call per panel
            P = exp(mask(softcap(scale S) - ALiBi) - row max)               0 outside each row's window
            Oblock (6, Dv) = P (6, keys) @ vp[g, c, keys]                   one call per 32 channels

        Needs Dv a multiple of 32 (`attention_blocked_fits`).
        """
        n_tok, n_heads, head_dim = q.shape
        n_kv = k_cache.shape[0]
        ring = v_cache.shape[1]  # (Hkv, n_slots, ...) in every layout
        head_dim_v = out.shape[2]
        key_first = 0
        if window > 0 and pos0 - window + 1 > 0:
            key_first = pos0 - window + 1
        n_keys = pos0 + n_tok - key_first
        n_panels = (n_keys + ATTN_STRIP - 1) // ATTN_STRIP
        n_strips_v = head_dim_v // ATTN_STRIP
        kp = np.empty((n_kv, n_panels, head_dim, ATTN_STRIP), np.float32)
        vp = np.empty((n_kv, n_strips_v, n_panels * ATTN_STRIP, ATTN_STRIP), np.float32)
        for task in prange(n_kv * n_panels):
            g = task // n_panels
            n0 = ATTN_STRIP * (task % n_panels)
            panel = kp[g, n0 // ATTN_STRIP]
            dense = np.empty((max(head_dim, head_dim_v) // 32, 32), np.float32)
            for j in range(ATTN_STRIP):
                if n0 + j < n_keys:
                    slot = (key_first + n0 + j) % ring
                    _fill_key_panel(k_cache[g], slot, panel, j, dense[:head_dim // 32], k_kind)
                    _fill_value_row(v_cache[g], slot, vp[g], n0 + j, dense[:n_strips_v], v_kind)
                else:
                    for d in range(head_dim):
                        panel[d, j] = 0.0
                    for c in range(n_strips_v):
                        for jj in range(ATTN_STRIP):
                            vp[g, c, n0 + j, jj] = 0.0

        per_kv = n_heads // n_kv
        n_rows = n_tok * per_kv
        n_blocks = (n_rows + ATTN_ROWS - 1) // ATTN_ROWS
        for item in prange(n_kv * n_blocks):
            # Later blocks see more keys: visit blocks 0, B-1, 1, B-2, ... so both threads get as much work.
            g = item % n_kv
            kk = item // n_kv
            b = kk // 2 if kk % 2 == 0 else n_blocks - 1 - kk // 2
            i0 = ATTN_ROWS * b
            rows = min(ATTN_ROWS, n_rows - i0)
            p_first = pos0 + i0 // per_kv
            p_last = pos0 + (i0 + rows - 1) // per_kv
            key_lo = key_first
            if window > 0 and p_first - window + 1 > key_lo:
                key_lo = p_first - window + 1
            panel_lo = (key_lo - key_first) // ATTN_STRIP
            panel_hi = (p_last - key_first) // ATTN_STRIP
            n_cols = ATTN_STRIP * (panel_hi - panel_lo + 1)
            col_first = key_first + ATTN_STRIP * panel_lo  # position of score column 0
            xb = np.zeros((ATTN_ROWS, head_dim), np.float32)
            for i in range(rows):
                t = (i0 + i) // per_kv
                h = g * per_kv + (i0 + i) % per_kv
                for d in range(head_dim):
                    xb[i, d] = q[t, h, d]
            scores = np.empty((ATTN_ROWS, n_cols), np.float32)
            for n in range(panel_lo, panel_hi + 1):
                gemm_micro(xb, 0, 6, kp[g, n], 0, scores, ATTN_STRIP * (n - panel_lo), head_dim)
            probs = np.zeros((ATTN_ROWS, n_cols), np.float32)
            inv = np.zeros(ATTN_ROWS, np.float32)
            for i in range(rows):
                p = pos0 + (i0 + i) // per_kv
                h = g * per_kv + (i0 + i) % per_kv
                start = key_first
                if window > 0 and p - window + 1 > start:
                    start = p - window + 1
                j0 = start - col_first
                m = p - start + 1
                inv[i] = np.float32(1.0 / _softmax_weights(scores[i, j0:j0 + m], probs[i, j0:j0 + m], m, scale,
                                                           softcap, slopes[h]))
            acc = np.empty((ATTN_ROWS, head_dim_v), np.float32)
            key0 = ATTN_STRIP * panel_lo
            for c in range(n_strips_v):
                gemm_micro(probs, 0, 6, vp[g, c, key0:key0 + n_cols], 0, acc, ATTN_STRIP * c, n_cols)
            for i in range(rows):
                t = (i0 + i) // per_kv
                h = g * per_kv + (i0 + i) % per_kv
                for d in range(head_dim_v):
                    out[t, h, d] = acc[i, d] * inv[i]

    @njit(cache=True, nogil=True)
    def store_rows(k, v, k_cache, v_cache, seq, positions):
        _store_rows(k, v, k_cache, v_cache, seq, positions, k_kind, v_kind)

    @njit(parallel=True, cache=True, nogil=True, fastmath=_REASSOCIATE)
    def decode_rows(q, k, v, cos, sin, neox, query_rounding, k_cache, v_cache, seq, positions, scale, softcap,
                    window, slopes, out, threads):
        """A decode step's attention in one call (row t: one token of sequence seq[t] at
        positions[t]): RoPE on the keys and queries (cos of 0 rows: none), the keys and values
        stored (`store_rows`), the queries rounded as the keys' type asks (`round_queries`), then
        `attend_rows`. One call instead of five from Python: in a model each call's Python and
        dispatch ran on memory the weights' stream had just evicted (1B-shaped model, 1 thread: 50-64
        -> 38-43 us a layer)."""
        if cos.shape[0]:
            rope_rows(k, cos, sin, positions, neox)
            rope_rows(q, cos, sin, positions, neox)
        _store_rows(k, v, k_cache, v_cache, seq, positions, k_kind, v_kind)
        round_queries(q, query_rounding)
        _attention_tasks(q, k_cache, v_cache, seq, positions, scale, softcap, window, slopes, out,
                         _parallel_rows(q, positions, window, out, threads), k_kind, v_kind)

    return KVKernels(rows, rows_serial, attend_rows, blocked, store_rows, decode_rows)


_FLOAT_KV = kv_kernels("f32", "f32")
attention_rows, attention_rows_serial = _FLOAT_KV.rows, _FLOAT_KV.rows_serial
attention_blocked, store_kv_rows = _FLOAT_KV.blocked, _FLOAT_KV.store_rows


@njit(cache=True, nogil=True)
def rope_rows(x, cos, sin, positions, neox):
    """Batched decode: rotate row t of x (T, heads, Dh) in place for position positions[t]
    (the arithmetic of `rope` / `rope_serial`)."""
    n_heads = x.shape[1]
    for t in range(x.shape[0]):
        for h in range(n_heads):
            _rope_task(x[t:t + 1], cos, sin, positions[t], neox, h)


ACTIVATIONS = {"silu": silu_mul, "gelu": gelu_mul}

# Below this much work (multiply-adds) a parallel region costs more than it saves: a single token's
# norms, RoPE and activations, and attention over a short context, run on the calling thread. (With
# the other core busy, each parallel region can also stall a scheduler tick waiting for its worker.)
PARALLEL_MIN_WORK = 1 << 16
# `attention_blocked` works on blocks of 6 query rows; with fewer queries (token generation, short
# batches) the per-head loop of `attention` is faster: 1 query at 256 cached positions 57-84 us
# against 190-340 us, crossover at ~6 queries (demo model, 1 thread).
BLOCKED_ATTENTION_MIN_QUERIES = 6
