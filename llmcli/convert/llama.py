"""LLaMA family: Llama 1/2/3, Mistral, Mixtral (GGUF architecture `llama`).

What llama.cpp's converter does beyond the generic path:
* Q and K projection rows are permuted from Hugging Face's rotate-half RoPE layout back to the
  interleaved (GPT-J style) pairs the original checkpoints used, per head:
      rows of one head [x0 .. x(d/2-1) | y0 .. y(d/2-1)]  ->  [x0 y0 x1 y1 ...]
* Mixtral's per-expert w1/w2/w3 matrices are stacked into one 3-D tensor per layer
  (ffn_gate_exps / ffn_down_exps / ffn_up_exps, shape n_expert x rows x cols).
* Llama 3.1-style `rope_type: llama3` adds a `rope_freqs.weight` tensor of per-dimension factors.
* `vocab_size` and `rope.dimension_count` are written; the tokenizer is SentencePiece when
  tokenizer.model exists, byte-level BPE otherwise.
"""

from __future__ import annotations

import json
import math
import re
from typing import Iterable

import numpy as np

from ..errors import BadInputError
from ..vocab import hf as vocab
from .base import COMMON_TENSOR_NAMES, ArchConverter, ExpertStacks, OutputTensor
from .checkpoint import SourceTensor
from .metadata import KV
from .registry import register

LLAMA_TENSOR_NAMES = {
    **COMMON_TENSOR_NAMES,
    "model.layers.{bid}.block_sparse_moe.gate": "blk.{bid}.ffn_gate_inp",
    "layers.{bid}.feed_forward.experts.w1": "blk.{bid}.ffn_gate_exps",
    "layers.{bid}.feed_forward.experts.w2": "blk.{bid}.ffn_down_exps",
    "layers.{bid}.feed_forward.experts.w3": "blk.{bid}.ffn_up_exps",
}
_EXPERT = re.compile(r"model\.layers\.(\d+)\.block_sparse_moe\.experts\.(\d+)\.(w[123])\.weight")


