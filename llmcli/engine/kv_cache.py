"""The key/value cache: float32, one (keys, values) pair per layer.

Layout per layer: keys (n_kv_heads, head_dim, n_slots) - transposed, so one channel of one head is
contiguous over positions and the attention scores vectorise over positions - and values
(n_kv_heads, n_slots, head_dim), contiguous over channels for the weighted sum. Position p is kept
in slot p % n_slots: full-attention layers have a slot per context position; sliding-window layers
only window + batch slots (a ring), which is all a batch of queries can look at - for Gemma 3 at
long contexts that is most of the cache's memory saved, as in llama.cpp's SWA cache.
"""

from __future__ import annotations

import numpy as np


class KVCache:
    def __init__(self, slots_per_layer: list[int], n_kv_heads: int, head_dim_k: int, head_dim_v: int):
        self.slots = list(slots_per_layer)
        self.keys = [np.zeros((n_kv_heads, head_dim_k, n), np.float32) for n in self.slots]
        self.values = [np.zeros((n_kv_heads, n, head_dim_v), np.float32) for n in self.slots]
        self.n_past = 0  # positions 0 .. n_past - 1 have been evaluated

    def layer(self, il: int) -> tuple[np.ndarray, np.ndarray]:
        return self.keys[il], self.values[il]

    @property
    def n_bytes(self) -> int:
        return sum(a.nbytes for a in self.keys) + sum(a.nbytes for a in self.values)
