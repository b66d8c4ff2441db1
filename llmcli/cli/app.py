"""The typer application and the error boundary every command shares."""

from __future__ import annotations

import importlib
import os
import sys

import typer
from rich.console import Console
from rich.markup import escape

from ..errors import LlmcliError

app = typer.Typer(
    name="llmcli",
    help="Run large language models on your own CPU: convert, quantize, run and bench GGUF models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)



@app.callback(invoke_without_command=True)
def _root(
    ctx: typer.Context,
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True),
) -> None:
    """Run large language models on your own CPU. Add --verbose to see tracebacks."""
    if version:
        from .. import __version__

        print(f"llmcli {__version__}")
        raise typer.Exit(0)
    if ctx.invoked_subcommand is None:
        print(ctx.get_help())
        raise typer.Exit(0)


err_console = Console(stderr=True, highlight=False)
out_console = Console(highlight=False)

# Command modules, each adding its command(s) to `app` when imported. Order = help order.
COMMAND_MODULES = [
    "convert_cmd",
    "inspect_cmd",
    "quantize_cmd",
    "imatrix_cmd",
    "run_cmd",
    "bench_cmd",
    "perplexity_cmd",
    "batch_cmd",
    "serve_cmd",
]


# The module defining each command name: a command line that names one imports only its module
# (all of them import ~0.4 s of dependencies `llmcli run` never uses); help and unknown names
# import every module so typer can list or reject them.
COMMAND_OWNERS = {
    "convert": "convert_cmd",
    "inspect": "inspect_cmd",
    "quantize": "quantize_cmd",
    "imatrix": "imatrix_cmd",
    "run": "run_cmd",
    "chat": "run_cmd",
    "bench": "bench_cmd",
    "perplexity": "perplexity_cmd",
    "batch": "batch_cmd",
    "serve": "serve_cmd",
}


def _register_commands(argv: list[str] | None = None) -> None:
    named = next((a for a in argv or [] if not a.startswith("-")), None)
    wants_help = any(a in ("--help", "-h") for a in argv or [])
    owner = COMMAND_OWNERS.get(named) if named is not None and not wants_help else None
    for name in [owner] if owner else COMMAND_MODULES:
        importlib.import_module(f"{__package__}.{name}")


def _report(error: LlmcliError) -> int:
    """One red line on stderr; the exit code for an expected failure. Line breaks a message quotes
    from a file (a tensor name, a template) are shown escaped, so it stays one line."""
    message = str(error).replace("\r", "\\r").replace("\n", "\\n")
    err_console.print("[bold red]error:[/] " + escape(message), soft_wrap=True)
    return 1


def run_app(argv: list[str]) -> None:
    _register_commands(argv)
    verbose = "--verbose" in argv or os.environ.get("LLMCLI_VERBOSE") == "1"
    argv = [a for a in argv if a != "--verbose"]
    try:
        app(args=argv, prog_name="llmcli", standalone_mode=True)
    except LlmcliError as e:
        if verbose:
            raise
        raise SystemExit(_report(e))
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]")
        sys.exit(130)
