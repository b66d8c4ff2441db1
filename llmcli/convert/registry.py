"""Hugging Face `architectures[0]` -> converter class.

Each architecture module registers its class with `@register("HFName", ...)`; `ARCH_MODULES`
lists the modules to import. Adding an architecture = a module under llmcli/convert/ and its name
appended here.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Callable

from ..errors import UnsupportedError

if TYPE_CHECKING:
    from .base import ArchConverter

ARCH_MODULES = [
    "llama",
    "qwen2",
    "gemma3",
    "phi3",
    "qwen3",
    "qwen2moe",
    "gemma",
    "baichuan",
]

CONVERTERS: dict[str, type["ArchConverter"]] = {}


def register(*hf_names: str) -> Callable[[type["ArchConverter"]], type["ArchConverter"]]:
    def add(cls: type["ArchConverter"]) -> type["ArchConverter"]:
        for name in hf_names:
            CONVERTERS[name] = cls
        return cls

    return add


def load_all() -> dict[str, type["ArchConverter"]]:
    for module in ARCH_MODULES:
        importlib.import_module(f"{__package__}.{module}")
    return CONVERTERS


def converter_for(hf_arch: str, config_path) -> type["ArchConverter"]:
    converters = load_all()
    if hf_arch not in converters:
        raise UnsupportedError(f"{config_path}: architecture '{hf_arch}' is not supported; "
                               f"supported: {', '.join(sorted(converters))}")
    return converters[hf_arch]
