"""The `llmcli` command line: thin typer commands over the library layers.

Each command lives in its own module and registers itself on `app`; this module only wires them and
turns expected failures (`LlmcliError`) into one red line and exit code 1.
"""

from __future__ import annotations

import sys

from .app import app, run_app


def main() -> None:
    run_app(sys.argv[1:])


__all__ = ["app", "main"]
