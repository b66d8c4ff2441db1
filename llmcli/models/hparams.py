"""Hyperparameters read from GGUF metadata (`{arch}.*` keys), with llama.cpp's defaults.

The generic part is here; what one architecture does differently (Gemma's sliding-window pattern,
Baichuan-13B's ALiBi, ...) is its module's `configure(hp, meta)` hook.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import FormatError, UnsupportedError
from ..engine.rope import RopeConfig, yarn_attn_factor
from ..gguf.reader import GGUFReader


class Meta:
    """`{arch}.<key>` lookups on a reader, with errors naming the file and key."""

    def __init__(self, reader: GGUFReader, arch: str):
        self.reader, self.arch = reader, arch

    def get(self, key: str, default: Any = None) -> Any:
        return self.reader.get(f"{self.arch}.{key}", default)

    def require(self, key: str) -> Any:
        return self.reader.require(f"{self.arch}.{key}")

    def per_layer(self, key: str, n_layer: int, default: Any = None) -> Any:
        """A value llama.cpp allows as scalar or per-layer array; we need it uniform."""
        value = self.get(key, default)
        if isinstance(value, list):
            if len(set(value)) != 1:
                raise UnsupportedError(f"{self.reader.path}: '{self.arch}.{key}' varies per layer "
                                       f"({value[:8]}...), which is not supported")
            value = value[0]
        return value


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
    n_layer = int(meta.require("block_count"))
    n_embd = int(meta.require("embedding_length"))
    n_head = int(meta.per_layer("attention.head_count", n_layer))
    if n_head is None:
        raise FormatError(f"{reader.path}: required metadata key '{arch}.attention.head_count' is missing")
    n_head_kv = int(meta.per_layer("attention.head_count_kv", n_layer, n_head))
    head_dim = int(meta.get("attention.key_length", n_embd // n_head))
    head_dim_v = int(meta.get("attention.value_length", n_embd // n_head))
    n_ff = int(meta.per_layer("feed_forward_length", n_layer, 0))
    n_ctx_train = int(meta.get("context_length", 2048))
    embd = reader.tensor("token_embd.weight")
    n_vocab = int(embd.shape[1]) if len(embd.shape) > 1 else 0

    rope = _rope_config(meta, head_dim, n_ctx_train)
    hp = HParams(
        arch=arch, n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_head_kv=n_head_kv,
        head_dim=head_dim, head_dim_v=head_dim_v, n_ff=n_ff, n_vocab=n_vocab,
        n_ctx_train=n_ctx_train, rms_eps=float(meta.get("attention.layer_norm_rms_epsilon", 1e-5)),
        rope_style=rope_style, rope=rope,
        rope_swa=RopeConfig(**{**rope.__dict__, "freq_base": 10000.0, "freq_scale": 1.0}),
        rope_scaling=str(meta.get("rope.scaling.type", "linear")),
        attn_scale=1.0 / math.sqrt(head_dim),
        is_swa=[False] * n_layer,
        n_expert=int(meta.get("expert_count", 0)),
        n_expert_used=int(meta.get("expert_used_count", 0)),
        pooling_type=None if meta.get("pooling_type") is None else int(meta.get("pooling_type")),
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
    scaling = str(meta.get("rope.scaling.type", "linear"))
    factor = float(meta.get("rope.scaling.factor", 0.0) or meta.get("rope.scale_linear", 0.0) or 0.0)
    freq_scale = 1.0 / factor if factor else 1.0
    if scaling == "none":
        freq_scale = 1.0
    ext_factor = 1.0 if scaling == "yarn" else 0.0
    rope_attn_factor = float(meta.get("rope.scaling.attn_factor", 1.0))
    attn_factor = yarn_attn_factor(freq_scale, 0.0, rope_attn_factor) if ext_factor else rope_attn_factor
    return RopeConfig(
        n_rot=int(meta.get("rope.dimension_count", head_dim)),
        freq_base=float(meta.get("rope.freq_base", 10000.0)),
        freq_scale=freq_scale,
        ext_factor=ext_factor,
        attn_factor=attn_factor,
        n_ctx_orig=int(meta.get("rope.scaling.original_context_length", n_ctx_train)),
    )


def swa_pattern(hp: HParams, meta: Meta, default_pattern: int, dense_first: bool = False) -> None:
    """Mark sliding-window layers: an explicit per-layer bool array, or every layer except each
    `pattern`-th one (llama.cpp's `set_swa_pattern`)."""
    value = meta.get("attention.sliding_window_pattern")
    if isinstance(value, list):
        hp.is_swa = [bool(v) for v in value[:hp.n_layer]]
        return
    n = int(value) if value is not None else default_pattern
    if dense_first:
        hp.is_swa = [n == 0 or il % n != 0 for il in range(hp.n_layer)]
    else:
        hp.is_swa = [n == 0 or il % n < n - 1 for il in range(hp.n_layer)]
