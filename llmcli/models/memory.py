"""What a model needs in memory before it is loaded: weights, KV cache, work buffers.

A model that does not fit should stop before it starts, with the figures and what would fit, not
end in swapping or the kernel's OOM killer halfway through a prompt. The plan counts:

    weights       the tensors read from the file, which is memory-mapped: these pages are the
                  page cache's (shared with other processes mapping the same file), and a token
                  reads all of them, so they must stay resident.
    output copy   the output matrix copied out of the map (see `copies_output`), or for a type
                  with a panel kernel its rows repacked into panels (engine/panels.py, the same
                  bytes reordered): its mapped pages are then only read for token embeddings (a
                  few rows) and prompts that ask for every row's logits, so it is counted here
                  and not among the mapped weights.
    KV cache      keys and values (f32, f16, or q8_0/q4_0 blocks: `engine.kv_cache.KV_TYPES`):
                  n_seq sequences x every layer's slots (n_ctx positions, or window + batch for
                  sliding-window layers) x KV heads x the bytes of a head of that type.
                  Committed as positions are written, so a short conversation uses less.
    buffers       per-token float32 activations for a batch, the logits of every sequence, the
                  GEMM's weight tiles.
    tokenizer     the vocabulary as Python strings and tables (run, chat, serve and the API load
                  it; measured per token, with the transient peak while it is read).
    runtime       what loading the compiled kernels and running them adds to the process
                  (measured: RUNTIME_BYTES).

`Transformer` sizes its KV cache and buffers with the same functions, so the plan and the
allocation cannot drift apart.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields

from ..engine.kv_cache import DEFAULT_KV_TYPE, KV_TYPES, check_head_size, kv_type
from ..errors import LlmcliError
from .hparams import HParams

# The output matrix is copied out of the map from this size on (`Transformer._load_weights`).
OUTPUT_COPY_MIN_BYTES = 32 << 20
# The default context when none is given: the trained length, at most this.
DEFAULT_MAX_CTX = 4096
# Memory the process gains by loading and running the kernels (numba's compiled code, llvmlite,
# the thread pool), beyond the interpreter that imported llmcli: measured 60-80 MB on the demo
# and tiny models with scripts/measure_memory.py's method.
RUNTIME_BYTES = 70 << 20
# The tokenizer's peak per vocabulary entry (Tokenizer.from_gguf): measured +50 MB resident and a
# +125 MB transient for the demo model's 262,144 entries.
TOKENIZER_BYTES_PER_TOKEN = 350
# The GEMM's decoded weight tile and its packed panels (matmul.GEMM_TILE_BYTES each, float32).
GEMM_WORKSPACE_BYTES = 2 << 20
# Smallest context a suggestion offers.
MIN_SUGGESTED_CTX = 256
# KV cache types a plan suggests when the cache does not fit, most precise first.
SMALLER_KV_TYPES = ("f16", "q8_0", "q4_0")
# Set to 0 to load a model whatever the plan says (e.g. with swap the plan does not count).
MEMORY_CHECK_ENV = "LLMCLI_MEMORY_CHECK"


class InsufficientMemoryError(LlmcliError):
    """The model, its KV cache and buffers need more memory than the machine has available."""


def copies_output(n_bytes: int, computable: bool) -> bool:
    """Whether the output matrix is copied out of the map: it is read whole for every token and
    a copy in huge-page memory streams faster; worth its memory from OUTPUT_COPY_MIN_BYTES on."""
    return computable and n_bytes >= OUTPUT_COPY_MIN_BYTES


def default_ctx(hp: HParams, ctx_size: int | None) -> int:
    """The context a model runs with: the one asked for, else the trained length up to 4096."""
    return int(ctx_size or min(hp.n_ctx_train, DEFAULT_MAX_CTX))


def kv_slots(hp: HParams, n_ctx: int, batch_size: int) -> list[int]:
    """KV positions kept per layer: the whole context, or for sliding-window layers a ring of
    window + batch positions (enough for any batch's queries)."""
    return [min(n_ctx, hp.n_swa + batch_size) if swa else n_ctx for swa in hp.is_swa]


def kv_bytes_split(hp: HParams, n_ctx: int, batch_size: int, type_k: str = DEFAULT_KV_TYPE,
                   type_v: str = DEFAULT_KV_TYPE) -> tuple[int, int]:
    """Bytes of one sequence's keys and of its values (every layer, of the given types)."""
    kind_k, kind_v = kv_type(type_k, "--cache-type-k"), kv_type(type_v, "--cache-type-v")
    check_head_size(kind_k, hp.head_dim, "--cache-type-k")
    check_head_size(kind_v, hp.head_dim_v, "--cache-type-v")
    slots = sum(kv_slots(hp, n_ctx, batch_size))
    return (slots * hp.n_head_kv * kind_k.row_bytes(hp.head_dim),
            slots * hp.n_head_kv * kind_v.row_bytes(hp.head_dim_v))


def kv_bytes_per_sequence(hp: HParams, n_ctx: int, batch_size: int, type_k: str = DEFAULT_KV_TYPE,
                          type_v: str = DEFAULT_KV_TYPE) -> int:
    """Bytes of one sequence's KV cache (keys and values of every layer, of the given types)."""
    return sum(kv_bytes_split(hp, n_ctx, batch_size, type_k, type_v))


def buffer_widths(hp: HParams, n_ff: int) -> dict[str, int]:
    """float32 values per token of each work buffer (`Transformer._alloc_buffers`)."""
    return {
        "x": hp.n_embd, "h": hp.n_embd, "o": hp.n_embd,       # residual, normed input, output
        "q": hp.n_head * hp.head_dim, "k": hp.n_head_kv * hp.head_dim,
        "v": hp.n_head_kv * hp.head_dim_v,
        "qkv": (hp.n_head + 2 * hp.n_head_kv) * max(hp.head_dim, hp.head_dim_v),
        "attn": hp.n_head * hp.head_dim_v,
        "gate": n_ff, "up": n_ff, "fused": 2 * n_ff,
    }


# FFN tensors whose output rows give a layer's hidden FFN width (an ungated `ffn_up` is fused:
# gate and up halves, Phi-3).
FFN_WIDTH_TENSORS = ("ffn_gate", "ffn_gate_shexp", "ffn_up_shexp", "ffn_gate_exps", "ffn_up_exps")


def ffn_width(rows: dict[str, int]) -> int:
    """A layer's widest FFN activation from its FFN tensors' output rows (name -> rows)."""
    widths = [rows.get(name, 0) for name in FFN_WIDTH_TENSORS]
    if "ffn_up" in rows:
        widths.append(rows["ffn_up"] if "ffn_gate" in rows else rows["ffn_up"] // 2)
    return max(widths)


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes a model needs at a context, batch and number of sequences (see the module doc)."""

    weights: int  # mapped and read
    output_copy: int
    kv: int
    buffers: int
    tokenizer: int
    runtime: int
    n_ctx: int
    n_seq: int
    batch_size: int
    kv_per_sequence: int
    type_k: str
    type_v: str
    hp: HParams = field(repr=False, compare=False)  # for what-would-fit suggestions

    @property
    def total(self) -> int:
        return self.weights + self.output_copy + self.kv + self.buffers + self.tokenizer + self.runtime

    def as_dict(self) -> dict:
        return {**{f.name: getattr(self, f.name) for f in fields(self) if f.name != "hp"}, "total": self.total}


def plan(hp: HParams, tensor_bytes: int, output_bytes: int, n_ff: int, n_ctx: int, n_seq: int = 1,
         batch_size: int = 512, type_k: str = DEFAULT_KV_TYPE, type_v: str = DEFAULT_KV_TYPE) -> MemoryPlan:
    """The plan for a model whose hyperparameters are `hp`, tensors take `tensor_bytes` in its
    file, output matrix `output_bytes` (0: not copied) and widest FFN `n_ff`."""
    per_seq = kv_bytes_per_sequence(hp, n_ctx, batch_size, type_k, type_v)
    per_token = sum(buffer_widths(hp, n_ff).values())
    buffers = 4 * (batch_size * per_token + max(n_seq, 1) * hp.n_vocab) + GEMM_WORKSPACE_BYTES
    copy = output_bytes if copies_output(output_bytes, True) else 0
    return MemoryPlan(weights=tensor_bytes - copy, output_copy=copy, kv=n_seq * per_seq, buffers=buffers,
                      tokenizer=TOKENIZER_BYTES_PER_TOKEN * hp.n_vocab, runtime=RUNTIME_BYTES, n_ctx=n_ctx, n_seq=n_seq, batch_size=batch_size,
                      kv_per_sequence=per_seq, type_k=type_k, type_v=type_v, hp=hp)


def available_bytes() -> int:
    """Memory the system can give this process without swapping (MemAvailable)."""
    import psutil

    return int(psutil.virtual_memory().available)


def check(p: MemoryPlan, path, available: int | None = None) -> None:
    """Raise InsufficientMemoryError, one line with the figures and what would fit, when the plan
    exceeds the available memory (unless LLMCLI_MEMORY_CHECK=0)."""
    if os.environ.get(MEMORY_CHECK_ENV, "1") == "0":
        return
    available = available_bytes() if available is None else available
    if p.total <= available:
        return
    fixed = p.total - p.kv
    hints = []
    best_ctx = _largest_fitting_ctx(p, available - fixed)
    if best_ctx:
        hints.append(f"--ctx-size {best_ctx}")
    if p.n_seq > 1 and p.kv_per_sequence and available > fixed + p.kv_per_sequence:
        hints.append(f"--parallel {min(p.n_seq - 1, (available - fixed) // p.kv_per_sequence)}")
    for name in SMALLER_KV_TYPES:  # the most precise KV type that fits
        block = KV_TYPES[name].block_size
        if p.hp.head_dim % block or p.hp.head_dim_v % block:
            continue
        small_kv = p.n_seq * kv_bytes_per_sequence(p.hp, p.n_ctx, p.batch_size, name, name)
        if small_kv < p.kv and fixed + small_kv <= available:
            hints.append(f"--cache-type-k {name} --cache-type-v {name}")
            break
    weight_room = available - p.kv - p.buffers - p.tokenizer - p.runtime  # at the asked context
    if 0 < weight_room < p.weights + p.output_copy:
        # the output copy grows with the file: keep its share
        hints.append(f"a quantization whose file is under "
                     f"{_gib(weight_room * p.weights // (p.weights + p.output_copy))}")
    fit = "; would fit: " + " or ".join(hints) if hints else ""
    raise InsufficientMemoryError(
        f"{path}: needs {_gib(p.total)} (weights {_gib(p.weights + p.output_copy)}, KV cache {_gib(p.kv)} "
        f"for {p.n_seq} x {p.n_ctx} positions, buffers {_gib(p.buffers + p.tokenizer + p.runtime)}) but "
        f"{_gib(available)} is available{fit} (set {MEMORY_CHECK_ENV}=0 to load anyway)")


def _largest_fitting_ctx(p: MemoryPlan, kv_room: int) -> int:
    """The largest context (a multiple of 256, below the planned one) whose KV cache fits."""
    best, ctx = 0, MIN_SUGGESTED_CTX
    while ctx < p.n_ctx and p.n_seq * kv_bytes_per_sequence(p.hp, ctx, p.batch_size, p.type_k, p.type_v) <= kv_room:
        best, ctx = ctx, ctx + MIN_SUGGESTED_CTX
    return best


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"
