"""llama-quantize's per-tensor type policy: which ggml type every tensor gets for a TYPE like Q4_K_M.

The rules follow llama.cpp's `src/llama-quant.cpp` at commit 0c1e570 (`tensor_allows_quantization`,
`llama_tensor_get_type`, `llama_tensor_get_type_impl`, `tensor_type_fallback`), re-expressed as data:

1. Is the tensor quantized at all?  (`allows_quantization`: 2-D+ tensors whose name ends in "weight",
   minus a table of names that stay as they are - norms, MoE routers, position embeddings, ...)
2. Explicit choices win: --token-embedding-type, --output-tensor-type, then --tensor-type REGEX=TYPE.
3. Otherwise, unless --pure, the mix's rules may move a tensor off the base type (e.g. Q4_K_M gives
   attn_v/ffn_down Q6_K in some layers). The rules are ordered tables per tensor category; the first
   rule whose file types and condition match decides, exactly like the C++ if/else-if chains.
4. A row length the chosen block size does not divide falls back to a 32-block type, or F16.

The planner is stateful on purpose: llama.cpp counts attn_v / ffn_down / ffn_gate / ffn_up tensors as
it meets them (`i_attention_wv`, `i_ffn_down`, ...) and some rules depend on that count, so tensors
must be fed in llama-quantize's order (`llama_tensor_order`) and each exactly once.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

from ..errors import BadInputError, UnsupportedError
from ..gguf.constants import TYPE_BY_NAME, TYPE_INFO, FileType, GGMLType
from .registry import quantizable_types

# --------------------------------------------------------------------------------------------------
# The TYPE argument: llama-quantize's QUANT_OPTIONS (name -> file type), and each file type's base type
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mix:
    """One llama-quantize TYPE: the `general.file_type` it writes and its default tensor type."""

    name: str
    file_type: FileType
    base: GGMLType
    note: str = ""


# (name, file type, base tensor type, note); the order is llama-quantize's, aliases included.
_MIX_ROWS: list[tuple[str, FileType, GGMLType, str]] = [
    ("Q1_0", FileType.MOSTLY_Q1_0, GGMLType.Q1_0, ""),
    ("Q2_0", FileType.MOSTLY_Q2_0, GGMLType.Q2_0, ""),
    ("Q4_0", FileType.MOSTLY_Q4_0, GGMLType.Q4_0, ""),
    ("Q4_1", FileType.MOSTLY_Q4_1, GGMLType.Q4_1, ""),
    ("MXFP4_MOE", FileType.MOSTLY_MXFP4_MOE, GGMLType.MXFP4, ""),
    ("Q5_0", FileType.MOSTLY_Q5_0, GGMLType.Q5_0, ""),
    ("Q5_1", FileType.MOSTLY_Q5_1, GGMLType.Q5_1, ""),
    ("IQ2_XXS", FileType.MOSTLY_IQ2_XXS, GGMLType.IQ2_XXS, ""),
    ("IQ2_XS", FileType.MOSTLY_IQ2_XS, GGMLType.IQ2_XS, ""),
    ("IQ2_S", FileType.MOSTLY_IQ2_S, GGMLType.IQ2_XS, ""),
    ("IQ2_M", FileType.MOSTLY_IQ2_M, GGMLType.IQ2_S, ""),
    ("IQ1_S", FileType.MOSTLY_IQ1_S, GGMLType.IQ1_S, ""),
    ("IQ1_M", FileType.MOSTLY_IQ1_M, GGMLType.IQ1_M, ""),
    ("TQ1_0", FileType.MOSTLY_TQ1_0, GGMLType.TQ1_0, ""),
    ("TQ2_0", FileType.MOSTLY_TQ2_0, GGMLType.TQ2_0, ""),
    ("Q2_K", FileType.MOSTLY_Q2_K, GGMLType.Q2_K, ""),
    ("Q2_K_S", FileType.MOSTLY_Q2_K_S, GGMLType.Q2_K, ""),
    ("IQ3_XXS", FileType.MOSTLY_IQ3_XXS, GGMLType.IQ3_XXS, ""),
    ("IQ3_S", FileType.MOSTLY_IQ3_S, GGMLType.IQ3_S, ""),
    ("IQ3_M", FileType.MOSTLY_IQ3_M, GGMLType.IQ3_S, ""),
    ("Q3_K", FileType.MOSTLY_Q3_K_M, GGMLType.Q3_K, "alias for Q3_K_M"),
    ("IQ3_XS", FileType.MOSTLY_IQ3_XS, GGMLType.IQ3_S, ""),
    ("Q3_K_S", FileType.MOSTLY_Q3_K_S, GGMLType.Q3_K, ""),
    ("Q3_K_M", FileType.MOSTLY_Q3_K_M, GGMLType.Q3_K, ""),
    ("Q3_K_L", FileType.MOSTLY_Q3_K_L, GGMLType.Q3_K, ""),
    ("IQ4_NL", FileType.MOSTLY_IQ4_NL, GGMLType.IQ4_NL, ""),
    ("IQ4_XS", FileType.MOSTLY_IQ4_XS, GGMLType.IQ4_XS, ""),
    ("Q4_K", FileType.MOSTLY_Q4_K_M, GGMLType.Q4_K, "alias for Q4_K_M"),
    ("Q4_K_S", FileType.MOSTLY_Q4_K_S, GGMLType.Q4_K, ""),
    ("Q4_K_M", FileType.MOSTLY_Q4_K_M, GGMLType.Q4_K, ""),
    ("Q5_K", FileType.MOSTLY_Q5_K_M, GGMLType.Q5_K, "alias for Q5_K_M"),
    ("Q5_K_S", FileType.MOSTLY_Q5_K_S, GGMLType.Q5_K, ""),
    ("Q5_K_M", FileType.MOSTLY_Q5_K_M, GGMLType.Q5_K, ""),
    ("Q6_K", FileType.MOSTLY_Q6_K, GGMLType.Q6_K, ""),
    ("Q8_0", FileType.MOSTLY_Q8_0, GGMLType.Q8_0, ""),
    ("F16", FileType.MOSTLY_F16, GGMLType.F16, ""),
    ("BF16", FileType.MOSTLY_BF16, GGMLType.BF16, ""),
    ("F32", FileType.ALL_F32, GGMLType.F32, ""),
]
MIXES: dict[str, Mix] = {name: Mix(name, ft, base, note) for name, ft, base, note in _MIX_ROWS}

# Types that llama.cpp refuses to produce without an importance matrix (`tensor_requires_imatrix`:
# for any tensor but token_embd / output; Q2_K only in Q2_K_S files, see find_mix).
_IMATRIX_TYPES = frozenset({GGMLType.IQ3_XXS, GGMLType.IQ2_XXS, GGMLType.IQ2_XS, GGMLType.IQ2_S,
                            GGMLType.IQ1_M, GGMLType.IQ1_S})

# Types ggml itself cannot quantize without importance weights (`ggml_quantize_requires_imatrix`:
# ggml_quantize_chunk asserts), even where llama.cpp does not ask for an imatrix: token_embd, which
# no importance matrix covers, with --pure or --token-embedding-type (llama-quantize aborts there).
WEIGHTS_ONLY_TYPES = frozenset({GGMLType.IQ2_XXS, GGMLType.IQ2_XS, GGMLType.IQ1_S})

# TYPEs llama-quantize refuses without --imatrix: those based on an imatrix-only type, Q2_K_S (its
# Q2_K tensors), and IQ3_XS (based on IQ3_S, but its rules always give attn_q / attn_k IQ3_XXS, so
# only with --pure it goes without). Every one was refused on the kq model:
# tests/data/iquants/quantize.json, tests/data/imatrix/quantize.json.
_IMATRIX_BY_RULES = frozenset({"IQ3_XS"})
_IMATRIX_MIXES = frozenset({name for name, mix in MIXES.items() if mix.base in _IMATRIX_TYPES}
                           | {"Q2_K_S"} | _IMATRIX_BY_RULES)


def _producible(mix: Mix) -> bool:
    """llmcli has a quantizer for the mix's base type (the types its rules add are checked per
    tensor when planning: check_plan)."""
    return mix.base in quantizable_types()


# The TYPEs llmcli produces, in llama-quantize's order: grows with the codecs (quantizable_types).
SUPPORTED_MIXES: tuple[str, ...] = tuple(name for name, mix in MIXES.items()
                                         if _producible(mix) and name not in _IMATRIX_MIXES)

# TYPEs llmcli produces only with an importance matrix (--imatrix), as llama-quantize.
IMATRIX_ONLY_MIXES: tuple[str, ...] = tuple(name for name, mix in MIXES.items()
                                            if _producible(mix) and name in _IMATRIX_MIXES)

# The quantized mixes from most to least precise, for `quantize --max-size`: ordered by the
# perplexity increase llama-quantize's type list states for each (Llama-3-8B): Q8_0 +0.0026,
# Q6_K +0.0217, Q5_K_M +0.0569, Q5_K_S +0.1049, Q5_1 +0.1062, Q5_0 +0.1316, Q4_K_M +0.1754,
# Q4_K_S +0.2689, Q4_1 +0.4511, Q4_0 +0.4685, Q3_K_L +0.5562, Q3_K_M +0.6569, Q3_K_S +1.6321,
# Q2_K_S +3.1836, Q2_K +3.5199.
MIXES_BY_PRECISION: tuple[str, ...] = (
    "Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q5_1", "Q5_0", "Q4_K_M", "Q4_K_S", "Q4_1", "Q4_0",
    "Q3_K_L", "Q3_K_M", "Q3_K_S", "Q2_K_S", "Q2_K",
)

def find_mix(name: str, has_imatrix: bool = False, pure: bool = False) -> Mix:
    """The Mix for a TYPE argument (case-insensitive, or llama-quantize's numeric file type);
    `has_imatrix`: an importance matrix will be given (Q2_K_S and most i-quants need one);
    `pure`: --pure (no mix rules)."""
    key = name.strip().upper()
    mix = MIXES.get(key)
    if mix is None and key.isdigit():
        mix = next((m for m in MIXES.values() if m.file_type == int(key)), None)
    if mix is None:
        raise BadInputError(f"unknown quantization type '{name}' (valid: {', '.join(SUPPORTED_MIXES)})")
    if mix.name in _IMATRIX_MIXES and not has_imatrix and not (pure and mix.name in _IMATRIX_BY_RULES):
        raise UnsupportedError(
            f"{mix.name} needs an importance matrix: llama.cpp refuses to quantize to it without one "
            f"(its {'Q2_K' if mix.name == 'Q2_K_S' else 'low-bit'} tensors are only usable with importance "
            f"weights); make one with `llmcli imatrix` and pass --imatrix FILE")
    if mix.name not in SUPPORTED_MIXES + IMATRIX_ONLY_MIXES:
        raise UnsupportedError(f"quantization type {mix.name} is a llama-quantize type llmcli cannot "
                               f"produce yet (supported: {', '.join(SUPPORTED_MIXES)})")
    return mix


def parse_ggml_type(name: str, what: str) -> GGMLType:
    """A ggml type name as --output-tensor-type and friends take it (case-insensitive: q8_0, Q6_K)."""
    t = TYPE_BY_NAME.get(name.strip().upper())
    if t is None:
        raise BadInputError(f"{what}: unknown ggml type '{name}' "
                            f"(e.g. {', '.join(n for n in ('F32', 'F16', 'BF16', 'Q8_0', 'Q6_K', 'Q4_K'))})")
    return t


def parse_tensor_type_override(spec: str) -> tuple[str, GGMLType]:
    """--tensor-type REGEX=TYPE. llama-quantize lowercases the pattern and searches tensor names with it."""
    pattern, sep, type_name = spec.partition("=")
    if not sep:
        raise BadInputError(f"--tensor-type '{spec}': expected REGEX=TYPE, e.g. attn_v=q8_0")
    if not pattern:
        raise BadInputError(f"--tensor-type '{spec}': missing tensor name pattern before '='")
    if not type_name:
        raise BadInputError(f"--tensor-type '{spec}': missing type after '='")
    pattern = pattern.lower()
    try:
        re.compile(pattern)
    except re.error as e:
        raise BadInputError(f"--tensor-type '{spec}': bad regular expression: {e}") from None
    return pattern, parse_ggml_type(type_name, f"--tensor-type '{spec}'")


def is_quantized(t: GGMLType) -> bool:
    """ggml_is_quantized: every block format; plain element types (F32, F16, BF16, I8..) are not."""
    return TYPE_INFO[t].block_size > 1


# --------------------------------------------------------------------------------------------------
# Tensor order and categories
# --------------------------------------------------------------------------------------------------

_LAYER_PREFIX = re.compile(r"blk\.\s*([+-]?\d+)")


def layer_of(name: str) -> int | None:
    """The N of a `blk.N.` name, read as C's sscanf("blk.%d.") does; None when there is none."""
    m = _LAYER_PREFIX.match(name)
    return int(m.group(1)) if m else None


def llama_tensor_order(names: Iterable[str]) -> list[str]:
    """The order llama-quantize writes tensors in: its loader keeps them in a map sorted by layer
    number (non-layer tensors first) and then by name, whatever the input file's order."""
    def key(name: str) -> tuple[int, bytes]:
        layer = layer_of(name)
        return (-1 if layer is None else layer, name.encode("utf-8", "surrogateescape"))
    return sorted(names, key=key)


class Category(enum.Enum):
    TOKEN_EMBD = "token_embd"
    ATTN_Q = "attn_q"
    ATTN_V = "attn_v"
    ATTN_K = "attn_k"
    ATTN_QKV = "attn_qkv"
    ATTN_KV_B = "attn_kv_b"
    ATTN_OUTPUT = "attn_output"
    FFN_UP = "ffn_up"
    FFN_GATE = "ffn_gate"
    FFN_DOWN = "ffn_down"
    OUTPUT = "output"
    OTHER = "other"


_CATEGORY_BY_NAME = {"output.weight": Category.OUTPUT, "token_embd.weight": Category.TOKEN_EMBD,
                     "per_layer_token_embd.weight": Category.TOKEN_EMBD}
# First match wins; order as in llama.cpp (attn_qkv / attn_kv_b before attn_v / attn_k).
_CATEGORY_BY_SUBSTRING = [
    ("attn_qkv.weight", Category.ATTN_QKV), ("attn_kv_b.weight", Category.ATTN_KV_B),
    ("attn_v.weight", Category.ATTN_V), ("attn_k.weight", Category.ATTN_K), ("attn_q.weight", Category.ATTN_Q),
    ("attn_output.weight", Category.ATTN_OUTPUT),
    ("ffn_up", Category.FFN_UP), ("ffn_gate", Category.FFN_GATE), ("ffn_down", Category.FFN_DOWN),
]
# Tensors that share attn_v's treatment and its counter.
_ATTN_V_LIKE = frozenset({Category.ATTN_V, Category.ATTN_QKV, Category.ATTN_KV_B})


def category_of(name: str) -> Category:
    if name in _CATEGORY_BY_NAME:
        return _CATEGORY_BY_NAME[name]
    return next((cat for part, cat in _CATEGORY_BY_SUBSTRING if part in name), Category.OTHER)


# Name fragments of 2-D+ weights that are never quantized (small, or precision-critical).
_KEEP_SUBSTRINGS = (
    "_norm.weight", "ffn_gate_inp.weight", "ffn_gate_tid2eid.weight", "altup", "laurel",
    "per_layer_model_proj", "ssm_conv1d", "shortconv.conv.weight", "indexer.k_proj.weight",
    "indexer.q_proj.weight",
    "time_mix_first.weight", "time_mix_w0.weight", "time_mix_w1.weight", "time_mix_w2.weight",
    "time_mix_v0.weight", "time_mix_v1.weight", "time_mix_v2.weight", "time_mix_a0.weight",
    "time_mix_a1.weight", "time_mix_a2.weight", "time_mix_g1.weight", "time_mix_g2.weight",
    "time_mix_decay_w1.weight", "time_mix_decay_w2.weight", "time_mix_lerp_fused.weight",
    "attn_rel_b.weight", ".position_embd", "sam.pos_embd", "sam.neck.", "sam.net_", ".rel_pos",
    ".patch_embd", ".patch_merger", "a.rvq.codebook", "mm.a.code_embd",
)
_KEEP_NAMES = frozenset({"position_embd.weight", "token_types.weight"})
_KEEP_SUBSTRINGS_BY_ARCH = {
    "glm5-next": ("hc_", "indexer.attn_q_b", "indexer.attn_k", "indexer.proj", "indexer_compressor_gate",
                  "indexer_compressor_ape", "ssm_f_a.weight", "ssm_f_b.weight", "ssm_g_a.weight",
                  "ssm_g_b.weight", "ssm_beta.weight", "attn_kv_a_mqa.weight", "attn_k_b.weight",
                  "attn_v_b.weight"),
}


def n_dims(shape: Sequence[int]) -> int:
    """ggml_n_dims: dimensions up to the last one larger than 1 (a (256, 1) tensor is 1-D)."""
    for i in range(len(shape) - 1, 0, -1):
        if shape[i] > 1:
            return i + 1
    return 1


# --------------------------------------------------------------------------------------------------
# What the rules need to know about the model
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelFacts:
    arch: str
    n_layer: int          # {arch}.block_count, nextn layers included (llama.cpp's n_layer_all)
    n_layer_nextn: int    # {arch}.nextn_predict_layers
    n_expert: int         # {arch}.expert_count, 0 for dense models
    n_head: int           # of layer 0
    n_head_kv: int        # of layer 0; defaults to n_head

    @property
    def n_gqa(self) -> int:
        return self.n_head // self.n_head_kv if self.n_head_kv else 0

    @property
    def is_70b(self) -> bool:
        """llama.cpp's LLM_TYPE_70B, the only model size the rules look at."""
        rule = _SEVENTY_B.get(self.arch)
        return bool(rule and rule(self))

    @classmethod
    def from_metadata(cls, get: Callable[[str], object], where: str = "model") -> "ModelFacts":
        """`get(key)` returns a metadata value or None (e.g. GGUFReader.get)."""
        arch = get("general.architecture")
        if not isinstance(arch, str) or not arch:
            raise BadInputError(f"{where}: metadata has no general.architecture")
        n_layer = get(f"{arch}.block_count")
        if not isinstance(n_layer, int) or n_layer <= 0:
            raise BadInputError(f"{where}: metadata has no valid {arch}.block_count")

        def first(value, default):
            if isinstance(value, list):
                value = value[0] if value else None
            return default if value is None else int(value)

        n_head = first(get(f"{arch}.attention.head_count"), 0)
        n_head_kv = first(get(f"{arch}.attention.head_count_kv"), n_head)
        return cls(arch, n_layer, first(get(f"{arch}.nextn_predict_layers"), 0),
                   first(get(f"{arch}.expert_count"), 0), n_head, n_head_kv)


# Which architectures llama.cpp sizes as "70B" (they get more bits for attn_v), by main layer count.
_SEVENTY_B: dict[str, Callable[[ModelFacts], bool]] = {
    "llama": lambda m: m.n_expert != 8 and m.n_layer - m.n_layer_nextn == 80 and m.n_head != m.n_head_kv,
    "qwen2": lambda m: m.n_layer - m.n_layer_nextn == 80,
    "deci": lambda m: m.n_layer - m.n_layer_nextn == 80,
    "olmo": lambda m: m.n_layer - m.n_layer_nextn == 80,
    "jais2": lambda m: m.n_layer - m.n_layer_nextn == 68,
}


# --------------------------------------------------------------------------------------------------
# The mix rules (llama_tensor_get_type_impl) as ordered tables
# --------------------------------------------------------------------------------------------------


@dataclass
class RuleInput:
    """Everything a rule may look at for one tensor."""

    ftype: FileType
    model: ModelFacts
    name: str
    category: Category
    shape: tuple[int, ...]
    current: GGMLType          # the type chosen so far (the base type on entry)
    i_layer: int = 0           # layer position as llama.cpp counts it for this category
    n_layer: int = 0
    has_imatrix: bool = False

    @property
    def gqa(self) -> int:
        return self.model.n_gqa

    @property
    def n_expert(self) -> int:
        return self.model.n_expert

    @property
    def falcon(self) -> bool:
        return self.model.arch == "falcon"

    @property
    def more_bits(self) -> bool:
        """use_more_bits: the first and last eighth of the layers, and every third one between."""
        i, n = self.i_layer, self.n_layer
        return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2

    @property
    def first_eighth(self) -> bool:
        return self.i_layer < self.n_layer // 8


Result = GGMLType | Callable[[RuleInput], GGMLType]


@dataclass(frozen=True)
class Rule:
    """Applies when the file type is in `ftypes` (None: any) and `when` holds; `to` is the new type
    (a callable may return `x.current` to keep it). The first applicable rule of a table decides."""

    ftypes: frozenset[FileType] | None
    to: Result
    when: Callable[[RuleInput], bool] | None = None

    def applies(self, x: RuleInput) -> bool:
        return (self.ftypes is None or x.ftype in self.ftypes) and (self.when is None or self.when(x))

    def result(self, x: RuleInput) -> GGMLType:
        return self.to(x) if callable(self.to) else self.to


def _f(*ftypes: FileType) -> frozenset[FileType]:
    return frozenset(ftypes)


def first_rule(rules: Sequence[Rule], x: RuleInput) -> GGMLType:
    for rule in rules:
        if rule.applies(x):
            return rule.result(x)
    return x.current


IQ2_LIKE = _f(FileType.MOSTLY_IQ2_XXS, FileType.MOSTLY_IQ2_XS, FileType.MOSTLY_IQ1_S, FileType.MOSTLY_IQ2_S,
              FileType.MOSTLY_IQ2_M, FileType.MOSTLY_IQ1_M)
_IQ2_S_M = _f(FileType.MOSTLY_IQ2_S, FileType.MOSTLY_IQ2_M)


def _iq3s_or_q2k(x: RuleInput) -> GGMLType:
    return GGMLType.IQ3_S if x.ftype in _IQ2_S_M else GGMLType.Q2_K


# output.weight, and token_embd.weight when the model ties it to the output (no output.weight).
OUTPUT_RULES = [
    Rule(_f(FileType.MOSTLY_MXFP4_MOE), GGMLType.Q8_0),
    Rule(None, GGMLType.Q8_0, lambda x: x.falcon or x.shape[0] % TYPE_INFO[x.current].block_size != 0),
    Rule(_f(FileType.MOSTLY_IQ2_XXS, FileType.MOSTLY_IQ2_XS, FileType.MOSTLY_IQ3_XXS, FileType.MOSTLY_IQ1_S,
            FileType.MOSTLY_IQ2_S, FileType.MOSTLY_IQ2_M, FileType.MOSTLY_IQ1_M), GGMLType.Q5_K),
    Rule(None, GGMLType.Q6_K, lambda x: x.current != GGMLType.Q8_0),
]

# Every other tensor of an MXFP4_MOE file: experts MXFP4, the rest Q8_0.
MXFP4_MOE_RULES = [
    Rule(None, GGMLType.MXFP4, lambda x: len(x.shape) > 2 and x.shape[2] > 1 and (
        x.model.arch != "bailingmoe3"
        or x.category in (Category.FFN_UP, Category.FFN_GATE, Category.FFN_DOWN))),
    Rule(None, GGMLType.Q8_0),
]

TOKEN_EMBD_RULES = [
    Rule(_f(FileType.MOSTLY_IQ2_XXS, FileType.MOSTLY_IQ2_XS, FileType.MOSTLY_IQ1_S, FileType.MOSTLY_IQ1_M),
         GGMLType.Q2_K),
    Rule(_f(FileType.MOSTLY_IQ2_S, FileType.MOSTLY_IQ2_M), GGMLType.IQ3_S),
    Rule(_f(FileType.MOSTLY_IQ3_XXS), GGMLType.IQ3_S),
    Rule(_f(FileType.MOSTLY_TQ1_0, FileType.MOSTLY_TQ2_0, FileType.MOSTLY_Q2_0), GGMLType.Q4_K),
]

# The very low-bit i-quant files have their own small table (ffn_down counts by position, not layer).
IQ2_LIKE_RULES: dict[Category, list[Rule]] = {
    Category.ATTN_V: [Rule(None, GGMLType.Q4_K, lambda x: x.gqa >= 4 or x.n_expert >= 4),
                      Rule(None, _iq3s_or_q2k)],
    Category.ATTN_K: [Rule(None, GGMLType.Q4_K, lambda x: x.n_expert == 8)],
    Category.FFN_DOWN: [Rule(None, _iq3s_or_q2k, lambda x: x.first_eighth)],
    Category.ATTN_OUTPUT: [
        Rule(None, GGMLType.Q5_K, lambda x: x.n_expert == 8),
        Rule(_f(FileType.MOSTLY_IQ1_S, FileType.MOSTLY_IQ1_M), GGMLType.IQ2_XXS),
        Rule(_IQ2_S_M, GGMLType.IQ3_S),
    ],
}

ATTN_V_RULES = [
    Rule(_f(FileType.MOSTLY_Q2_K), lambda x: GGMLType.Q4_K if x.gqa >= 4 else GGMLType.Q3_K),
    Rule(_f(FileType.MOSTLY_Q2_K_S), GGMLType.Q4_K, lambda x: x.gqa >= 4),
    Rule(_f(FileType.MOSTLY_IQ3_XXS), lambda x: GGMLType.Q4_K if x.gqa >= 4
         else GGMLType.IQ3_S if not x.has_imatrix else GGMLType.IQ3_XXS),
    Rule(_f(FileType.MOSTLY_IQ3_XS, FileType.MOSTLY_IQ3_S), GGMLType.Q4_K, lambda x: x.gqa >= 4),
    Rule(_f(FileType.MOSTLY_IQ3_M), GGMLType.Q4_K),
    Rule(_f(FileType.MOSTLY_Q3_K_M), lambda x: GGMLType.Q5_K if x.i_layer < 2 else GGMLType.Q4_K),
    Rule(_f(FileType.MOSTLY_Q3_K_L), GGMLType.Q5_K),
    Rule(_f(FileType.MOSTLY_IQ4_NL, FileType.MOSTLY_IQ4_XS), GGMLType.Q5_K, lambda x: x.gqa >= 4),
    Rule(_f(FileType.MOSTLY_Q4_K_M, FileType.MOSTLY_Q5_K_M), GGMLType.Q6_K, lambda x: x.more_bits),
    Rule(_f(FileType.MOSTLY_Q4_K_S), GGMLType.Q5_K, lambda x: x.i_layer < 4),
]


def _attn_v_adjust(x: RuleInput, chosen: GGMLType) -> GGMLType:
    # A 70B model's attn_v is 8x smaller than attn_q (8 heads share it): more bits cost little.
    if x.model.is_70b and chosen in (GGMLType.Q3_K, GGMLType.Q4_K):
        chosen = GGMLType.Q5_K
    # For 8-expert models Q8_0 attention costs ~128 MB and helps.
    if x.n_expert == 8:
        chosen = GGMLType.Q8_0
    return chosen


def _q3_k_m_ffn_down(x: RuleInput) -> GGMLType:
    if x.i_layer < x.n_layer // 16:
        return GGMLType.Q5_K
    return GGMLType.Q4_K if not x.falcon or x.more_bits else GGMLType.Q3_K


def _q4_k_m_ffn_down(x: RuleInput) -> GGMLType:
    if x.falcon:
        if x.i_layer < x.n_layer // 16:
            return GGMLType.Q6_K
        return GGMLType.Q5_K if x.more_bits else GGMLType.Q4_K
    return GGMLType.Q6_K if x.more_bits else x.current


_N_EXPERT_8_ATTN_OUTPUT_Q5_K = _f(
    FileType.MOSTLY_Q2_K, FileType.MOSTLY_IQ3_XS, FileType.MOSTLY_IQ3_XXS, FileType.MOSTLY_Q3_K_S,
    FileType.MOSTLY_Q3_K_M, FileType.MOSTLY_IQ4_NL, FileType.MOSTLY_Q4_K_S, FileType.MOSTLY_Q4_K_M,
    FileType.MOSTLY_IQ3_S, FileType.MOSTLY_IQ3_M, FileType.MOSTLY_IQ4_XS)


def _not_falcon(x: RuleInput) -> bool:
    return not x.falcon


def _iq3_xs_middle(x: RuleInput) -> bool:
    return x.n_layer // 8 <= x.i_layer < 7 * x.n_layer // 8


CATEGORY_RULES: dict[Category, list[Rule]] = {
    Category.ATTN_K: [
        Rule(None, GGMLType.Q8_0, lambda x: x.n_expert == 8),
        Rule(_f(FileType.MOSTLY_IQ3_XS), GGMLType.IQ3_XXS),
        Rule(_f(FileType.MOSTLY_IQ3_XXS), GGMLType.IQ2_S),
    ],
    Category.ATTN_Q: [
        Rule(_f(FileType.MOSTLY_IQ3_XS), GGMLType.IQ3_XXS),
        Rule(_f(FileType.MOSTLY_IQ3_XXS), GGMLType.IQ2_S),
    ],
    Category.FFN_DOWN: [
        Rule(_f(FileType.MOSTLY_Q2_K), GGMLType.Q3_K),
        Rule(_f(FileType.MOSTLY_Q2_K_S), lambda x: GGMLType.Q4_K if x.first_eighth else x.current),
        Rule(_f(FileType.MOSTLY_IQ3_XXS), lambda x: GGMLType.Q4_K if x.first_eighth else GGMLType.Q3_K,
             lambda x: not x.has_imatrix),
        Rule(_f(FileType.MOSTLY_Q3_K_M), _q3_k_m_ffn_down),
        Rule(_f(FileType.MOSTLY_IQ3_M), GGMLType.Q4_K,
             lambda x: x.first_eighth or (x.n_expert == 8 and x.more_bits)),
        Rule(_f(FileType.MOSTLY_Q3_K_L), lambda x: GGMLType.Q4_K if x.falcon else GGMLType.Q5_K),
        Rule(_f(FileType.MOSTLY_Q4_K_M), _q4_k_m_ffn_down),
        Rule(_f(FileType.MOSTLY_IQ4_NL, FileType.MOSTLY_IQ4_XS), GGMLType.Q5_K,
             lambda x: x.first_eighth and not x.has_imatrix),
        Rule(_f(FileType.MOSTLY_Q5_K_M), GGMLType.Q6_K, lambda x: x.more_bits),
        Rule(_f(FileType.MOSTLY_Q4_K_S), GGMLType.Q5_K, lambda x: not x.falcon and x.first_eighth),
        # With an imatrix only (so results without one never change): guard the first ffn_down layers.
        Rule(_f(FileType.MOSTLY_Q4_0, FileType.MOSTLY_Q5_0),
             lambda x: GGMLType.Q4_1 if x.ftype == FileType.MOSTLY_Q4_0 else GGMLType.Q5_1,
             lambda x: x.has_imatrix and x.first_eighth),
    ],
    Category.ATTN_OUTPUT: [
        Rule(_N_EXPERT_8_ATTN_OUTPUT_Q5_K, GGMLType.Q5_K, lambda x: not x.falcon and x.n_expert == 8),
        Rule(None, lambda x: x.current, lambda x: not x.falcon and x.n_expert == 8),
        Rule(_f(FileType.MOSTLY_Q2_K), GGMLType.Q3_K, _not_falcon),
        Rule(_f(FileType.MOSTLY_IQ3_XXS), GGMLType.IQ3_S, _not_falcon),
        Rule(_f(FileType.MOSTLY_Q3_K_M), GGMLType.Q4_K, _not_falcon),
        Rule(_f(FileType.MOSTLY_Q3_K_L), GGMLType.Q5_K, _not_falcon),
        Rule(_f(FileType.MOSTLY_IQ3_M), GGMLType.Q4_K, _not_falcon),
        Rule(_f(FileType.MOSTLY_Q3_K_L), GGMLType.Q4_K),  # falcon
    ],
    # ATTN_QKV has rules of its own in llama.cpp, but they sit after the attn_v branch that already
    # takes every attn_v-like tensor, so they never apply; attn_qkv is treated as attn_v.
    Category.FFN_GATE: [Rule(_f(FileType.MOSTLY_IQ3_XS), GGMLType.IQ3_XXS, _iq3_xs_middle)],
    Category.FFN_UP: [Rule(_f(FileType.MOSTLY_IQ3_XS), GGMLType.IQ3_XXS, _iq3_xs_middle)],
}

# Which tensors llama.cpp counts, and whether it takes the layer number from that running count or
# (for MoE models, whose expert tensors are not in layer order in old files) from the name.
_COUNTED = {Category.FFN_DOWN: "ffn_down", Category.FFN_GATE: "ffn_gate", Category.FFN_UP: "ffn_up"}
_COUNTED.update({c: "attn_v" for c in _ATTN_V_LIKE})

# Where a block size does not divide the row length: the 32-block type to use instead.
FALLBACK = {
    **{t: GGMLType.IQ4_NL for t in (GGMLType.IQ1_S, GGMLType.IQ1_M, GGMLType.IQ2_XXS, GGMLType.IQ2_XS,
                                    GGMLType.IQ2_S, GGMLType.IQ3_XXS, GGMLType.IQ3_S, GGMLType.IQ4_XS)},
    **{t: GGMLType.Q4_0 for t in (GGMLType.Q2_0, GGMLType.Q2_K, GGMLType.Q3_K, GGMLType.TQ1_0,
                                  GGMLType.TQ2_0)},
    GGMLType.Q4_K: GGMLType.Q5_0,
    GGMLType.Q5_K: GGMLType.Q5_1,
    GGMLType.Q6_K: GGMLType.Q8_0,
}


# --------------------------------------------------------------------------------------------------
# The planner
# --------------------------------------------------------------------------------------------------


@dataclass
class QuantizeOptions:
    """llama-quantize's switches that change type choices."""

    pure: bool = False
    output_tensor_type: GGMLType | None = None
    token_embedding_type: GGMLType | None = None
    leave_output_tensor: bool = False
    tensor_types: list[tuple[str, GGMLType]] = field(default_factory=list)  # (regex, type), first match wins


@dataclass(frozen=True)
class TypeChoice:
    name: str
    source: GGMLType
    target: GGMLType
    quantizable: bool        # False: copied as it is whatever the mix says
    how: str   # "kept" (never quantized), "base", "mix" (a rule moved it), "--tensor-type" and the
               # other options, or "fallback from Q4_K (row length 640)"
    needs_imatrix: bool = False


class TypePlanner:
    """Chooses each tensor's type as llama-quantize does. Feed every tensor once, in
    `llama_tensor_order`, through `choose`; `all_tensor_names` must list the whole model."""

    def __init__(self, model: ModelFacts, mix: Mix, options: QuantizeOptions,
                 all_tensor_names: Iterable[str], has_imatrix: bool = False):
        self.model, self.mix, self.options = model, mix, options
        self.has_imatrix = has_imatrix   # a few rules differ when an importance matrix is given
        names = list(all_tensor_names)
        self.tied_embeddings = "output.weight" not in names
        self.n_counted = {"attn_v": sum(category_of(n) in _ATTN_V_LIKE for n in names),
                          "ffn_down": model.n_layer, "ffn_gate": model.n_layer, "ffn_up": model.n_layer}
        self.i_counted = dict.fromkeys(self.n_counted, 0)
        self.n_fallback = 0
        self._overrides = [(re.compile(p), t) for p, t in options.tensor_types]

    def allows_quantization(self, name: str, shape: Sequence[int]) -> bool:
        if n_dims(shape) < 2 or not name.endswith("weight"):
            return False
        if self.options.leave_output_tensor and name == "output.weight":
            return False
        if name in _KEEP_NAMES:
            return False
        keep = _KEEP_SUBSTRINGS + _KEEP_SUBSTRINGS_BY_ARCH.get(self.model.arch, ())
        return not any(part in name for part in keep)

    def _override(self, name: str) -> GGMLType | None:
        return next((t for pattern, t in self._overrides if pattern.search(name)), None)

    def choose(self, name: str, shape: Sequence[int], source: GGMLType) -> TypeChoice:
        shape = tuple(int(d) for d in shape)
        if not self.allows_quantization(name, shape):
            return TypeChoice(name, source, source, False, "kept")
        category = category_of(name)
        target, how = self._choose(name, shape, category)
        needs_imatrix = category not in (Category.TOKEN_EMBD, Category.OUTPUT) and (
            target in _IMATRIX_TYPES
            or (target == GGMLType.Q2_K and self.mix.file_type == FileType.MOSTLY_Q2_K_S))
        return TypeChoice(name, source, target, True, how, needs_imatrix)

    def _choose(self, name: str, shape: tuple[int, ...], category: Category) -> tuple[GGMLType, str]:
        opts = self.options
        if opts.token_embedding_type is not None and category == Category.TOKEN_EMBD:
            # per_layer_token_embd may still be named by a --tensor-type pattern
            if not (name == "per_layer_token_embd.weight" and self._override(name) is not None):
                return opts.token_embedding_type, "--token-embedding-type"
        if opts.output_tensor_type is not None and category == Category.OUTPUT:
            return opts.output_tensor_type, "--output-tensor-type"
        chosen, how = self.mix.base, "base"
        if not is_quantized(self.mix.base):
            return chosen, how
        override = self._override(name)
        if override is not None:
            chosen, how = override, "--tensor-type"
        elif not opts.pure:
            chosen = self._mix_rules(name, shape, category)
            how = "mix" if chosen != self.mix.base else "base"
        fitted = self._fit_row_length(shape[0], chosen)
        if fitted != chosen:
            return fitted, f"fallback from {chosen.name} (row length {shape[0]})"
        return chosen, how

    def _layer(self, counter: str, name: str) -> tuple[int, int]:
        """llama.cpp's layer_info: the running count, or for MoE models the layer from the name."""
        i, n = self.i_counted[counter], self.n_counted[counter]
        if self.model.n_expert > 1:
            i = layer_of(name)
            if i is None:
                raise BadInputError(f"tensor '{name}': cannot tell its layer (expected blk.N.)")
            if not 0 <= i < n:
                raise BadInputError(f"tensor '{name}': layer {i} outside [0, {n})")
        return i, n

    def _mix_rules(self, name: str, shape: tuple[int, ...], category: Category) -> GGMLType:
        ftype, base = self.mix.file_type, self.mix.base
        x = RuleInput(ftype, self.model, name, category, shape, base, has_imatrix=self.has_imatrix)
        if self.model.arch == "glm5-next" and any(p in name for p in ("attn_q_a", "attn_q_b", "nextn.eh_proj")):
            return GGMLType.Q8_0  # never below Q8_0 (the base is quantized here, so never above either)
        if category == Category.OUTPUT or (self.tied_embeddings and category == Category.TOKEN_EMBD):
            if self.options.output_tensor_type is not None:
                return self.options.output_tensor_type
            return first_rule(OUTPUT_RULES, x)
        if ftype == FileType.MOSTLY_MXFP4_MOE:
            return first_rule(MXFP4_MOE_RULES, x)
        if category == Category.TOKEN_EMBD:
            if self.options.token_embedding_type is not None:
                return self.options.token_embedding_type
            return first_rule(TOKEN_EMBD_RULES, x)

        counter = _COUNTED.get(category)
        if ftype in IQ2_LIKE:
            # This branch takes every remaining tensor of these files and counts only attn_v and
            # ffn_down, by position (no layer_info here).
            table_category = Category.ATTN_V if category in _ATTN_V_LIKE else category
            counted = counter if counter in ("attn_v", "ffn_down") else None
            if counted is not None:
                x.i_layer, x.n_layer = self.i_counted[counted], self.n_counted[counted]
            chosen = first_rule(IQ2_LIKE_RULES.get(table_category, []), x)
            if counted is not None:
                self.i_counted[counted] += 1
            return chosen

        if category in _ATTN_V_LIKE:
            x.i_layer, x.n_layer = self.i_counted["attn_v"], self.n_counted["attn_v"]
            chosen = _attn_v_adjust(x, first_rule(ATTN_V_RULES, x))
            self.i_counted["attn_v"] += 1
            return chosen
        if counter is not None:
            x.i_layer, x.n_layer = self._layer(counter, name)
        chosen = first_rule(CATEGORY_RULES.get(category, []), x)
        if counter is not None:
            self.i_counted[counter] += 1
        return chosen

    def _fit_row_length(self, row_length: int, chosen: GGMLType) -> GGMLType:
        """tensor_type_fallback: a 32-block type when the block size does not divide the rows,
        F16 when even that does not."""
        block = TYPE_INFO[chosen].block_size
        if row_length % block == 0:
            return chosen
        self.n_fallback += 1
        if chosen in FALLBACK:
            fallback = FALLBACK[chosen]
        elif block <= 32:
            fallback = chosen
        else:
            raise UnsupportedError(f"no fallback type is defined for {chosen.name} "
                                   f"(row length {row_length})")
        return fallback if row_length % TYPE_INFO[fallback].block_size == 0 else GGMLType.F16


def plan_types(model: ModelFacts, mix: Mix, options: QuantizeOptions,
               tensors: Iterable[tuple[str, Sequence[int], GGMLType]],
               has_imatrix: bool = False) -> list[TypeChoice]:
    """Type choices for (name, shape, type) tensors, returned in llama-quantize's output order."""
    by_name = {name: (tuple(shape), t) for name, shape, t in tensors}
    planner = TypePlanner(model, mix, options, by_name, has_imatrix)
    return [planner.choose(name, *by_name[name]) for name in llama_tensor_order(by_name)]


__all__ = [
    "Category", "IMATRIX_ONLY_MIXES", "MIXES", "MIXES_BY_PRECISION", "Mix", "ModelFacts", "QuantizeOptions", "SUPPORTED_MIXES", "TypeChoice",
    "WEIGHTS_ONLY_TYPES",
    "TypePlanner", "category_of", "find_mix", "is_quantized", "layer_of", "llama_tensor_order", "n_dims",
    "parse_ggml_type", "parse_tensor_type_override", "plan_types",
]
