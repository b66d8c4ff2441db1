"""Qwen1.5-MoE / Qwen2-MoE (GGUF architecture `qwen2moe`).

Each layer's MLP is a router over routed experts plus one always-on shared expert:

    mlp.gate                    (n_expert, n_embd)     -> ffn_gate_inp        router logits (kept F32)
    mlp.experts.N.{gate,up,down}_proj                  -> ffn_{gate,up,down}_exps, stacked on a new
                                                          first axis: (n_expert, rows, cols)
    mlp.shared_expert.{gate,up,down}_proj              -> ffn_{gate,up,down}_shexp
    mlp.shared_expert_gate      (1, n_embd)            -> ffn_gate_inp_shexp  sigmoid gate of the shared
                                                          expert (kept F32)

The stacked tensors are written where the layer's last expert tensor comes in llama.cpp's visiting
order (sorted names), in the order down, gate, up. Checkpoints saved in transformers' fused in-memory
layout (`mlp.experts.gate_up_proj` (n_expert, 2*n_ff, n_embd) and `mlp.experts.down_proj`) are split
/ mapped the way llama.cpp does. Extra hyperparameters: `expert_feed_forward_length`
(moe_intermediate_size) and `expert_shared_feed_forward_length`, written after the generic ones.
Vocabulary: byte-level BPE (llama.cpp's default for this architecture).
"""

from __future__ import annotations

import re
from typing import Iterable

from ..errors import BadInputError
from .base import COMMON_TENSOR_NAMES, ArchConverter, ExpertStacks, OutputTensor
from .checkpoint import SourceTensor
from .metadata import KV
from .registry import register

QWEN2MOE_TENSOR_NAMES = {
    **COMMON_TENSOR_NAMES,
    "model.layers.{bid}.mlp.gate": "blk.{bid}.ffn_gate_inp",
    "model.layers.{bid}.mlp.experts.gate_proj": "blk.{bid}.ffn_gate_exps",
    "model.layers.{bid}.mlp.experts.up_proj": "blk.{bid}.ffn_up_exps",
    "model.layers.{bid}.mlp.experts.down_proj": "blk.{bid}.ffn_down_exps",
    "model.layers.{bid}.mlp.shared_expert.gate_proj": "blk.{bid}.ffn_gate_shexp",
    "model.layers.{bid}.mlp.shared_expert.up_proj": "blk.{bid}.ffn_up_shexp",
    "model.layers.{bid}.mlp.shared_expert.down_proj": "blk.{bid}.ffn_down_shexp",
    "model.layers.{bid}.mlp.shared_expert_gate": "blk.{bid}.ffn_gate_inp_shexp",
}
_EXPERT = re.compile(r"model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight")
_FUSED = re.compile(r"model\.layers\.(\d+)\.mlp\.experts\.(gate_up_proj|down_proj)(\.weight)?")
STACK_ORDER = ("down_proj", "gate_proj", "up_proj")

# config key -> GGUF key suffix, written after the generic hyperparameters
EXTRA_HPARAMS = (("moe_intermediate_size", "expert_feed_forward_length"),
                 ("shared_expert_intermediate_size", "expert_shared_feed_forward_length"))


@register("Qwen2MoeForCausalLM")
class Qwen2MoeConverter(ArchConverter):
    gguf_arch = "qwen2moe"
    TENSOR_NAMES = QWEN2MOE_TENSOR_NAMES

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._experts = ExpertStacks(self, "model.layers.{bid}.mlp.experts.{x}.{p}.weight",
                                     "model.layers.{bid}.mlp.experts.{p}.weight", STACK_ORDER)

    def set_hparams(self, kv: KV, file_type: int) -> None:
        super().set_hparams(kv, file_type)
        for config_key, gguf_key in EXTRA_HPARAMS:
            if (value := self.hp.get(config_key)) is not None:
                kv.a_u32(gguf_key, value)

    @property
    def n_experts(self) -> int:
        return int(self.need("num_local_experts", "num_experts"))

    def tensor_outputs(self, src: SourceTensor, name: str) -> Iterable[OutputTensor]:
        if m := _FUSED.fullmatch(name):
            yield from self._fused_outputs(src, int(m.group(1)), m.group(2))
            return
        m = _EXPERT.fullmatch(name)
        if m is None:
            yield from super().tensor_outputs(src, name)
            return
        yield from self._experts.add(src, name, int(m.group(1)), self.n_experts)

    def _fused_outputs(self, src: SourceTensor, bid: int, which: str) -> Iterable[OutputTensor]:
        """transformers' fused layout: down_proj (n_expert, n_embd, n_ff) as is, gate_up_proj split."""
        if which == "down_proj":
            merged = f"model.layers.{bid}.mlp.experts.down_proj.weight"
            yield OutputTensor(self.map_name(merged, src), src.shape, src.load, src.n_bytes)
            return
        if len(src.shape) != 3 or src.shape[1] % 2:
            raise BadInputError(f"{src.path}: '{src.name}' has shape {list(src.shape)}, "
                                "expected (n_expert, 2 * n_ff, n_embd)")
        n_ff = src.shape[1] // 2
        for half, proj in ((0, "gate_proj"), (1, "up_proj")):
            merged = f"model.layers.{bid}.mlp.experts.{proj}.weight"

            def load(src=src, half=half):
                return src.load()[:, half * n_ff:(half + 1) * n_ff, :].copy()

            yield OutputTensor(self.map_name(merged, src), (src.shape[0], n_ff, src.shape[2]), load,
                               src.n_bytes // 2)

    def check_plan_complete(self) -> None:
        self._experts.check_complete()
