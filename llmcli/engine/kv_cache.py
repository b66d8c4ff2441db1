"""The key/value cache, shared by up to `n_seq` sequences, one (keys, values) pair per layer.

Element types (`KV_TYPES`, llama.cpp's `--cache-type-k/-v` names): f32, or f16 (half the memory,
the default as in llama.cpp), stored as uint16 half bits that the attention kernels read through
`engine.half`.

Layout per layer, with a leading sequence-slot axis so one allocation serves every sequence and a
kernel can reach any sequence's keys from one array:

    keys   (n_seq, n_kv_heads, head_dim,  n_slots)   transposed: one channel of one head is
                                                     contiguous over positions (scores vectorise)
    values (n_seq, n_kv_heads, n_slots,   head_dim_v) contiguous over channels (weighted sum)

`keys[s]`, `values[s]` are sequence s's cache, the layout the attention kernels read. Position p
is kept in slot p % n_slots: full-attention layers have a slot per context position; sliding-window
layers only window + batch slots (a ring), which is all a batch of queries can look at - for
Gemma 3 at long contexts that is most of the cache's memory saved, as in llama.cpp's SWA cache.

Memory: every sequence has the whole context (`n_ctx` positions each: `--ctx-size` is per
sequence, not split between them as llama-server splits it), so the cache takes
n_seq x `bytes_per_sequence`. The arrays are zero-filled lazily by the OS: a sequence's pages are
only committed as its positions are written.

A `CacheSlot` is one sequence's part of the cache: which slot row, how many positions hold
evaluated keys/values, and the token ids at those positions (for prefix reuse).
"""

from __future__ import annotations

import numpy as np

from ..errors import BadInputError

# --cache-type-k/-v name -> the array dtype that holds it (f16: IEEE half bits, see engine.half)
KV_TYPES: dict[str, np.dtype] = {"f32": np.dtype(np.float32), "f16": np.dtype(np.uint16)}
DEFAULT_KV_TYPE = "f16"


def kv_dtype(name: str, what: str = "--cache-type") -> np.dtype:
    """The array dtype of a KV cache type name; a BadInputError naming the choices otherwise."""
    dtype = KV_TYPES.get(str(name).lower())
    if dtype is None:
        raise BadInputError(f"{what}: unknown KV cache type '{name}' (choose one of {', '.join(KV_TYPES)})")
    return dtype


class KVCache:
    def __init__(self, n_seq: int, slots_per_layer: list[int], n_kv_heads: int, head_dim_k: int,
                 head_dim_v: int, type_k: str = DEFAULT_KV_TYPE, type_v: str = DEFAULT_KV_TYPE):
        self.n_seq = int(n_seq)
        self.slots = list(slots_per_layer)
        self.type_k, self.type_v = type_k, type_v
        dtype_k, dtype_v = kv_dtype(type_k, "--cache-type-k"), kv_dtype(type_v, "--cache-type-v")
        self.keys = [np.zeros((self.n_seq, n_kv_heads, head_dim_k, n), dtype_k) for n in self.slots]
        self.values = [np.zeros((self.n_seq, n_kv_heads, n, head_dim_v), dtype_v) for n in self.slots]

    def layer(self, il: int) -> tuple[np.ndarray, np.ndarray]:
        """All sequences' (keys, values) of layer il."""
        return self.keys[il], self.values[il]

    @property
    def n_bytes(self) -> int:
        """Bytes of every sequence's cache."""
        return sum(a.nbytes for a in self.keys) + sum(a.nbytes for a in self.values)

    @property
    def bytes_per_sequence(self) -> int:
        return self.n_bytes // self.n_seq

    def slot(self, index: int, n_ctx: int) -> "CacheSlot":
        """An empty sequence over slot row `index` (whoever hands slots out keeps them distinct)."""
        if not 0 <= index < self.n_seq:
            raise IndexError(f"slot {index} of a {self.n_seq}-sequence cache")
        return CacheSlot(self, index, n_ctx)


class CacheSlot:
    """One sequence's slot row in a KVCache: positions 0 .. n_past - 1 hold the keys and values of
    history[:n_past]."""

    __slots__ = ("cache", "index", "n_past", "history")

    def __init__(self, cache: KVCache, index: int, n_ctx: int):
        self.cache = cache
        self.index = index
        self.n_past = 0
        self.history = np.zeros(n_ctx, np.int64)

    @property
    def tokens(self) -> np.ndarray:
        """The ids whose keys and values are cached, in position order."""
        return self.history[:self.n_past]

    def common_prefix(self, ids) -> int:
        """How many leading ids of `ids` are already cached in this slot."""
        ids = np.asarray(ids, dtype=np.int64)
        n = min(len(ids), self.n_past)
        differ = np.flatnonzero(self.history[:n] != ids[:n])
        return int(differ[0]) if len(differ) else n

    def copy_from(self, other: "CacheSlot") -> None:
        """Make this slot hold what `other` holds (another slot of the same cache): its cached
        positions, keys and values - cheaper than evaluating a shared prefix again."""
        n = other.n_past
        cache = self.cache
        for keys, values, slots in zip(cache.keys, cache.values, cache.slots):
            used = min(n, slots)  # a sliding-window ring may have wrapped: copy all of it
            keys[self.index, :, :, :used] = keys[other.index, :, :, :used]
            values[self.index, :, :used] = values[other.index, :, :used]
        self.history[:n] = other.history[:n]
        self.n_past = n

    def layer(self, il: int) -> tuple[np.ndarray, np.ndarray]:
        """This sequence's (keys, values) of layer il: (Hkv, Dh, n_slots), (Hkv, n_slots, Dv)."""
        return self.cache.keys[il][self.index], self.cache.values[il][self.index]

    def __repr__(self) -> str:
        return f"CacheSlot({self.index}, n_past={self.n_past})"