def permute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """Per head, interleave the two halves of the rows (see module docstring)."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2)
            .reshape(w.shape))


def _heads(hp: dict) -> int:
    return hp["num_attention_heads"]


def _head_dim(hp: dict) -> int:
    return hp["hidden_size"] // hp["num_attention_heads"]


# What transformers 5.23's LlamaConfig / MistralConfig / MixtralConfig fill in (checked with
# AutoConfig on minimal config.json files); only keys that change the GGUF.
LLAMA_CONFIG_DEFAULTS = {
    "llama": {"num_key_value_heads": _heads, "max_position_embeddings": 2048, "rms_norm_eps": 1e-6,
              "rope_theta": 10000.0, "head_dim": _head_dim},
    "mistral": {"num_key_value_heads": 8, "head_dim": _head_dim, "max_position_embeddings": 131072,
                "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "sliding_window": 4096},
    "mixtral": {"num_key_value_heads": 8, "max_position_embeddings": 131072, "rms_norm_eps": 1e-5,
                "rope_theta": 1e6, "num_experts_per_tok": 2, "num_local_experts": 8},
}


@register("LlamaForCausalLM", "LLaMAForCausalLM", "MistralForCausalLM", "MixtralForCausalLM")
class LlamaConverter(ArchConverter):
    gguf_arch = "llama"
    TENSOR_NAMES = LLAMA_TENSOR_NAMES
    CONFIG_DEFAULTS = LLAMA_CONFIG_DEFAULTS
    permute_qk = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._experts = ExpertStacks(self, "model.layers.{bid}.block_sparse_moe.experts.{x}.{p}.weight",
                                     "layers.{bid}.feed_forward.experts.{p}.weight", ("w1", "w2", "w3"))

    def set_hparams(self, kv: KV, file_type: int) -> None:
        super().set_hparams(kv, file_type)
        kv.a_u32("vocab_size", self.need("vocab_size"))
        head_dim = self.hp.get("head_dim")
        if head_dim is None:
            head_dim = self.need("hidden_size") // self.need("num_attention_heads")
        kv.a_u32("rope.dimension_count", head_dim)

    def set_vocab(self, kv: KV) -> None:
        config = vocab_config(self)
        if (prefix := config.get("add_prefix_space")) is not None:
            kv.boolean("tokenizer.ggml.add_space_prefix", prefix)
        if (self.dir / "tokenizer.model").is_file():
            self.sentencepiece_vocab(kv)
        elif self._llama_style_json():
            meta = vocab.llama_hf_vocab(self.dir)
            kv.string("tokenizer.ggml.model", "llama")
            kv.string("tokenizer.ggml.pre", "default")
            kv.extend(meta.entries)
            kv.extend(vocab.special_vocab(self.dir, meta.n_tokens).entries)
        else:
            self.bpe_vocab(kv)
        if self.hp.get("vocab_size", 32000) == 49152:  # granite small models
            kv.boolean("tokenizer.ggml.add_bos_token", False)

    def _llama_style_json(self) -> bool:
        """tokenizer.json converted from SentencePiece (llama.cpp's LlamaHfVocab path)."""
        path = self.dir / "tokenizer.json"
        if not path.is_file():
            return False
        try:
            return vocab.is_llama_style_bpe(json.loads(path.read_text(encoding="utf-8")))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return False  # bpe_vocab reports the broken file

    def row_wise(self, name: str) -> bool:
        return not (self.permute_qk and name.endswith(("q_proj.weight", "q_proj.bias", "k_proj.weight", "k_proj.bias")))

    def transform(self, name: str, data: np.ndarray) -> np.ndarray:
        if self.permute_qk:
            n_head = self.need("n_heads", "num_attention_heads")
            if name.endswith(("q_proj.weight", "q_proj.bias")):
                return permute_rows(data, n_head)
            if name.endswith(("k_proj.weight", "k_proj.bias")):
                return permute_rows(data, self.need("n_kv_heads", "num_key_value_heads"))
        return data

    def tensor_outputs(self, src: SourceTensor, name: str) -> Iterable[OutputTensor]:
        m = _EXPERT.fullmatch(name)
        if m is None:
            yield from super().tensor_outputs(src, name)
            return
        yield from self._experts.add(src, name, int(m.group(1)), int(self.need("num_local_experts")))

    def check_plan_complete(self) -> None:
        self._experts.check_complete()

    def plan(self) -> list[OutputTensor]:
        extra = list(self.rope_freqs())
        return extra + super().plan()

    def rope_freqs(self) -> Iterable[OutputTensor]:
        """Llama 3.1 RoPE scaling: per-frequency factors stored as a tensor (computed in float32)."""
        rope = self.full_rope
        if not rope or str(rope.get("rope_type", "")).lower() != "llama3":
            return
        base = rope.get("rope_theta", 10000.0)
        dim = self.hp.get("head_dim") or self.need("hidden_size") // self.need("num_attention_heads")
        factor = rope.get("factor", 8.0)
        low, high = rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
        old_ctx = rope.get("original_max_position_embeddings", 8192)
        freqs = np.float32(base) ** (np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim))
        freqs = np.float32(1.0) / freqs
        factors = []
        for f in freqs:
            wavelen = np.float32(2 * math.pi) / f
            if wavelen < old_ctx / high:
                factors.append(1.0)
            elif wavelen > old_ctx / low:
                factors.append(factor)
            else:
                smooth = (np.float32(old_ctx) / wavelen - np.float32(low)) / np.float32(high - low)
                factors.append(np.float32(1) / ((np.float32(1) - smooth) / np.float32(factor) + smooth))
        data = np.asarray(factors, dtype=np.float32)
        yield OutputTensor("rope_freqs.weight", data.shape, lambda: data, 0)


def vocab_config(conv: ArchConverter) -> dict:
    path = conv.dir / "tokenizer_config.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BadInputError(f"{path}: not valid JSON") from None
