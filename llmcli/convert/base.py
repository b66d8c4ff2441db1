"""What every architecture converter shares: hyperparameters, tensor-name mapping, tokenizer choice.

An architecture module subclasses `ArchConverter`, sets `gguf_arch`, a `TENSOR_NAMES` table and
overrides only what differs (extra hyperparameters, a weight transform, the tokenizer). Adding an
architecture = one module + one `@register("HFArchitectureName")` line (see registry.py).

The generic parts follow llama.cpp's `TextModel`: the same hyperparameter keys in the same order,
the same tensor visiting order (shards sorted, names sorted), the same rules for which tensors stay
F32, so the written file matches `convert_hf_to_gguf.py` byte for byte.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Iterator

import numpy as np

from ..errors import BadInputError, UnsupportedError
from ..vocab import hf as vocab
from .checkpoint import Checkpoint, SourceTensor
from .metadata import KV


@dataclass
class OutputTensor:
    """One tensor of the GGUF, not yet computed.

    `shape` is in numpy order (rows last-but-one, row length last); GGUF stores it reversed.
    `load()` returns the array llama.cpp would hand to its writer: float16 or float32.
    """

    name: str
    shape: tuple[int, ...]
    load: Callable[[], np.ndarray]
    source_bytes: int
    # rows start..stop of the result as a 2-D array (leading axes flattened: a stack of experts'
    # matrices is their rows one after another), for tensors whose transform works row by row:
    # lets the writer stream big matrices in slices instead of holding them whole
    load_rows: Callable[[int, int], np.ndarray] | None = None

    @property
    def gguf_shape(self) -> tuple[int, ...]:
        return tuple(reversed(self.shape))


# HF tensors llama.cpp drops before mapping (buffers saved by old transformers versions).
IGNORED_SUFFIXES = (".attention.masked_bias", ".attention.bias", ".rotary_emb.inv_freq")

# Name prefixes/fragments of multimodal towers a text converter skips (llama.cpp's TextModel filter).
MULTIMODAL_PREFIXES = ("mlp", "vit.", "vpm.", "siglip2.", "conformer.", "merger.", "resampler.",
                       "sound_encoder.", "sound_projection.", "speech_embeddings.")
MULTIMODAL_FRAGMENTS = ("visual.", "vision.", "audio.", "talker.", "vision_", "audio_", "token2wav.",
                        "code2wav.", "projector.", "pre_mm_projector_norm", "image_newline",
                        "view_seperator", "patch_embed", "patch_embedding", "patch_merger.",
                        "patch_merge_mlp.", "model.connector.")

# The usual Hugging Face decoder names (LLaMA and most of its descendants) -> GGUF names.
# `{bid}` is the block number. Architectures add to or replace entries of this table.
COMMON_TENSOR_NAMES: dict[str, str] = {
    "model.embed_tokens": "token_embd",
    "model.norm": "output_norm",
    "lm_head": "output",
    "model.layers.{bid}.input_layernorm": "blk.{bid}.attn_norm",
    "model.layers.{bid}.self_attn.q_proj": "blk.{bid}.attn_q",
    "model.layers.{bid}.self_attn.k_proj": "blk.{bid}.attn_k",
    "model.layers.{bid}.self_attn.v_proj": "blk.{bid}.attn_v",
    "model.layers.{bid}.self_attn.o_proj": "blk.{bid}.attn_output",
    "model.layers.{bid}.post_attention_layernorm": "blk.{bid}.ffn_norm",
    "model.layers.{bid}.mlp.gate_proj": "blk.{bid}.ffn_gate",
    "model.layers.{bid}.mlp.up_proj": "blk.{bid}.ffn_up",
    "model.layers.{bid}.mlp.down_proj": "blk.{bid}.ffn_down",
}


class TensorNameMap:
    """HF tensor name (with .weight/.bias) -> GGUF name, from a `{bid}` template table."""

    def __init__(self, table: dict[str, str]):
        self._exact: dict[str, str] = {}
        self._patterns: list[tuple[re.Pattern, str]] = []
        for hf, gguf in table.items():
            if "{bid}" in hf:
                rx = re.compile(re.escape(hf).replace(r"\{bid\}", r"(?P<bid>\d+)"))
                self._patterns.append((rx, gguf))
            else:
                self._exact[hf] = gguf

    def get(self, name: str) -> str | None:
        for suffix in (".weight", ".bias"):
            if not name.endswith(suffix):
                continue
            base = name[: -len(suffix)]
            if base in self._exact:
                return self._exact[base] + suffix
            for rx, gguf in self._patterns:
                if m := rx.fullmatch(base):
                    return gguf.format(bid=m.group("bid")) + suffix
        return None


def block_id(name: str) -> int | None:
    """llama.cpp's block id: the first all-digit part of the dotted name."""
    return next((int(p) for p in name.split(".") if p.isdecimal()), None)


