"""The key/value cache: float32, one (keys, values) pair per layer, sized for the whole context.

Layout per layer: keys (n_kv_heads, head_dim, n_ctx) - transposed, so one channel of one head is
contiguous over positions and the attention scores vectorise over positions - and values
(n_kv_heads, n_ctx, head_dim), contiguous over channels for the weighted sum.
"""

from __future__ import annotations

import numpy as np


class KVCache:
    def __init__(self, n_layer: int, n_kv_heads: int, n_ctx: int, head_dim_k: int, head_dim_v: int):
        self.n_ctx = n_ctx
        self.keys = [np.zeros((n_kv_heads, head_dim_k, n_ctx), np.float32) for _ in range(n_layer)]
        self.values = [np.zeros((n_kv_heads, n_ctx, head_dim_v), np.float32) for _ in range(n_layer)]
        self.n_past = 0  # positions 0 .. n_past - 1 hold valid entries

    def layer(self, il: int) -> tuple[np.ndarray, np.ndarray]:
        return self.keys[il], self.values[il]

    @property
    def n_bytes(self) -> int:
        return sum(a.nbytes for a in self.keys) + sum(a.nbytes for a in self.values)
