"""Shared fixtures: where the test data lives, and running the CLI in-process."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


class CliResult:
    def __init__(self, exit_code: int, stdout: str, stderr: str):
        self.exit_code, self.stdout, self.stderr = exit_code, stdout, stderr


@pytest.fixture
def cli():
    """Run `llmcli ARGS...` in-process; returns exit code, stdout and stderr."""
    from llmcli.cli.app import run_app

    def invoke(*args: str, input: str | None = None) -> CliResult:
        runner = CliRunner()
        result = runner.invoke(_Entry(run_app), [str(a) for a in args], input=input)
        if result.exception and not isinstance(result.exception, SystemExit):
            raise result.exception
        return CliResult(result.exit_code, result.stdout, result.stderr)

    return invoke


class _Entry:
    """Adapts `run_app(argv)` to what CliRunner.invoke expects of a click command."""

    def __init__(self, run_app):
        self.run_app = run_app
        self.name = "llmcli"

    def main(self, args=None, prog_name=None, **extra):
        self.run_app(list(args or []))
