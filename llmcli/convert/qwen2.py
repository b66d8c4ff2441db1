"""Qwen2 / Qwen2.5 (GGUF architecture `qwen2`): the generic decoder with q/k/v biases.

No Q/K permutation (llama.cpp's qwen2 graph uses NeoX-style RoPE on the HF layout); tied
embeddings simply have no `lm_head` tensor. Tokenizer: SentencePiece if tokenizer.model exists,
else byte-level BPE (the usual case).
"""

from __future__ import annotations

from .base import ArchConverter
from .metadata import KV
from .registry import register


@register("Qwen2ForCausalLM", "Qwen2Model")
class Qwen2Converter(ArchConverter):
    gguf_arch = "qwen2"
    # transformers 5.23 Qwen2Config defaults for keys that change the GGUF
    CONFIG_DEFAULTS = {"qwen2": {"num_key_value_heads": 32, "max_position_embeddings": 32768,
                                 "rms_norm_eps": 1e-6, "rope_theta": 10000.0}}

    def keep(self, name: str) -> str | None:
        name = super().keep(name)
        if name is not None and self.ckpt.architecture == "Qwen2Model":
            name = f"model.{name}"  # bare Qwen2Model checkpoints lack the prefix
        return name

    def set_vocab(self, kv: KV) -> None:
        if (self.dir / "tokenizer.model").is_file():
            self.sentencepiece_vocab(kv)
        else:
            self.bpe_vocab(kv)
