"""Phi-3 / Phi-3.5 mini (GGUF architecture `phi3`).

The checkpoint's fused projections are kept fused, as llama.cpp does: `qkv_proj` -> attn_qkv and
`gate_up_proj` -> ffn_up (gate rows first; the runtime splits them). Long-context variants carry
LongRoPE factor lists, written as `rope_factors_long/short.weight` tensors plus an attention factor.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import BadInputError, UnsupportedError
from .base import COMMON_TENSOR_NAMES, ArchConverter, OutputTensor
from .llama import vocab_config
from .metadata import KV
from .registry import register

PHI3_TENSOR_NAMES = {  # the common names (their q/k/v and gate/up entries match nothing here) + the fused ones
    **COMMON_TENSOR_NAMES,
    "model.layers.{bid}.self_attn.qkv_proj": "blk.{bid}.attn_qkv",
    "model.layers.{bid}.mlp.gate_up_proj": "blk.{bid}.ffn_up",
}


@register("Phi3ForCausalLM")
class Phi3Converter(ArchConverter):
    gguf_arch = "phi3"
    TENSOR_NAMES = PHI3_TENSOR_NAMES
    # transformers 5.23 Phi3Config defaults for keys that change the GGUF
    CONFIG_DEFAULTS = {"phi3": {"num_key_value_heads": lambda hp: hp["num_attention_heads"],
                                "max_position_embeddings": 4096, "original_max_position_embeddings": 4096,
                                "rms_norm_eps": 1e-5, "rope_theta": 10000.0}}

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        shapes = super().expected_shapes()
        if shapes:
            hidden, q_rows = shapes["attn_q.weight"][1], shapes["attn_q.weight"][0]
            kv_rows = shapes["attn_k.weight"][0]
            shapes["attn_qkv.weight"] = (q_rows + 2 * kv_rows, hidden)
            if "ffn_up.weight" in shapes:
                shapes["ffn_up.weight"] = (2 * shapes["ffn_up.weight"][0], hidden)
        return shapes

    def _rope_dims(self) -> int:
        n_embd = self.need("hidden_size", "n_embd")
        n_head = self.need("num_attention_heads", "n_head")
        return int(self.rope.get("partial_rotary_factor", 1.0) * n_embd) // n_head

    def _orig_ctx(self) -> int:
        if "original_max_position_embeddings" not in self.rope:
            raise BadInputError(f"{self.ckpt.config_path}: missing 'original_max_position_embeddings'")
        return self.rope["original_max_position_embeddings"]

    def set_hparams(self, kv: KV, file_type: int) -> None:
        kv.a_u32("context_length", self.need("n_positions", "max_position_embeddings"))
        kv.a_u32("rope.scaling.original_context_length", self._orig_ctx())
        kv.a_u32("embedding_length", self.need("hidden_size", "n_embd"))
        kv.a_u32("feed_forward_length", self.need("intermediate_size"))
        kv.a_u32("block_count", self.block_count)
        kv.a_u32("attention.head_count", self.need("num_attention_heads", "n_head"))
        kv.a_u32("attention.head_count_kv", self.need("num_key_value_heads", "n_head_kv"))
        kv.a_f32("attention.layer_norm_rms_epsilon", self.need("rms_norm_eps"))
        kv.a_u32("rope.dimension_count", self._rope_dims())
        if "rope_theta" not in self.full_rope:
            raise BadInputError(f"{self.ckpt.config_path}: missing 'rope_theta'")
        kv.a_f32("rope.freq_base", self.full_rope["rope_theta"])
        kv.u32("general.file_type", file_type)
        # 0 marks "no sliding window" (llama.cpp tells Phi-4 from Phi-3 by it)
        kv.a_u32("attention.sliding_window", self.hp.get("sliding_window") or 0)

    def set_vocab(self, kv: KV) -> None:
        if vocab_config(self).get("tokenizer_class") == "GPT2Tokenizer":
            self.bpe_vocab(kv)
        else:
            self.sentencepiece_vocab(kv, added_tokens="phi3")

    def plan(self) -> list[OutputTensor]:
        return list(self.rope_factor_tensors()) + super().plan()

    def rope_factor_tensors(self):
        long_factors, short_factors = self.rope.get("long_factor"), self.rope.get("short_factor")
        if not long_factors:
            return
        scale = self.need("n_positions", "max_position_embeddings") / self._orig_ctx()
        kind = str(self.rope.get("rope_type", "")).lower()
        if kind in ("su", "longrope"):
            attn = math.sqrt(1 + math.log(scale) / math.log(self._orig_ctx())) if scale > 1.0 else 1.0
        elif kind == "yarn":
            attn = 0.1 * math.log(scale) + 1.0 if scale > 1.0 else 1.0
        else:
            raise UnsupportedError(f"{self.ckpt.config_path}: rope scaling type '{kind}' is not supported")
        # llama.cpp adds this key while collecting tensors, i.e. right after general.architecture
        self.early_keys.append(("rope.scaling.attn_factor", attn))
        if short_factors is None or len(long_factors) != len(short_factors) or len(long_factors) != self._rope_dims() / 2:
            raise BadInputError(f"{self.ckpt.config_path}: rope long/short factors must both have "
                                f"{self._rope_dims() // 2} entries")
        for name, values in (("rope_factors_long.weight", long_factors), ("rope_factors_short.weight", short_factors)):
            data = np.asarray(values, dtype=np.float32)
            yield OutputTensor(name, data.shape, lambda data=data: data, 0)
