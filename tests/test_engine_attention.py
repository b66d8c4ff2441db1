"""Batched attention kernels against a float64 numpy softmax attention (the textbook formula).

`ops.attention_blocked` (GEMM-shaped, used for prompts), `ops.attention` (per query) and the decode
rows (`ops.attention_rows`, register tiles over an f32 or f16 cache) must all equal it on random
data for every feature the graph uses: causal masking, grouped-query heads, sliding window, a
sliding-window ring whose run of slots wraps around, soft-capping, ALiBi, a batch that continues a
cache, and head sizes / runs of keys that are not a multiple of the tiles' 16 lanes.
"""

from __future__ import annotations

import numpy as np
import pytest

from llmcli.engine import ops


def _reference(q, keys, values, pos0, scale, softcap, window, slopes):
    """q (T, H, Dh); keys (Hkv, P, Dh), values (Hkv, P, Dv) for positions 0..P-1, in float64."""
    n_tok, n_heads, _ = q.shape
    per_kv = n_heads // keys.shape[0]
    out = np.zeros((n_tok, n_heads, values.shape[2]))
    for t in range(n_tok):
        p = pos0 + t
        lo = max(0, p - window + 1) if window > 0 else 0
        for h in range(n_heads):
            g = h // per_kv
            s = scale * (keys[g, lo:p + 1] @ q[t, h].astype(np.float64))
            if softcap > 0:
                s = softcap * np.tanh(s / softcap)
            s -= slopes[h] * (p - np.arange(lo, p + 1))
            w = np.exp(s - s.max())
            out[t, h] = (w / w.sum()) @ values[g, lo:p + 1]
    return out


def _cache(keys, values, n_slots):
    """The KVCache layout: keys (Hkv, Dh, slots) transposed, values (Hkv, slots, Dv); position p in
    slot p % n_slots (only the last n_slots positions kept)."""
    n_kv, n_pos, head_dim = keys.shape
    k_cache = np.zeros((n_kv, head_dim, n_slots), np.float32)
    v_cache = np.zeros((n_kv, n_slots, values.shape[2]), np.float32)
    for p in range(max(0, n_pos - n_slots), n_pos):
        k_cache[:, :, p % n_slots] = keys[:, p]
        v_cache[:, p % n_slots] = values[:, p]
    return k_cache, v_cache


CASES = {  # n_tok, pos0, n_heads, n_kv, head_dim, head_dim_v, window, n_slots, softcap, alibi
    "causal-gqa": (37, 0, 4, 1, 64, 64, 0, 64, 0.0, False),
    "continued": (13, 29, 4, 2, 16, 32, 0, 48, 0.0, False),
    "window": (50, 0, 2, 1, 32, 32, 16, 80, 0.0, False),
    "window-ring-wraps": (20, 70, 4, 2, 32, 64, 24, 44, 0.0, False),
    "short-ring": (9, 3, 2, 1, 16, 32, 4, 13, 0.0, False),
    "softcap-alibi": (25, 3, 3, 3, 24, 32, 0, 32, 50.0, True),
    "gemma3-shape": (70, 5, 4, 1, 256, 256, 32, 128, 0.0, False),
    "odd-sizes": (11, 6, 6, 2, 40, 40, 0, 24, 0.0, False),  # 3 heads a group, Dv 40: masked lanes
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_batched_attention_equals_softmax_formula(case):
    n_tok, pos0, n_heads, n_kv, head_dim, head_dim_v, window, n_slots, softcap, alibi = CASES[case]
    rng = np.random.default_rng(len(case))
    n_pos = pos0 + n_tok
    q = rng.standard_normal((n_tok, n_heads, head_dim)).astype(np.float32)
    keys = rng.standard_normal((n_kv, n_pos, head_dim)).astype(np.float32)
    values = rng.standard_normal((n_kv, n_pos, head_dim_v)).astype(np.float32)
    slopes = (0.5 ** np.arange(1, n_heads + 1) if alibi else np.zeros(n_heads)).astype(np.float32)
    scale = 1.0 / np.sqrt(head_dim)
    expected = _reference(q, keys, values, pos0, scale, softcap, window, slopes)
    k_cache, v_cache = _cache(keys, values, n_slots)
    blocked = ops.attention_blocked_fits(n_tok, pos0, window, n_slots, head_dim_v)
    assert blocked == (head_dim_v % 32 == 0)
    for kernel in (ops.attention, ops.attention_blocked) if blocked else (ops.attention,):
        out = np.full((n_tok, n_heads, head_dim_v), np.nan, np.float32)
        kernel(q, k_cache, v_cache, pos0, scale, softcap, window, slopes, out)
        np.testing.assert_allclose(out, expected, rtol=0, atol=2e-5, err_msg=kernel.__name__)
    # the same rows as decoded tokens of one sequence (positions pos0 ..), from an f32 and an f16 cache
    seq, positions = np.zeros(n_tok, np.int64), pos0 + np.arange(n_tok)
    f16_keys, f16_values = keys.astype(np.float16), values.astype(np.float16)
    f16_expected = _reference(q, f16_keys.astype(np.float32), f16_values.astype(np.float32), pos0, scale, softcap,
                              window, slopes)
    k16, v16 = _cache(f16_keys.astype(np.float32), f16_values.astype(np.float32), n_slots)
    caches = {"f32": (k_cache, v_cache, expected),
              "f16": (k16.astype(np.float16).view(np.uint16), v16.astype(np.float16).view(np.uint16), f16_expected)}
    for kind, (k_rows, v_rows, want) in caches.items():
        kernels = ops.kv_kernels(kind, kind)
        for kernel in (kernels.rows, kernels.rows_serial):
            out = np.full((n_tok, n_heads, head_dim_v), np.nan, np.float32)
            kernel(q, k_rows[None], v_rows[None], seq, positions, scale, softcap, window, slopes, out)
            np.testing.assert_allclose(out, want, rtol=0, atol=2e-5, err_msg=f"{kind} decode rows")


def test_blocked_attention_needs_value_heads_of_32_and_every_position_in_the_ring():
    assert ops.attention_blocked_fits(64, 0, 0, 64, 32)
    assert not ops.attention_blocked_fits(64, 0, 0, 64, 16)      # Dv not a multiple of 32
    assert not ops.attention_blocked_fits(65, 0, 0, 64, 32)      # 65 positions, 64 slots
    assert ops.attention_blocked_fits(20, 1000, 30, 50, 64)      # window 30 + batch 20 = 50 slots
