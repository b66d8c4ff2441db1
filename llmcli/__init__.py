"""llmcli: run large language models on your own CPU - convert, quantize, run, bench."""

__version__ = "0.1.0"

from .api import LLM, Completion, load  # noqa: E402  (the public API)

__all__ = ["LLM", "Completion", "load", "__version__"]
