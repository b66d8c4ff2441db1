"""The key/value cache, shared by up to `n_seq` sequences, one (keys, values) pair per layer.

Element types (`KV_TYPES`, llama.cpp's `--cache-type-k/-v` names and block formats):

    f32    float32                                                     32 bits per value
    f16    IEEE half bits as uint16 (numba has no float16), read
           through `engine.half`; the default, as in llama.cpp          16
    q8_0   ggml's Q8_0 blocks: 34 bytes per 32 values (fp16 scale +
           32 int8), as uint8 bytes                                      8.5
    q4_0   ggml's Q4_0 blocks: 18 bytes per 32 values (fp16 scale +
           16 bytes of nibbles)                                          4.5

A quantized type needs the head size to be a multiple of its 32-value block (llama.cpp refuses
the same models: "K cache type q8_0 with block size 32 does not divide n_embd_head_k").

Layout per layer, with a leading sequence-slot axis so one allocation serves every sequence and a
kernel can reach any sequence's keys from one array:

    keys   (n_seq, n_kv_heads, head_dim,  n_slots)   f32/f16, transposed: one channel of one head
                                                     is contiguous over positions (scores vectorise)
    keys   (n_seq, n_kv_heads, n_slots, row_bytes)   q8_0/q4_0: one position's key is a row of
                                                     head_dim / 32 blocks (`kv_quant` dots them)
    values (n_seq, n_kv_heads, n_slots,   head_dim_v) contiguous over channels (weighted sum)
    values (n_seq, n_kv_heads, n_slots, row_bytes)   q8_0/q4_0: a row of blocks per position

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

from dataclasses import dataclass

import numpy as np

from ..errors import BadInputError
from ..gguf.constants import TYPE_INFO, GGMLType


@dataclass(frozen=True)
class KVType:
    """A KV cache element type: the array dtype holding it and its ggml block (1 value for floats)."""

    name: str
    dtype: np.dtype
    block_size: int
    block_bytes: int

    @property
    def quantized(self) -> bool:
        return self.block_size > 1

    def row_bytes(self, n: int) -> int:
        """Bytes of n values (n a multiple of the block size)."""
        return n // self.block_size * self.block_bytes

    def row_length(self, n: int) -> int:
        """Array elements holding n values (bytes for a quantized type)."""
        return self.row_bytes(n) // self.dtype.itemsize


def _kv_type(name: str, dtype) -> KVType:
    info = TYPE_INFO[GGMLType[name.upper()]]
    return KVType(name, np.dtype(dtype), info.block_size, info.block_bytes)


# --cache-type-k/-v name -> its type (f16: IEEE half bits, see engine.half; q8_0/q4_0: ggml blocks)
KV_TYPES: dict[str, KVType] = {t.name: t for t in (_kv_type("f32", np.float32), _kv_type("f16", np.uint16),
                                                   _kv_type("q8_0", np.uint8), _kv_type("q4_0", np.uint8))}
DEFAULT_KV_TYPE = "f16"


def kv_type(name: str, what: str = "--cache-type") -> KVType:
    """The KV cache type of a name; a BadInputError naming the choices otherwise."""
    found = KV_TYPES.get(str(name).lower())
    if found is None:
        raise BadInputError(f"{what}: unknown KV cache type '{name}' (choose one of {', '.join(KV_TYPES)})")
    return found


def check_head_size(kind: KVType, head_dim: int, what: str = "--cache-type") -> None:
    """A BadInputError unless heads of head_dim values split into whole blocks of `kind`."""
    if head_dim % kind.block_size:
        raise BadInputError(f"{what}: KV cache type {kind.name} has blocks of {kind.block_size} values, "
                            f"which do not divide the model's head size {head_dim}")


class KVCache:
    def __init__(self, n_seq: int, slots_per_layer: list[int], n_kv_heads: int, head_dim_k: int,
                 head_dim_v: int, type_k: str = DEFAULT_KV_TYPE, type_v: str = DEFAULT_KV_TYPE):
        self.n_seq = int(n_seq)
        self.slots = list(slots_per_layer)
        self.type_k, self.type_v = type_k, type_v
        kind_k, kind_v = kv_type(type_k, "--cache-type-k"), kv_type(type_v, "--cache-type-v")
        check_head_size(kind_k, head_dim_k, "--cache-type-k")
        check_head_size(kind_v, head_dim_v, "--cache-type-v")
        self.keys = [np.zeros((self.n_seq, n_kv_heads, n, kind_k.row_length(head_dim_k)) if kind_k.quantized
                              else (self.n_seq, n_kv_heads, head_dim_k, n), kind_k.dtype) for n in self.slots]
        self.values = [np.zeros((self.n_seq, n_kv_heads, n, kind_v.row_length(head_dim_v)), kind_v.dtype)
                       for n in self.slots]
        self.keys_by_position = kind_k.quantized  # keys[s, h, slot] is one position's row

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
            if cache.keys_by_position:
                keys[self.index, :, :used] = keys[other.index, :, :used]
            else:
                keys[self.index, :, :, :used] = keys[other.index, :, :, :used]
            values[self.index, :, :used] = values[other.index, :, :used]
        self.history[:n] = other.history[:n]
        self.n_past = n

    def layer(self, il: int) -> tuple[np.ndarray, np.ndarray]:
        """This sequence's (keys, values) of layer il: (Hkv, Dh, n_slots), (Hkv, n_slots, Dv) (of
        bytes for a quantized type, see the module doc)."""
        return self.cache.keys[il][self.index], self.cache.values[il][self.index]

    def __repr__(self) -> str:
        return f"CacheSlot({self.index}, n_past={self.n_past})"
