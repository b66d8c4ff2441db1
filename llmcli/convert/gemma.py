"""Gemma 1 and Gemma 2 (GGUF architectures `gemma`, `gemma2`).

What llama.cpp's converter does for them, beyond the generic tensor path:
* GemmaRMSNorm multiplies by (1 + w): every `*norm.weight` is stored with 1 added (in the
  checkpoint's precision, like Gemma 3).
* The output matrix is the embedding (tied); a stray `lm_head.weight` is dropped.
* Their own hyperparameter list, in their own order, which (unlike the generic one) has no RoPE
  base: llama.cpp uses its default 10000. Head size comes from `head_dim` (Gemma-7B: 256 with
  hidden 3072 and 16 heads, so q_proj is wider than the hidden state).
* Gemma 2 adds `attn_logit_softcapping`, `final_logit_softcapping` and `attention.sliding_window`.
  `query_pre_attn_scalar` is NOT written: llama.cpp scales queries by 1/sqrt(head_dim) for every
  Gemma 2 but the 27B (layer count 46), where it uses 1/sqrt(hidden / heads).
* SentencePiece vocabulary, `add_space_prefix = false`. Gemma 1 also sets the CodeGemma EOT id (107)
  unless the tokenizer files name one (llama.cpp also sets FIM prefix/suffix/middle/fsep ids, but
  its GGUF writer has no keys for them, so nothing is written).
"""

from __future__ import annotations

import numpy as np

from ..vocab import hf as vocab
from .base import COMMON_TENSOR_NAMES, ArchConverter
from .metadata import KV
from .registry import register

GEMMA2_TENSOR_NAMES = {
    **COMMON_TENSOR_NAMES,
    "model.layers.{bid}.post_attention_layernorm": "blk.{bid}.post_attention_norm",
    "model.layers.{bid}.pre_feedforward_layernorm": "blk.{bid}.ffn_norm",
    "model.layers.{bid}.post_feedforward_layernorm": "blk.{bid}.post_ffw_norm",
}

# CodeGemma's end-of-turn id, set by llama.cpp's Gemma 1 converter for every Gemma 1 model
CODEGEMMA_EOT_ID = 107
CODEGEMMA_SPECIAL_TYPES = ("prefix", "suffix", "middle", "fsep", "eot")

# (GGUF key suffix, config keys), in llama.cpp's order; written only by this table (no generic list)
GEMMA_HPARAMS = (
    ("context_length", ("max_position_embeddings",)),
    ("embedding_length", ("hidden_size",)),
    ("block_count", None),
    ("feed_forward_length", ("intermediate_size",)),
    ("attention.head_count", ("num_attention_heads",)),
    ("attention.head_count_kv", ("num_key_value_heads", "num_attention_heads")),
    ("attention.layer_norm_rms_epsilon", ("rms_norm_eps",)),
    ("attention.key_length", ("head_dim",)),
    ("attention.value_length", ("head_dim",)),
)
GEMMA2_EXTRA_HPARAMS = (
    ("attn_logit_softcapping", "attn_logit_softcapping", "f32"),
    ("final_logit_softcapping", "final_logit_softcapping", "f32"),
    ("attention.sliding_window", "sliding_window", "u32"),
)


@register("GemmaForCausalLM")
class GemmaConverter(ArchConverter):
    gguf_arch = "gemma"

    def set_hparams(self, kv: KV, file_type: int) -> None:
        for key, config_keys in GEMMA_HPARAMS:
            value = self.block_count if config_keys is None else self.need(*config_keys)
            if key == "attention.layer_norm_rms_epsilon":
                kv.a_f32(key, value)
            else:
                kv.a_u32(key, value)
        kv.u32("general.file_type", file_type)

    def set_vocab(self, kv: KV) -> None:
        self.sentencepiece_vocab(kv)
        self.codegemma_specials(kv)
        kv.boolean("tokenizer.ggml.add_space_prefix", False)

    def codegemma_specials(self, kv: KV) -> None:
        entries = vocab.special_vocab(self.dir, None, special_types=CODEGEMMA_SPECIAL_TYPES).entries
        ids = {k: v for k, v in entries.items() if k.endswith("_token_id")}
        rest = {k: v for k, v in entries.items() if k not in ids}
        kv.extend(ids)
        if "tokenizer.ggml.eot_token_id" not in ids:
            kv.u32("tokenizer.ggml.eot_token_id", CODEGEMMA_EOT_ID)
        rest.pop("tokenizer.chat_template", None)  # llama.cpp clears it: written once already
        kv.extend(rest)

    def keep(self, name: str) -> str | None:
        name = super().keep(name)
        return None if name == "lm_head.weight" else name

    def transform(self, name: str, data: np.ndarray) -> np.ndarray:
        if name.endswith("norm.weight"):
            data = data + data.dtype.type(1)
        return data


@register("Gemma2ForCausalLM")
class Gemma2Converter(GemmaConverter):
    gguf_arch = "gemma2"
    TENSOR_NAMES = GEMMA2_TENSOR_NAMES

    def set_hparams(self, kv: KV, file_type: int) -> None:
        super().set_hparams(kv, file_type)
        for key, config_key, kind in GEMMA2_EXTRA_HPARAMS:
            value = self.need(config_key)
            kv.a_f32(key, value) if kind == "f32" else kv.a_u32(key, value)

    def set_vocab(self, kv: KV) -> None:
        self.sentencepiece_vocab(kv)
        kv.boolean("tokenizer.ggml.add_space_prefix", False)
