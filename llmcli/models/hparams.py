"""Hyperparameters read from GGUF metadata (`{arch}.*` keys), with llama.cpp's defaults.

The generic part is here; what one architecture does differently (Gemma's sliding-window pattern,
Baichuan-13B's ALiBi, ...) is its module's `configure(hp, meta)` hook.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import FormatError, UnsupportedError
from ..engine.rope import RopeConfig, yarn_attn_factor
from ..gguf.constants import ValueType
from ..gguf.reader import GGUFReader, MetadataValue


_INTEGER_TYPES = frozenset({ValueType.UINT8, ValueType.INT8, ValueType.UINT16, ValueType.INT16,
                            ValueType.UINT32, ValueType.INT32, ValueType.UINT64, ValueType.INT64})
_NUMBER_TYPES = _INTEGER_TYPES | {ValueType.FLOAT32, ValueType.FLOAT64}


class Meta:
    """`{arch}.<key>` lookups on a reader, with errors naming the file and key.

    The typed readers (`integer`, `number`, `text`) check the stored GGUF type, so a missing or
    mistyped hyperparameter is a one-line `FormatError`, never a traceback from `int(None)`.
    """

    def __init__(self, reader: GGUFReader, arch: str):
        self.reader, self.arch = reader, arch

    def get(self, key: str, default: Any = None) -> Any:
        return self.reader.get(f"{self.arch}.{key}", default)

    def require(self, key: str) -> Any:
        return self.reader.require(f"{self.arch}.{key}")

    def _fail(self, key: str, what: str) -> FormatError:
        return FormatError(f"{self.reader.path}: metadata key '{self.arch}.{key}' {what}")

    def _value(self, key: str, default: Any, types: frozenset, kind: str) -> tuple[Any, bool]:
        """(value, found); a missing key without a default is an error."""
        mv = self.reader.metadata.get(f"{self.arch}.{key}")
        if mv is None:
            if default is _REQUIRED:
                raise self._fail(key, "is missing (required)")
            return default, False
        if mv.type not in types:
            raise self._fail(key, f"must be {kind}, not {_describe(mv)}")
        return mv.value, True

    def integer(self, key: str, default: Any = None, minimum: int | None = None) -> Any:
        """An integer hyperparameter; `default=REQUIRED` when the file must have it."""
        value, found = self._value(key, default, _INTEGER_TYPES, "an integer")
        if found:
            value = int(value)
            if minimum is not None and value < minimum:
                raise self._fail(key, f"is {value}, must be at least {minimum}")
        return value

    def number(self, key: str, default: Any = None) -> Any:
        value, found = self._value(key, default, _NUMBER_TYPES, "a number")
        if found:
            value = float(value)
            if not math.isfinite(value):
                raise self._fail(key, f"is {value}, must be finite")
        return value

    def text(self, key: str, default: Any = None) -> Any:
        value, _ = self._value(key, default, frozenset({ValueType.STRING}), "a string")
        return value

    def per_layer(self, key: str, n_layer: int, default: Any = None, minimum: int | None = None) -> Any:
        """An integer llama.cpp allows as a scalar or a per-layer array; we need it uniform."""
        full = f"{self.arch}.{key}"
        mv = self.reader.metadata.get(full)
        if mv is None or mv.type != ValueType.ARRAY:
            return self.integer(key, default, minimum)
        if mv.item_type not in _INTEGER_TYPES:
            raise self._fail(key, f"must be an integer or an array of integers, not {_describe(mv)}")
        values = [int(v) for v in mv.value]
        if len(values) != n_layer:
            raise self._fail(key, f"has {len(values)} per-layer values for {n_layer} layers")
        if len(set(values)) != 1:
            raise UnsupportedError(f"{self.reader.path}: '{full}' varies per layer "
                                   f"({values[:8]}...), which is not supported")
        value = values[0]
        if minimum is not None and value < minimum:
            raise self._fail(key, f"is {value}, must be at least {minimum}")
        return value


_REQUIRED = object()
REQUIRED = _REQUIRED  # pass as `default` to Meta's typed readers: the key must be present


def _describe(mv: MetadataValue) -> str:
    """'STRING ('abc')', 'ARRAY of FLOAT32': what a mistyped value is, kept short."""
    if mv.type == ValueType.ARRAY:
        return f"an array of {mv.item_type.name if mv.item_type is not None else '?'}"
    shown = repr(mv.value)
    return f"{mv.type.name} ({shown[:40] + '...' if len(shown) > 40 else shown})"


@dataclass
class HParams:
    arch: str
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim: int        # key/query head size (`attention.key_length`)
    head_dim_v: int
    n_ff: int
    n_vocab: int
    n_ctx_train: int
    rms_eps: float
    rope_style: str      # "norm", "neox" or "none"
    rope: RopeConfig
    rope_swa: RopeConfig
    rope_scaling: str    # none, linear, yarn, longrope
    attn_scale: float
    n_swa: int = 0
    is_swa: list[bool] = field(default_factory=list)
    attn_softcap: float = 0.0
    final_softcap: float = 0.0
    alibi_max_bias: float = 0.0
    n_expert: int = 0
    n_expert_used: int = 0
    expert_weights_norm: bool = False
    expert_weights_scale: float = 0.0
    embed_scale: float = 1.0
    # `{arch}.pooling_type`, llama.cpp's enum (0 none, 1 mean, 2 cls, 3 last, 4 rank); None: not given
    pooling_type: int | None = None

    @property
    def n_rot(self) -> int:
        return self.rope.n_rot

    def alibi_slopes(self) -> np.ndarray:
        """Per-head ALiBi slopes as ggml computes them (zeros when ALiBi is off)."""
        if self.alibi_max_bias <= 0:
            return np.zeros(self.n_head, dtype=np.float32)
        n_log2 = 2 ** int(math.floor(math.log2(self.n_head)))
        m0 = 2.0 ** (-self.alibi_max_bias / n_log2)
        m1 = 2.0 ** (-(self.alibi_max_bias / 2.0) / n_log2)
        slopes = [m0 ** (h + 1) if h < n_log2 else m1 ** (2 * (h - n_log2) + 1)
                  for h in range(self.n_head)]
        return np.array(slopes, dtype=np.float32)


def read_hparams(reader: GGUFReader, arch: str, rope_style: str) -> tuple[HParams, Meta]:
    meta = Meta(reader, arch)
    n_layer = meta.integer("block_count", REQUIRED, minimum=1)
    n_embd = meta.integer("embedding_length", REQUIRED, minimum=1)
    n_head = meta.per_layer("attention.head_count", n_layer, REQUIRED, minimum=1)
    n_head_kv = meta.per_layer("attention.head_count_kv", n_layer, n_head, minimum=1)
    head_dim = meta.integer("attention.key_length", n_embd // n_head, minimum=1)
    head_dim_v = meta.integer("attention.value_length", n_embd // n_head, minimum=1)
    if head_dim < 1 or head_dim_v < 1:
        raise FormatError(f"{reader.path}: '{arch}.embedding_length' {n_embd} is smaller than "
                          f"'{arch}.attention.head_count' {n_head} (and no '{arch}.attention.key_length')")
    n_ff = meta.per_layer("feed_forward_length", n_layer, 0, minimum=0)
    n_ctx_train = meta.integer("context_length", 2048, minimum=1)
    embd = reader.tensor("token_embd.weight")
    n_vocab = int(embd.shape[1]) if len(embd.shape) > 1 else 0

    rope = _rope_config(meta, head_dim, n_ctx_train)
    hp = HParams(
        arch=arch, n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_head_kv=n_head_kv,
        head_dim=head_dim, head_dim_v=head_dim_v, n_ff=n_ff, n_vocab=n_vocab,
        n_ctx_train=n_ctx_train, rms_eps=meta.number("attention.layer_norm_rms_epsilon", 1e-5),
        rope_style=rope_style, rope=rope,
        rope_swa=dataclasses.replace(rope, freq_base=10000.0, freq_scale=1.0),
        rope_scaling=meta.text("rope.scaling.type", "linear"),
        attn_scale=1.0 / math.sqrt(head_dim),
        is_swa=[False] * n_layer,
        n_expert=meta.integer("expert_count", 0, minimum=0),
        n_expert_used=meta.integer("expert_used_count", 0, minimum=0),
        pooling_type=meta.integer("pooling_type", None, minimum=0),
    )
    if n_head % n_head_kv:
        raise FormatError(f"{reader.path}: {n_head} attention heads are not a multiple of "
                          f"{n_head_kv} key/value heads")
    return hp, meta


def _rope_config(meta: Meta, head_dim: int, n_ctx_train: int) -> RopeConfig:
    """Global RoPE parameters the way llama.cpp's context derives them from the metadata.

    For the architectures here llama.cpp reads only the scaling type, factor, attention factor and
    original context; YaRN's beta/ext/attn/log-multiplier keys (read by DeepSeek, Grok, ...) are
    ignored and their defaults used, so we ignore them too.
    """
    scaling = meta.text("rope.scaling.type", "linear")
    factor = meta.number("rope.scaling.factor", 0.0) or meta.number("rope.scale_linear", 0.0) or 0.0
    freq_scale = 1.0 / factor if factor else 1.0
    if scaling == "none":
        freq_scale = 1.0
    ext_factor = 1.0 if scaling == "yarn" else 0.0
    rope_attn_factor = meta.number("rope.scaling.attn_factor", 1.0)
    attn_factor = yarn_attn_factor(freq_scale, 0.0, rope_attn_factor) if ext_factor else rope_attn_factor
    return RopeConfig(
        n_rot=meta.integer("rope.dimension_count", head_dim, minimum=0),
        freq_base=meta.number("rope.freq_base", 10000.0),
        freq_scale=freq_scale,
        ext_factor=ext_factor,
        attn_factor=attn_factor,
        n_ctx_orig=meta.integer("rope.scaling.original_context_length", n_ctx_train, minimum=0),
    )


def swa_pattern(hp: HParams, meta: Meta, default_pattern: int, dense_first: bool = False) -> None:
    """Mark sliding-window layers: an explicit per-layer bool array, or every layer except each
    `pattern`-th one (llama.cpp's `set_swa_pattern`)."""
    key = "attention.sliding_window_pattern"
    mv = meta.reader.metadata.get(f"{meta.arch}.{key}")
    if mv is not None and mv.type == ValueType.ARRAY:
        if mv.item_type not in _INTEGER_TYPES | {ValueType.BOOL}:
            raise meta._fail(key, f"must be an integer or an array of booleans, not {_describe(mv)}")
        hp.is_swa = [bool(v) for v in mv.to_python()[:hp.n_layer]]
        return
    n = meta.integer(key, default_pattern, minimum=0)
    if dense_first:
        hp.is_swa = [n == 0 or il % n != 0 for il in range(hp.n_layer)]
    else:
        hp.is_swa = [n == 0 or il % n < n - 1 for il in range(hp.n_layer)]
