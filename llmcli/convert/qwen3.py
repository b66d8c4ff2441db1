"""Qwen3 (GGUF architecture `qwen3`): Qwen2's converter plus per-head q/k RMSNorms, no biases.

Qwen3 checkpoints give `head_dim` explicitly (often != hidden_size / heads, e.g. 128 with 1024 / 16),
which the generic path writes as `attention.key_length` / `value_length`. Like Qwen2, no Q/K
permutation (llama.cpp runs NeoX-style RoPE on the HF layout). Not handled: llama.cpp's Qwen3
reranker variant (a `cls.output` head cut from the yes/no rows of the output matrix).
"""

from __future__ import annotations

from .base import COMMON_TENSOR_NAMES
from .qwen2 import Qwen2Converter
from .registry import register

QWEN3_TENSOR_NAMES = {
    **COMMON_TENSOR_NAMES,
    "model.layers.{bid}.self_attn.q_norm": "blk.{bid}.attn_q_norm",
    "model.layers.{bid}.self_attn.k_norm": "blk.{bid}.attn_k_norm",
}


@register("Qwen3ForCausalLM")
class Qwen3Converter(Qwen2Converter):
    gguf_arch = "qwen3"
    TENSOR_NAMES = QWEN3_TENSOR_NAMES
