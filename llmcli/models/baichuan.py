"""Baichuan: the LLaMA graph; the 7B (32 layers) uses RoPE, the 13B (40 layers) ALiBi (max bias 8)
instead. llama.cpp applies neither to other depths, and so do we."""

from .hparams import HParams, Meta
from .registry import ArchSpec, register


def _configure(hp: HParams, meta: Meta) -> None:
    if hp.n_layer == 40:
        hp.alibi_max_bias = 8.0
    if hp.n_layer != 32:
        hp.rope_style = "none"


register(ArchSpec(name="baichuan", rope_style="norm", tied_output=False, configure=_configure))
