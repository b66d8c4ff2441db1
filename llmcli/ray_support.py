"""Ray is an optional extra: one place that imports it and says how to install it when it is missing."""

from __future__ import annotations

from .errors import LlmcliError

INSTALL_HINT = 'Ray is not installed: pip install "llmcli[ray]"'


def import_ray(*submodules: str):
    """The `ray` module (with `submodules`, e.g. "data", "serve", imported), or an LlmcliError
    saying how to install it."""
    import importlib

    try:
        ray = importlib.import_module("ray")
        for name in submodules:
            importlib.import_module(f"ray.{name}")
    except ImportError as e:
        raise LlmcliError(f"{INSTALL_HINT} ({e})") from None
    return ray
