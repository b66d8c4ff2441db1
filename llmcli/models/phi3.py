"""Phi-3: fused attn_qkv and gate|up (ffn_up holds 2 x n_ff rows: gate first), NeoX RoPE with
LongRoPE factors when present. llama.cpp disables Phi-3's sliding window; so do we."""

from .registry import ArchSpec, register

register(ArchSpec(name="phi3", rope_style="neox"))
