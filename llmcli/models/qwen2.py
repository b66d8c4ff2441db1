"""Qwen2 (q/k/v biases, NeoX RoPE) and Qwen2-MoE (softmax routing over all experts, top-k not
renormalised, plus a shared expert scaled by sigmoid(x . ffn_gate_inp_shexp))."""

from .registry import ArchSpec, register

register(ArchSpec(name="qwen2", rope_style="neox"))
register(ArchSpec(name="qwen2moe", rope_style="neox", tied_output=False, moe_norm_weights=False))
