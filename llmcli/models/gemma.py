"""Gemma 1, 2 and 3: embeddings scaled by sqrt(n_embd), GELU (tanh) gate, NeoX RoPE.

Norm weights are used as stored (the converter already added Gemma's +1).
Gemma 2: post-attention / post-FFN norms, attention and final-logit soft-capping, sliding window on
every other layer (even layers). Gemma 3: QK-norm, sliding window on 5 of every 6 layers with
their own RoPE base (`rope.freq_base_swa`, unscaled), optional final soft-capping.
The 27B models scale queries by 1/sqrt(n_embd / n_head) instead of 1/sqrt(head_dim).
"""

import dataclasses
import math

from .hparams import HParams, Meta, swa_pattern
from .registry import ArchSpec, register

# llama.cpp recognises the 27B models by depth.
_DEPTH_27B = {"gemma2": 46, "gemma3": 62}


def _query_scale(hp: HParams) -> None:
    if hp.n_layer == _DEPTH_27B[hp.arch]:
        hp.attn_scale = 1.0 / math.sqrt(hp.n_embd / hp.n_head)


def _configure_gemma2(hp: HParams, meta: Meta) -> None:
    hp.n_swa = meta.integer("attention.sliding_window", 4096, minimum=0)
    swa_pattern(hp, meta, 2)
    hp.rope_swa = dataclasses.replace(hp.rope, freq_base=meta.number("rope.freq_base_swa", hp.rope.freq_base))
    hp.attn_softcap = meta.number("attn_logit_softcapping", 0.0)
    hp.final_softcap = meta.number("final_logit_softcapping", 0.0)
    _query_scale(hp)


def _configure_gemma3(hp: HParams, meta: Meta) -> None:
    n_swa = meta.integer("attention.sliding_window", 0, minimum=0)
    if n_swa > 0:
        hp.n_swa = n_swa
        swa_pattern(hp, meta, 6)
        hp.rope_swa = dataclasses.replace(hp.rope, freq_scale=1.0,
                                          freq_base=meta.number("rope.freq_base_swa", 10000.0))
    hp.final_softcap = meta.number("final_logit_softcapping", 0.0)
    _query_scale(hp)


register(ArchSpec(name="gemma", rope_style="neox", activation="gelu", embed_scale=True))
register(ArchSpec(name="gemma2", rope_style="neox", activation="gelu", embed_scale=True,
                  configure=_configure_gemma2))
register(ArchSpec(name="gemma3", rope_style="neox", activation="gelu", embed_scale=True,
                  configure=_configure_gemma3))
