"""LLaMA family: LLaMA 1/2/3, Mistral, Yi, ... and Mixtral (the same graph with MoE tensors).

RoPE on adjacent pairs (the converter permutes Q/K rows for it), SiLU-gated FFN, optional
`rope_freqs` (Llama 3 frequency factors). MoE: softmax over all experts, top-k, renormalised.
"""

from .registry import ArchSpec, register

register(ArchSpec(name="llama", rope_style="norm"))
