"""Architecture registry: `general.architecture` -> what that family does differently.

The forward pass is one generic decoder (`transformer.py`); which tensors a file holds decides
most of the graph (biases, fused QKV, QK-norm, post-norms, MoE, shared experts). An `ArchSpec`
carries the rest: RoPE style, activation, embedding scale, and a `configure` hook that reads the
family's own metadata (sliding windows, soft-capping, ALiBi). Adding an architecture = one module
that calls `register(ArchSpec(...))` + its name in `ARCH_MODULES`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

from ..errors import UnsupportedError
from .hparams import HParams, Meta


@dataclass(frozen=True)
class ArchSpec:
    name: str
    rope_style: str                     # "norm" (pairs), "neox" (halves) or "none"
    activation: str = "silu"            # gate activation of the FFN: "silu" or "gelu"
    embed_scale: bool = False           # multiply token embeddings by sqrt(n_embd) (Gemma)
    tied_output: bool = True            # no output.weight -> reuse token_embd.weight
    moe_norm_weights: bool = True       # renormalise the top-k routing weights to sum 1
    configure: Callable[[HParams, Meta], None] | None = None


ARCHITECTURES: dict[str, ArchSpec] = {}

# Modules whose import registers their architectures.
ARCH_MODULES = ["llama", "baichuan", "qwen2", "qwen3", "gemma", "phi3"]


def register(spec: ArchSpec) -> ArchSpec:
    ARCHITECTURES[spec.name] = spec
    return spec


def _load_all() -> None:
    for name in ARCH_MODULES:
        importlib.import_module(f"{__package__}.{name}")


def get_spec(arch: str | None, path: object = "") -> ArchSpec:
    _load_all()
    spec = ARCHITECTURES.get(arch or "")
    if spec is None:
        raise UnsupportedError(f"{path}: architecture '{arch}' is not supported "
                               f"(supported: {', '.join(sorted(ARCHITECTURES))})")
    return spec


def supported_architectures() -> list[str]:
    _load_all()
    return sorted(ARCHITECTURES)