class ArchConverter:
    """Base converter: subclasses set `gguf_arch` and `TENSOR_NAMES`, override what differs."""

    gguf_arch: ClassVar[str]
    TENSOR_NAMES: ClassVar[dict[str, str]] = COMMON_TENSOR_NAMES
    # config.json `model_type` -> {key: default} for keys transformers' config class fills in when
    # config.json omits them. llama.cpp reads the config through transformers, so a missing
    # head_dim, num_key_value_heads, rope_theta... takes these values there. A callable default
    # receives the config dict (e.g. head_dim = hidden_size // num_attention_heads).
    CONFIG_DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {}

    def __init__(self, ckpt: Checkpoint, *, pre: str | None = None):
        self.ckpt = ckpt
        self.dir: Path = ckpt.dir
        self.pre = pre
        hp = dict(ckpt.config)
        if isinstance(hp.get("text_config"), dict):
            hp = {**hp, **hp["text_config"]}
        self.hp: dict[str, Any] = hp
        self._apply_config_defaults()
        self.block_count = int(self.need("n_layers", "num_hidden_layers", "n_layer", "num_layers"))
        self.name_map = TensorNameMap(self.TENSOR_NAMES)
        self.rope = self._rope_parameters()
        # (arch key, float32 value) pairs llama.cpp writes while collecting tensors, i.e. right after
        # general.architecture (e.g. Phi-3's rope.scaling.attn_factor); filled by plan()
        self.early_keys: list[tuple[str, float]] = []

    # -- config access ------------------------------------------------------------------------

    def _apply_config_defaults(self) -> None:
        defaults = self.CONFIG_DEFAULTS.get(self.hp.get("model_type"), {})
        legacy_rope = any(k in self.hp for k in ("rope_parameters", "rope_scaling", "rope_theta"))
        for key, default in defaults.items():
            if key in self.hp or (key == "rope_theta" and legacy_rope):
                continue
            try:
                self.hp[key] = default(self.hp) if callable(default) else default
            except (KeyError, TypeError, ZeroDivisionError):
                pass  # a derived default whose inputs are missing: `need` reports the input later

    def find(self, *keys: str) -> Any:
        """The first of `keys` present in config.json (or None)."""
        return next((self.hp[k] for k in keys if k in self.hp), None)

    def need(self, *keys: str) -> Any:
        value = self.find(*keys)
        if value is None:
            wanted = f"'{keys[0]}'" if len(keys) == 1 else "one of " + ", ".join(f"'{k}'" for k in keys)
            raise BadInputError(f"{self.ckpt.config_path}: missing key {wanted}")
        return value

    def _rope_parameters(self) -> dict[str, Any]:
        """config's rope_parameters (or v4 rope_scaling), with the global rope keys mirrored in."""
        rope = dict(self.hp.get("rope_parameters", self.hp.get("rope_scaling")) or {})
        theta = self.find("global_rope_theta", "rope_global_theta", "rope_theta_global", "rope_theta",
                          "rotary_emb_base")
        local_theta = self.find("local_rope_theta", "rope_local_theta", "rope_theta_local", "swa_rope_theta",
                                "rope_local_base_freq")
        partial = self.find("partial_rotary_factor", "rope_pct", "rope_percent")
        orig_ctx = self.find("original_max_position_embeddings")
        if "full_attention" not in rope and "sliding_attention" not in rope:
            if local_theta is not None:
                rope["sliding_attention"] = {"rope_theta": local_theta}
            if "rope_theta" not in rope and theta is not None:
                rope["rope_theta"] = theta
            if "rope_type" not in rope and rope.get("type") is not None:
                rope["rope_type"] = rope["type"]
            if "partial_rotary_factor" not in rope and partial is not None:
                rope["partial_rotary_factor"] = partial
            if "original_max_position_embeddings" not in rope and orig_ctx is not None:
                rope["original_max_position_embeddings"] = orig_ctx
        return rope

    @property
    def full_rope(self) -> dict[str, Any]:
        return self.rope.get("full_attention", self.rope)

    @property
    def vocab_size(self) -> int | None:
        return self.hp.get("vocab_size")

    # -- hyperparameters ----------------------------------------------------------------------

    def set_hparams(self, kv: KV, file_type: int) -> None:
        """llama.cpp's generic TextModel hyperparameters, in its order."""
        kv.a_u32("block_count", self.block_count)
        for key, keys in (("context_length", ("max_position_embeddings", "n_ctx", "n_positions", "max_length",
                                               "max_sequence_length", "model_max_length")),
                          ("embedding_length", ("hidden_size", "n_embd", "dim")),
                          ("feed_forward_length", ("prefix_dense_intermediate_size", "dense_intermediate_size",
                                                   "intermediate_size", "n_inner", "hidden_dim")),
                          ("attention.head_count", ("num_attention_heads", "n_head", "n_heads")),
                          ("attention.head_count_kv", ("num_key_value_heads", "n_kv_heads"))):
            if (value := self.find(*keys)) is not None:
                kv.a_u32(key, value)
        if self.hp.get("is_causal") is False:
            kv.a_bool("attention.causal", False)
        self._rope_scaling(kv)
        if (theta := self.full_rope.get("rope_theta")) is not None:
            kv.a_f32("rope.freq_base", theta)
        if (swa_theta := self.rope.get("sliding_attention", {}).get("rope_theta")) is not None:
            kv.a_f32("rope.freq_base_swa", swa_theta)
        if (eps := self.find("rms_norm_eps", "norm_eps")) is not None:
            kv.a_f32("attention.layer_norm_rms_epsilon", eps)
        if (eps := self.find("layer_norm_eps", "layer_norm_epsilon", "norm_epsilon")) is not None:
            kv.a_f32("attention.layer_norm_epsilon", eps)
        if (n := self.find("num_local_experts", "num_experts", "n_routed_experts")) is not None:
            kv.a_u32("expert_count", n)
        if (n := self.find("num_experts_per_tok", "num_experts_per_token", "top_k_experts")) is not None:
            kv.a_u32("expert_used_count", n)
        if (n := self.hp.get("n_group")) is not None:
            kv.a_u32("expert_group_count", n)
        if (n := self.hp.get("topk_group")) is not None:
            kv.a_u32("expert_group_used_count", n)
        if (func := self.find("score_function", "scoring_func", "score_func", "moe_router_activation",
                              "moe_router_activation_func", "expert_selection_fn")) is not None:
            gating = {"softmax": 1, "sigmoid": 2, "sqrtsoftplus": 4}.get(func)
            if gating is None:
                raise UnsupportedError(f"{self.ckpt.config_path}: expert gating function '{func}' is not supported")
            kv.a_u32("expert_gating_func", gating)
        if (head_dim := self.hp.get("head_dim")) is not None:
            kv.a_u32("attention.key_length", head_dim)
            kv.a_u32("attention.value_length", head_dim)
        kv.u32("general.file_type", file_type)

    def _rope_scaling(self, kv: KV) -> None:
        rope = self.full_rope
        rope_type, factor = rope.get("rope_type"), rope.get("factor")
        if rope_type == "linear" and factor is not None:
            kv.string(f"{kv.arch}.rope.scaling.type", "linear")
            kv.a_f32("rope.scaling.factor", factor)
        elif rope_type == "yarn" and factor is not None:
            kv.string(f"{kv.arch}.rope.scaling.type", "yarn")
            kv.a_f32("rope.scaling.factor", factor)
            kv.a_u32("rope.scaling.original_context_length", rope["original_max_position_embeddings"])
            for key, names in (("rope.scaling.yarn_ext_factor", ("extrapolation_factor",)),
                               ("rope.scaling.yarn_attn_factor", ("attention_factor", "attn_factor")),
                               ("rope.scaling.yarn_beta_fast", ("beta_fast",)),
                               ("rope.scaling.yarn_beta_slow", ("beta_slow",))):
                value = next((rope[n] for n in names if rope.get(n) is not None), None)
                if value is not None:
                    kv.a_f32(key, value)
        elif rope_type in ("su", "longrope"):
            kv.string(f"{kv.arch}.rope.scaling.type", "longrope")
        # "default", "dynamic", "llama3" (rope_freqs tensor, not supported here): nothing to write

    # -- tokenizer ----------------------------------------------------------------------------

    def set_vocab(self, kv: KV) -> None:
        """Default: byte-level BPE from tokenizer.json (llama.cpp's TextModel default)."""
        self.bpe_vocab(kv)

    def require_tokenizer(self) -> None:
        if not vocab.has_tokenizer(self.dir):
            raise BadInputError(f"{self.dir}: no tokenizer files (tokenizer.model or tokenizer.json)")

    def bpe_vocab(self, kv: KV) -> None:
        meta = vocab.bpe_vocab(self.dir, self.vocab_size, pre=self.pre)
        kv.extend(meta.entries)
        kv.extend(vocab.special_vocab(self.dir, None, load_merges=True).entries)

    def sentencepiece_vocab(self, kv: KV, added_tokens: str = "llama") -> None:
        meta = vocab.sentencepiece_vocab(self.dir, self.vocab_size, added_tokens=added_tokens)
        kv.string("tokenizer.ggml.model", "llama")
        kv.string("tokenizer.ggml.pre", "default")
        kv.extend(meta.entries)
        kv.extend(vocab.special_vocab(self.dir, meta.n_tokens).entries)

    # -- tensors ------------------------------------------------------------------------------

    def keep(self, name: str) -> str | None:
        """The HF name to convert under, or None to skip the tensor."""
        if name.startswith(MULTIMODAL_PREFIXES) or any(f in name for f in MULTIMODAL_FRAGMENTS):
            return None
        if name.endswith(IGNORED_SUFFIXES):
            return None
        return name.replace("language_model.", "")

    def map_name(self, name: str, src: SourceTensor) -> str:
        gguf = self.name_map.get(name)
        if gguf is None:
            raise UnsupportedError(f"{src.path}: tensor '{src.name}' is not known to the {self.gguf_arch} tensor map")
        return gguf

    def transform(self, name: str, data: np.ndarray) -> np.ndarray:
        """Change a tensor's values on the way (Q/K permutation, norm offsets). Default: none."""
        return data

    def output_shape(self, name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape after `transform` (only differs when a transform cuts rows)."""
        return shape

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """numpy-order shapes config.json implies for the usual tensors (by GGUF base name)."""
        hidden = self.find("hidden_size", "n_embd", "dim")
        n_head = self.find("num_attention_heads", "n_head", "n_heads")
        n_kv = self.find("num_key_value_heads", "n_kv_heads") or n_head
        n_ff = self.find("intermediate_size", "n_inner", "hidden_dim")
        if not all(isinstance(v, int) for v in (hidden, n_head, n_kv)):
            return {}
        head_dim = self.hp.get("head_dim") or hidden // n_head
        shapes = {
            "attn_norm.weight": (hidden,), "ffn_norm.weight": (hidden,), "output_norm.weight": (hidden,),
            "attn_q.weight": (n_head * head_dim, hidden), "attn_k.weight": (n_kv * head_dim, hidden),
            "attn_v.weight": (n_kv * head_dim, hidden), "attn_output.weight": (hidden, n_head * head_dim),
        }
        if isinstance(n_ff, int):
            shapes.update({"ffn_gate.weight": (n_ff, hidden), "ffn_up.weight": (n_ff, hidden),
                           "ffn_down.weight": (hidden, n_ff)})
        return shapes

    def check_shape(self, gguf: str, src: SourceTensor) -> None:
        if not hasattr(self, "_expected_shapes"):
            self._expected_shapes = self.expected_shapes()
        base = gguf.split(".", 2)[2] if gguf.startswith("blk.") else gguf
        expected = self._expected_shapes.get(base)
        if gguf in ("token_embd.weight", "output.weight") and "hidden_size" in self.hp:
            if len(src.shape) != 2 or src.shape[1] != self.hp["hidden_size"]:
                expected = (self.hp.get("vocab_size", src.shape[0]), self.hp["hidden_size"])
        if expected is not None and tuple(src.shape) != tuple(expected):
            raise BadInputError(f"{src.path}: tensor '{src.name}' has shape {list(src.shape)}, "
                                f"config.json implies {list(expected)} (shape mismatch)")

    def tensor_outputs(self, src: SourceTensor, name: str) -> Iterable[OutputTensor]:
        """The GGUF tensors one HF tensor becomes (none while an architecture gathers pieces)."""
        gguf = self.map_name(name, src)
        self.check_shape(gguf, src)

        def load(src=src, name=name) -> np.ndarray:
            return self.transform(name, src.load())

        def load_rows(start: int, stop: int, src=src, name=name) -> np.ndarray:
            return self.transform(name, src.load_rows(start, stop))

        row_wise = len(src.shape) == 2 and self.row_wise(name)
        yield OutputTensor(gguf, self.output_shape(name, src.shape), load, src.n_bytes,
                           load_rows if row_wise else None)

    def row_wise(self, name: str) -> bool:
        """Whether `transform` of a slice of rows equals that slice of `transform` of the whole
        tensor (true for no transform, elementwise changes, cutting trailing rows). Architectures
        whose transform mixes rows (Q/K permutation) say False for those tensors."""
        return True

    def plan(self) -> list[OutputTensor]:
        """Every output tensor in llama.cpp's order, nothing loaded yet."""
        out: list[OutputTensor] = []
        for src in self.ckpt.tensors:
            name = self.keep(src.name)
            if name is None:
                continue
            out.extend(self.tensor_outputs(src, name))
        self.check_plan_complete()
        return out

    def check_plan_complete(self) -> None:
        """Raise if an architecture gathered pieces (experts) that never completed."""


def stacked(parts: list[SourceTensor]) -> tuple[Callable[[], np.ndarray], Callable[[int, int], np.ndarray]]:
    """(load, load_rows) of same-shaped tensors stacked on a new first axis: the whole stack, or
    rows start..stop of it flattened to 2-D, reading only the pieces (and rows) they cover."""
    rows_per_part = int(np.prod(parts[0].shape[:-1], dtype=np.int64))

    def load_rows(start: int, stop: int) -> np.ndarray:
        pieces = []
        for i in range(start // rows_per_part, -(-stop // rows_per_part)):  # the parts rows start..stop touch
            lo, hi = max(start - i * rows_per_part, 0), min(stop - i * rows_per_part, rows_per_part)
            piece = parts[i].load_rows(lo, hi) if len(parts[i].shape) == 2 else \
                parts[i].load().reshape(rows_per_part, -1)[lo:hi]
            pieces.append(piece.reshape(hi - lo, -1))
        return np.concatenate(pieces) if len(pieces) != 1 else pieces[0]

    def load() -> np.ndarray:
        return load_rows(0, len(parts) * rows_per_part).reshape(len(parts), *parts[0].shape)

    return load, load_rows


class ExpertStacks:
    """Mixture-of-experts checkpoints that store one tensor per expert and projection: a layer's
    tensors are held until all n_experts x len(projections) have come, then each projection's are
    written as one tensor stacked on a new first axis (the expert), in `projections` order.
    source / merged: the HF name templates of an expert's tensor ({bid}, {x}: the expert, {p}) and
    of the stacked one ({bid}, {p}), the latter mapped to GGUF by the converter's name table."""

    def __init__(self, conv: "ArchConverter", source: str, merged: str, projections: tuple[str, ...]):
        self.conv, self.source, self.merged, self.projections = conv, source, merged, projections
        self.layers: dict[int, dict[str, SourceTensor]] = {}
        self.n_experts = 0

    def add(self, src: SourceTensor, name: str, bid: int, n_experts: int) -> Iterable[OutputTensor]:
        self.n_experts = n_experts
        layer = self.layers.setdefault(bid, {})
        layer[name] = src
        if len(layer) < n_experts * len(self.projections):
            return
        for p in self.projections:
            try:
                parts = [layer.pop(self.source.format(bid=bid, x=x, p=p)) for x in range(n_experts)]
            except KeyError as e:
                raise BadInputError(f"{self.conv.dir}: expert tensor {e} missing for layer {bid}") from None
            load, load_rows = stacked(parts)
            yield OutputTensor(self.conv.map_name(self.merged.format(bid=bid, p=p), parts[0]),
                               (n_experts, *parts[0].shape), load, sum(part.n_bytes for part in parts),
                               load_rows if len(parts[0].shape) == 2 else None)
        del self.layers[bid]

    def check_complete(self) -> None:
        """A layer whose expert tensors did not all come is an error."""
        for bid, layer in self.layers.items():
            if layer:
                raise BadInputError(f"{self.conv.dir}: layer {bid} has {len(layer)} expert tensors, "
                                    f"expected {len(self.projections) * self.n_experts}")


def iter_blocks(names: Iterable[str]) -> Iterator[int]:
    for n in names:
        if (b := block_id(n)) is not None:
            yield b
