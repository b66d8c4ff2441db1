"""Baichuan / Baichuan 2 (GGUF architecture `baichuan`).

The checkpoints are LLaMA with one fused attention input projection per layer:

    self_attn.W_pack.weight   (3 * n_embd, n_embd)   rows: [ q | k | v ], equal thirds
        q third -> blk.N.attn_q   rows permuted per head (rotate-half -> interleaved, as for LLaMA)
        k third -> blk.N.attn_k   rows permuted per head
        v third -> blk.N.attn_v   as is

llama.cpp's converter splits W_pack in equal thirds (so only multi-head attention checkpoints,
n_kv_head == n_head, convert correctly) and permutes K with llama.cpp's `n_head // n_kv_head` head
count when a config sets num_key_value_heads != num_attention_heads; we do the same, but refuse a
W_pack that is not (3 * hidden_size, hidden_size), from which llama.cpp would write a broken model.
Extra keys: `tensor_data_layout = "Meta AI original pth"` and `rope.dimension_count` = hidden / heads.
Vocabulary: SentencePiece.

Note: llama.cpp's converter at commit 0c1e570 crashes on every Baichuan checkpoint (its tensor hook
calls itself instead of the base class); our output matches what it writes with that one line fixed
(see scripts/make_arch_references.py).
"""

from __future__ import annotations

import re
from typing import Iterable

import numpy as np

from ..errors import BadInputError
from .base import ArchConverter, OutputTensor
from .checkpoint import SourceTensor
from .llama import permute_rows
from .metadata import KV
from .registry import register

_W_PACK = re.compile(r"model\.layers\.(\d+)\.self_attn\.W_pack\.weight")
# third of W_pack -> (GGUF tensor, permute its rows?)
W_PACK_PARTS = (("attn_q", True), ("attn_k", True), ("attn_v", False))


@register("BaichuanForCausalLM", "BaiChuanForCausalLM")
class BaichuanConverter(ArchConverter):
    gguf_arch = "baichuan"

    def set_hparams(self, kv: KV, file_type: int) -> None:
        super().set_hparams(kv, file_type)
        kv.string(f"{kv.arch}.tensor_data_layout", "Meta AI original pth")
        kv.a_u32("rope.dimension_count", self.need("hidden_size") // self.need("num_attention_heads"))

    def set_vocab(self, kv: KV) -> None:
        self.sentencepiece_vocab(kv)

    def _head_counts(self) -> tuple[int, int]:
        """Heads used to permute the q and k thirds (llama.cpp's rule, see module docstring)."""
        n_head = int(self.need("num_attention_heads"))
        n_kv = int(self.hp.get("num_key_value_heads", n_head))
        return n_head, (n_head // n_kv if n_kv != n_head else n_head)

    def tensor_outputs(self, src: SourceTensor, name: str) -> Iterable[OutputTensor]:
        m = _W_PACK.fullmatch(name)
        if m is None:
            yield from super().tensor_outputs(src, name)
            return
        bid = int(m.group(1))
        n_embd = int(self.need("hidden_size"))
        if src.shape != (3 * n_embd, n_embd):
            # llama.cpp would cut equal thirds anyway and write a broken model
            raise BadInputError(f"{src.path}: '{src.name}' has shape {list(src.shape)}, expected "
                                f"[{3 * n_embd}, {n_embd}] (q, k, v of hidden_size {n_embd} stacked)")
        third = n_embd
        heads = self._head_counts()
        for part, (gguf, permute) in enumerate(W_PACK_PARTS):

            def load(part=part, permute=permute) -> np.ndarray:
                rows = src.load()[part * third:(part + 1) * third]
                return permute_rows(rows, heads[part]) if permute else rows.copy()

            yield OutputTensor(f"blk.{bid}.{gguf}.weight", (third, *src.shape[1:]), load, src.n_bytes // 3)
