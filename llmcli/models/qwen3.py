"""Qwen3: NeoX RoPE with RMS-normed queries and keys per head (attn_q_norm / attn_k_norm)."""

from .registry import ArchSpec, register

register(ArchSpec(name="qwen3", rope_style="neox"))
