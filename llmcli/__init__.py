"""llmcli: run large language models on your own CPU - convert, quantize, run, bench."""

__version__ = "0.1.0"
