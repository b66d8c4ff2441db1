"""Gemma 3 text models (GGUF architecture `gemma3`).

What llama.cpp's converter does differently from the generic path:
* Gemma3RMSNorm multiplies by (1 + w): every `*norm.weight` is stored with 1 added, computed in
  the checkpoint's precision (float16 stays float16, bfloat16 is widened to float32 first).
* The embedding is cut to the tokenizer's size (checkpoints pad it with out-of-vocabulary rows).
* Sandwich norms: post_attention_norm / ffn_norm (pre-FFN) / post_ffw_norm, and per-head
  q/k norms.
* Defaults for missing hyperparameters, the SWA RoPE base, `sliding_window` unless every layer is
  global, `add_space_prefix = false` for SentencePiece vocabularies.
"""

from __future__ import annotations

import json

import numpy as np

from ..errors import BadInputError
from .base import COMMON_TENSOR_NAMES, ArchConverter
from .metadata import KV
from .registry import register

GEMMA3_TENSOR_NAMES = {
    **COMMON_TENSOR_NAMES,
    "model.layers.{bid}.post_attention_layernorm": "blk.{bid}.post_attention_norm",
    "model.layers.{bid}.pre_feedforward_layernorm": "blk.{bid}.ffn_norm",
    "model.layers.{bid}.post_feedforward_layernorm": "blk.{bid}.post_ffw_norm",
    "model.layers.{bid}.self_attn.q_norm": "blk.{bid}.attn_q_norm",
    "model.layers.{bid}.self_attn.k_norm": "blk.{bid}.attn_k_norm",
}


# Gemma3ForConditionalGeneration (4B and up, with a vision tower): the text model only, as
# llama.cpp's text conversion does - `language_model.` is dropped from names, vision and projector
# tensors are skipped, text_config is merged over the top-level config. (No reference checkpoint:
# verified only through the shared code paths.)
@register("Gemma3ForCausalLM", "Gemma3ForConditionalGeneration")
class Gemma3Converter(ArchConverter):
    gguf_arch = "gemma3"
    TENSOR_NAMES = GEMMA3_TENSOR_NAMES
    # transformers 5.23 Gemma3TextConfig defaults for keys that change the GGUF
    # (multimodal checkpoints often list only a few text_config keys and rely on all of these)
    CONFIG_DEFAULTS = {"gemma3_text": {"vocab_size": 262208, "hidden_size": 2304, "intermediate_size": 9216,
                                       "num_hidden_layers": 26, "num_attention_heads": 8, "num_key_value_heads": 4,
                                       "head_dim": 256, "max_position_embeddings": 131072, "rms_norm_eps": 1e-6,
                                       "rope_theta": 1e6, "rope_local_base_freq": 10000.0, "sliding_window": 4096}}
    norm_shift = 1.0

    def set_hparams(self, kv: KV, file_type: int) -> None:
        super().set_hparams(kv, file_type)
        hp = self.hp
        kv.a_u32("context_length", hp.get("max_position_embeddings", 131072))
        kv.a_u32("attention.head_count", hp.get("num_attention_heads", 8))
        kv.a_f32("attention.layer_norm_rms_epsilon", hp.get("rms_norm_eps", 1e-6))
        kv.a_u32("attention.key_length", hp.get("head_dim", 256))
        kv.a_u32("attention.value_length", hp.get("head_dim", 256))
        kv.a_f32("rope.freq_base", self.full_rope.get("rope_theta", 1_000_000.0))
        if hp.get("attn_logit_softcapping") is not None:
            raise BadInputError(f"{self.ckpt.config_path}: attn_logit_softcapping is set, Gemma 3 has none")
        if softcap := hp.get("final_logit_softcapping"):
            kv.a_f32("final_logit_softcapping", softcap)
        if hp.get("sliding_window_pattern") != 1:
            kv.a_u32("attention.sliding_window", self.need("sliding_window"))
        kv.a_u32("attention.head_count_kv", hp.get("num_key_value_heads", 4))

    def set_vocab(self, kv: KV) -> None:
        if (self.dir / "tokenizer.model").is_file():
            self.sentencepiece_vocab(kv)
            kv.boolean("tokenizer.ggml.add_space_prefix", False)
        else:
            self.bpe_vocab(kv)

    def n_vocab_real(self) -> int:
        if getattr(self, "_n_vocab_real", None) is None:
            self._n_vocab_real = self._count_vocab()
        return self._n_vocab_real

    def _count_vocab(self) -> int:
        if (self.dir / "tokenizer.model").is_file():
            if (n := self.find("vocab_size_per_layer_input", "vocab_size")) is not None:
                return int(n)
            from sentencepiece import SentencePieceProcessor

            return SentencePieceProcessor(model_file=str(self.dir / "tokenizer.model")).vocab_size()
        path = self.dir / "tokenizer.json"
        try:
            tok = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            raise BadInputError(f"{path}: cannot read the tokenizer to size the embedding") from None
        return len(tok["model"]["vocab"]) + len(tok["added_tokens"])

    def output_shape(self, name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
        if "embed_tokens.weight" in name:
            return (min(shape[0], self.n_vocab_real()), *shape[1:])
        return shape

    def transform(self, name: str, data: np.ndarray) -> np.ndarray:
        if "embed_tokens.weight" in name:
            data = data[: self.n_vocab_real()]
        if self.norm_shift and name.endswith("norm.weight"):
            data = data + data.dtype.type(self.norm_shift)
        return data
